//! Keeps secrets out of everything blobway writes: the state database, logs, the screen, JSON
//! output and error texts. Every store error message passes through [`redact`] when it is made.
//!
//! Two nets: query parameters and `key=value` pairs whose *name* marks a secret (`sig=`,
//! `AccountKey=`, `X-Amz-Signature=`, `x-amz-security-token=`, …), and any secret value
//! registered at run time with [`register_secret`] (the account key, SAS token and AWS secret
//! read from the environment), wherever it appears.

use std::sync::{OnceLock, RwLock};

const SECRET_NAMES: &[&str] = &[
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-security-token",
    "x-amz-credential",
    "accountkey",
    "sharedaccesssignature",
    "aws_secret_access_key",
    "aws_session_token",
    "azure_storage_key",
    "azure_storage_sas_token",
    "client_secret",
    "password",
    "token",
    "upload_id",
];

const MASK: &str = "REDACTED";

fn registry() -> &'static RwLock<Vec<String>> {
    static SECRETS: OnceLock<RwLock<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| RwLock::new(Vec::new()))
}

/// Remembers a secret value so that [`redact`] masks it wherever it appears. Values shorter
/// than 6 characters are ignored (they would mask ordinary words).
pub fn register_secret(value: &str) {
    let value = value.trim();
    if value.len() < 6 {
        return;
    }
    // Callers may register the same secret on every request (a refreshed token): a shared
    // read answers that without taking the write lock.
    if registry()
        .read()
        .is_ok_and(|secrets| secrets.iter().any(|s| s == value))
    {
        return;
    }
    if let Ok(mut secrets) = registry().write()
        && !secrets.iter().any(|s| s == value)
    {
        secrets.push(value.to_string());
        // A SAS token is also seen percent-encoded in URLs.
        let encoded =
            percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        if encoded != value {
            secrets.push(encoded);
        }
    }
}

/// Returns `text` with every secret masked.
pub fn redact(text: &str) -> String {
    let mut out = mask_named_values(text);
    if let Ok(secrets) = registry().read() {
        for secret in secrets.iter() {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), MASK);
            }
        }
    }
    out
}

/// Masks the value after `name=` for every secret-marking name, up to the next separator.
fn mask_named_values(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let mut matched = None;
        if i == 0 || is_separator(bytes[i - 1]) {
            for name in SECRET_NAMES {
                let end = i + name.len();
                if lower[i..].starts_with(name) && bytes.get(end).is_some_and(|b| *b == b'=') {
                    matched = Some(end + 1);
                    break;
                }
            }
        }
        match matched {
            Some(value_start) => {
                out.push_str(&text[i..value_start]);
                let value_end = text[value_start..]
                    .find(['&', ';', ' ', '"', '\'', '\n', ',', '>'])
                    .map_or(text.len(), |n| value_start + n);
                if value_end > value_start {
                    out.push_str(MASK);
                }
                i = value_end;
            }
            None => {
                let c = text[i..].chars().next().unwrap_or(' ');
                out.push(c);
                i += c.len_utf8();
            }
        }
    }
    out
}

fn is_separator(b: u8) -> bool {
    matches!(
        b,
        b'?' | b'&' | b';' | b' ' | b'"' | b'\'' | b'\n' | b',' | b'(' | b'<'
    )
}

/// A log writer that masks secrets in everything written through it — including what other
/// crates log at debug level (request URLs, canonical requests) — before it reaches the file.
#[derive(Clone)]
pub struct RedactingWriter<M>(pub M);

/// One write in progress through a [`RedactingWriter`].
pub struct Redacting<W>(W);

impl<W: std::io::Write> std::io::Write for Redacting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: tracing_subscriber::fmt::MakeWriter<'a>> tracing_subscriber::fmt::MakeWriter<'a>
    for RedactingWriter<M>
{
    type Writer = Redacting<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        Redacting(self.0.make_writer())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_writer_masks_what_passes_through() {
        use std::io::Write;
        let mut out = Vec::new();
        Redacting(&mut out)
            .write_all(b"GET http://h/c/b?sv=1&sig=c2VjcmV0 failed\n")
            .expect("write");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "GET http://h/c/b?sv=1&sig=REDACTED failed\n"
        );
    }

    #[test]
    fn masks_sas_signatures_in_urls() {
        let url = "http://127.0.0.1:10000/acct/c/b?sv=2022-11-02&ss=b&sig=abc%2Bdef%3D&se=2030";
        let shown = redact(url);
        assert!(!shown.contains("abc%2Bdef"), "{shown}");
        assert!(shown.contains("sv=2022-11-02"));
        assert!(shown.contains("sig=REDACTED&se=2030"));
    }

    #[test]
    fn masks_connection_string_keys_and_registered_values() {
        let cs = "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=Zm9vYmFy==;BlobEndpoint=x";
        assert_eq!(
            redact(cs),
            "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=REDACTED;BlobEndpoint=x"
        );
        register_secret("s3cr3t-value-42");
        assert_eq!(
            redact("failed with s3cr3t-value-42 inside"),
            "failed with REDACTED inside"
        );
    }

    #[test]
    fn masks_gcs_resumable_session_ids() {
        let url = "https://storage.googleapis.com/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=ADPycdt-secret";
        let shown = redact(url);
        assert!(!shown.contains("ADPycdt-secret"), "{shown}");
        assert!(shown.contains("upload_id=REDACTED"), "{shown}");
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let text = "design=ok; the signature of the block matched, tokens=3 (no equals)";
        assert_eq!(redact(text), text);
    }
}
