//! Account SAS tokens signed locally from an account key (HMAC-SHA256), because the official
//! Azure crate authenticates only with Entra ID or a SAS in the URL. A token lives one hour and
//! is renewed a quarter of an hour before it expires, so a transfer running for days never
//! meets an expired signature. Tokens are kept in memory only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The SAS service version blobway signs with.
const SAS_VERSION: &str = "2022-11-02";

/// Where the SAS query string of a request comes from.
#[derive(Clone)]
pub enum SasSource {
    /// A token the operator gave; used as is.
    Static(String),
    /// Tokens signed from the account key and renewed before they expire.
    Signed(Arc<AccountSas>),
}

impl std::fmt::Debug for SasSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SasSource::Static(_) => write!(f, "SasSource::Static(REDACTED)"),
            SasSource::Signed(_) => write!(f, "SasSource::Signed(REDACTED)"),
        }
    }
}

impl SasSource {
    /// The query string to append to a request (no leading `?`).
    pub fn token(&self) -> String {
        match self {
            SasSource::Static(token) => token.clone(),
            SasSource::Signed(signer) => signer.token(),
        }
    }
}

/// Signs account SAS tokens for the blob service.
pub struct AccountSas {
    account: String,
    key: Vec<u8>,
    https_only: bool,
    lifetime: Duration,
    renew_before: Duration,
    current: Mutex<Option<(String, SystemTime)>>,
}

impl AccountSas {
    /// A signer for `account` with its base64 `key`; one-hour tokens renewed 15 minutes early.
    pub fn new(account: String, key: &str, https_only: bool) -> anyhow::Result<Self> {
        Self::with_lifetime(
            account,
            key,
            https_only,
            Duration::from_secs(3600),
            Duration::from_secs(900),
        )
    }

    /// A signer with a chosen token lifetime and renewal margin.
    pub fn with_lifetime(
        account: String,
        key: &str,
        https_only: bool,
        lifetime: Duration,
        renew_before: Duration,
    ) -> anyhow::Result<Self> {
        let key = STANDARD.decode(key.trim()).map_err(|_| {
            anyhow::anyhow!(
                "the Azure account key is not valid base64; copy it again from the portal \
                 (Access keys) or `az storage account keys list`"
            )
        })?;
        Ok(Self {
            account,
            key,
            https_only,
            lifetime,
            renew_before,
            current: Mutex::new(None),
        })
    }

    /// A token valid for at least the renewal margin from now.
    pub fn token(&self) -> String {
        let now = SystemTime::now();
        let mut current = match self.current.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((token, expires)) = current.as_ref()
            && expires
                .duration_since(now)
                .is_ok_and(|left| left > self.renew_before)
        {
            return token.clone();
        }
        let expires = now + self.lifetime;
        let token = self.sign(now - Duration::from_secs(300), expires);
        *current = Some((token.clone(), expires));
        token
    }

    /// Signs a token valid from `start` to `expiry`.
    fn sign(&self, start: SystemTime, expiry: SystemTime) -> String {
        let (start, expiry) = (iso8601(start), iso8601(expiry));
        let (permissions, services, resource_types) = ("rwdlact", "b", "sco");
        let protocol = if self.https_only {
            "https"
        } else {
            "https,http"
        };
        let string_to_sign = format!(
            "{}\n{permissions}\n{services}\n{resource_types}\n{start}\n{expiry}\n\n{protocol}\n{SAS_VERSION}\n\n",
            self.account
        );
        let signature = self.hmac(&string_to_sign);
        let encoded =
            percent_encoding::utf8_percent_encode(&signature, percent_encoding::NON_ALPHANUMERIC);
        format!(
            "sv={SAS_VERSION}&ss={services}&srt={resource_types}&sp={permissions}&st={start}&se={expiry}&spr={protocol}&sig={encoded}"
        )
    }

    /// A service SAS that reads one blob, and nothing else, for `lifetime` from now: what a
    /// server-side copy hands another service (never the account SAS, which writes).
    pub fn blob_read(&self, container: &str, blob: &str, lifetime: Duration) -> String {
        let now = SystemTime::now();
        self.sign_blob_read(
            container,
            blob,
            now - Duration::from_secs(300),
            now + lifetime,
        )
    }

