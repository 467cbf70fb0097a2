//! Upload sessions that are bearer secrets, sealed before they reach a shared database. A GCS
//! resumable session URI lets whoever holds it upload to that one object for a week; in a
//! database several people and machines reach, it is kept encrypted (XChaCha20-Poly1305) with
//! a key from the environment (`BLOBWAY_STATE_KEY`: 32 bytes as 64 hex digits or base64),
//! bound to its object (the job and object index are its associated data, so a sealed session
//! copied onto another row does not open). Without a key, such a session is refused, never
//! stored in the clear. S3 multipart upload IDs are not secrets (they are useless without the
//! credentials) and are stored as they are.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// The environment variable that holds the key.
pub const KEY_VARIABLE: &str = "BLOBWAY_STATE_KEY";

/// What a sealed session starts with.
const SEALED: &str = "blobway-sealed:v1:";

/// The key sessions are sealed with.
pub struct SessionKey(XChaCha20Poly1305);

impl SessionKey {
    /// The key in `text`: 64 hex digits, or 32 bytes in base64.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| format!("{KEY_VARIABLE} is neither 64 hex digits nor base64"))?
        };
        if bytes.windows(2).all(|w| w[0] == w[1]) {
            return Err(format!(
                "{KEY_VARIABLE} is one byte repeated; use a random key (`openssl rand -hex 32`)"
            ));
        }
        if bytes.len() != 32 {
            return Err(format!(
                "{KEY_VARIABLE} holds {} bytes; it needs 32 (e.g. `openssl rand -hex 32`)",
                bytes.len()
            ));
        }
        XChaCha20Poly1305::new_from_slice(&bytes)
            .map(SessionKey)
            .map_err(|e| e.to_string())
    }

    /// The key in the environment, if one is set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(KEY_VARIABLE) {
            Ok(text) if !text.trim().is_empty() => {
                crate::redact::register_secret(&text);
                Self::parse(&text).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// `session` sealed for the object `owner` names.
    pub fn seal(&self, session: &str, owner: &str) -> Result<String, String> {
        let nonce: [u8; 24] = rand::random();
        let sealed = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: session.as_bytes(),
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| "an upload session could not be sealed".to_string())?;
        let mut bytes = nonce.to_vec();
        bytes.extend(sealed);
        Ok(format!(
            "{SEALED}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    /// The session `sealed` holds for the object `owner` names.
    pub fn open(&self, sealed: &str, owner: &str) -> Result<String, String> {
        let bytes = sealed
            .strip_prefix(SEALED)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .filter(|b| b.len() > 24)
            .ok_or("a sealed session is damaged")?;
        let (nonce, message) = bytes.split_at(24);
        let opened = self
            .0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: message,
                    aad: owner.as_bytes(),
                },
            )
            .map_err(|_| {
                format!(
                    "a sealed upload session does not open with this {KEY_VARIABLE}: every \
                     worker needs the key the sessions were sealed with"
                )
            })?;
        String::from_utf8(opened).map_err(|e| e.to_string())
    }
}

/// Why a destination whose upload sessions are bearer secrets (`bearer_sessions`) cannot
/// work with `db` (a shared database without a key), if it cannot: said when a job is
/// planned or loaded, before any session is opened.
pub fn refusal(db: &super::StateDb, bearer_sessions: bool) -> Option<String> {
    (bearer_sessions && db.refuses_bearer_sessions()).then(|| {
        format!(
            "this destination's upload sessions are bearer secrets, which the shared state \
             database holds only encrypted: set {KEY_VARIABLE} on every worker (32 bytes, e.g. \
             `openssl rand -hex 32`), or keep this migration's state in a file"
        )
    })
}

/// True for a session that is a bearer secret (a URL, as GCS gives), which a shared database
/// holds only sealed.
pub fn is_bearer(session: &str) -> bool {
    session.contains("://")
}

/// True for a session as [`SessionKey::seal`] writes it.
pub fn is_sealed(session: &str) -> bool {
    session.starts_with(SEALED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn a_session_opens_only_with_its_key_and_for_its_object() {
        let key = SessionKey::parse(HEX).expect("key");
        let session = "https://storage.googleapis.com/upload?upload_id=SECRET-ID";
        let sealed = key.seal(session, "1/7").expect("seal");
        assert!(
            is_sealed(&sealed) && !sealed.contains("SECRET-ID"),
            "{sealed}"
        );
        assert_ne!(
            key.seal(session, "1/7").expect("seal"),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(key.open(&sealed, "1/7").expect("open"), session);
        assert!(key.open(&sealed, "1/8").is_err(), "bound to its object");
        let other = SessionKey::parse(&"ab01".repeat(16)).expect("key");
        let err = other.open(&sealed, "1/7").expect_err("another key");
        assert!(err.contains("BLOBWAY_STATE_KEY"), "{err}");
        assert!(key.open("blobway-sealed:v1:AAAA", "1/7").is_err());
    }

    #[test]
    fn keys_are_hex_or_base64_of_32_bytes() {
        assert!(SessionKey::parse(HEX).is_ok());
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(std::array::from_fn::<u8, 32, _>(|i| i as u8));
        assert!(SessionKey::parse(&b64).is_ok());
        let weak = SessionKey::parse(&"00".repeat(32)).err().expect("weak");
        assert!(weak.contains("repeated"), "{weak}");
        let short = SessionKey::parse("abcd").err().expect("short");
        assert!(short.contains("32"), "{short}");
        assert!(is_bearer("https://x/y") && !is_bearer("2~abcDEF_upload-id"));
    }
}