    fn sign_blob_read(
        &self,
        container: &str,
        blob: &str,
        start: SystemTime,
        expiry: SystemTime,
    ) -> String {
        let (start, expiry) = (iso8601(start), iso8601(expiry));
        let protocol = if self.https_only {
            "https"
        } else {
            "https,http"
        };
        // Permissions, start, expiry, resource, identifier, IP, protocol, version, resource
        // type, snapshot time, encryption scope, then five response headers (all empty).
        let resource = format!("/blob/{}/{container}/{blob}", self.account);
        let string_to_sign = format!(
            "r\n{start}\n{expiry}\n{resource}\n\n\n{protocol}\n{SAS_VERSION}\nb\n\n\n\n\n\n\n"
        );
        let signature = self.hmac(&string_to_sign);
        let encoded =
            percent_encoding::utf8_percent_encode(&signature, percent_encoding::NON_ALPHANUMERIC);
        format!("sv={SAS_VERSION}&sr=b&sp=r&st={start}&se={expiry}&spr={protocol}&sig={encoded}")
    }

    fn hmac(&self, text: &str) -> String {
        #[allow(clippy::expect_used)]
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts keys of any length");
        mac.update(text.as_bytes());
        STANDARD.encode(mac.finalize().into_bytes())
    }
}

fn iso8601(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t =
        time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    #[test]
    fn signs_the_documented_string_to_sign() {
        let sas = AccountSas::new("acct".into(), KEY, true).expect("key");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = sas.sign(start, start + Duration::from_secs(3600));
        assert!(token.starts_with(
            "sv=2022-11-02&ss=b&srt=sco&sp=rwdlact&st=2023-11-14T22:13:20Z&se=2023-11-14T23:13:20Z&spr=https&sig="
        ));
        let expected = sas.hmac(
            "acct\nrwdlact\nb\nsco\n2023-11-14T22:13:20Z\n2023-11-14T23:13:20Z\n\nhttps\n2022-11-02\n\n",
        );
        let sig = token.rsplit("sig=").next().expect("sig");
        let decoded = percent_encoding::percent_decode_str(sig)
            .decode_utf8()
            .expect("utf8");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn signs_a_read_only_blob_sas_by_the_documented_string_to_sign() {
        let sas = AccountSas::new("acct".into(), KEY, true).expect("key");
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = sas.sign_blob_read("box", "a/b c.bin", start, start + Duration::from_secs(900));
        assert!(token.starts_with(
            "sv=2022-11-02&sr=b&sp=r&st=2023-11-14T22:13:20Z&se=2023-11-14T22:28:20Z&spr=https&sig="
        ));
        let expected = sas.hmac(
            "r\n2023-11-14T22:13:20Z\n2023-11-14T22:28:20Z\n/blob/acct/box/a/b c.bin\n\n\nhttps\n2022-11-02\nb\n\n\n\n\n\n\n",
        );
        let sig = token.rsplit("sig=").next().expect("sig");
        let decoded = percent_encoding::percent_decode_str(sig)
            .decode_utf8()
            .expect("utf8");
        assert_eq!(decoded, expected);
    }

    #[test]
    fn renews_the_token_before_it_expires() {
        let sas = AccountSas::with_lifetime(
            "acct".into(),
            KEY,
            false,
            Duration::from_secs(3),
            Duration::from_millis(1500),
        )
        .expect("key");
        let first = sas.token();
        assert_eq!(sas.token(), first, "a fresh token is reused");
        std::thread::sleep(Duration::from_millis(1700));
        assert_ne!(sas.token(), first, "a token inside the margin is renewed");
    }

    #[test]
    fn rejects_a_key_that_is_not_base64() {
        let err = AccountSas::new("a".into(), "not base64!", true)
            .err()
            .expect("bad key");
        assert!(err.to_string().contains("not valid base64"));
    }
}
