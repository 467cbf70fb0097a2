//! How each record is laid out in the state file. Object and chunk records are millions in a
//! big migration, so they are stored compactly: a tag byte, then `postcard` (a binary serde
//! format with variable-length integers and no field names), and an object's destination key
//! as only what differs from its source key (the two usually share the name under their
//! prefixes). The few other records (jobs, counters, listings) stay JSON. Reading takes
//! either form, so records written as JSON before the compact form still read.
//!
//! postcard writes fields by position and enum variants by number: a field is added at the
//! end of a record (with a new tag), and an enum's variants are never reordered.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::JobProgress;
use super::index::Listing;
use super::records::{ChunkRecord, FileRecord, JobRecord};

/// The first byte of a compact record; JSON records start with `{`.
const COMPACT: u8 = 0xB1;

/// A record the state file holds: JSON unless the type says otherwise.
pub(super) trait Stored: Serialize + DeserializeOwned {
    /// The bytes stored for this record.
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The record these bytes hold, or why they do not decode.
    fn decode(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Stored for JobRecord {}
impl Stored for JobProgress {}
impl Stored for Listing {}

impl Stored for ChunkRecord {
    fn encode(&self) -> Vec<u8> {
        compact(&(
            self.state,
            self.attempts,
            Crc::of(self.crc64, self.crc_reported),
            &self.history,
        ))
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.first() != Some(&COMPACT) {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let (state, attempts, crc, history): (_, _, Crc, _) = either(bytes)?;
        Ok(ChunkRecord {
            state,
            attempts,
            crc_reported: matches!(crc, Crc::Reported(_)),
            crc64: crc.value(),
            history,
        })
    }
}

/// A chunk's CRC-64 as stored: a variable-length integer when that is shorter, else its
/// eight bytes (a CRC is as likely as not to need ten as a varint). The first two variants
/// are laid out as `Option<u64>` is, so records stored before the third still read. A CRC
/// the destination reported (bytes the stores copied) is kept apart from blobway's own.
#[derive(Serialize, serde::Deserialize)]
enum Crc {
    None,
    Varint(u64),
    Fixed([u8; 8]),
    Reported([u8; 8]),
}

impl Crc {
    fn of(crc: Option<u64>, reported: bool) -> Self {
        match crc {
            None => Crc::None,
            Some(crc) if reported => Crc::Reported(crc.to_le_bytes()),
            Some(crc) if crc < 1 << 56 => Crc::Varint(crc),
            Some(crc) => Crc::Fixed(crc.to_le_bytes()),
        }
    }

    fn value(self) -> Option<u64> {
        match self {
            Crc::None => None,
            Crc::Varint(crc) => Some(crc),
            Crc::Fixed(bytes) | Crc::Reported(bytes) => Some(u64::from_le_bytes(bytes)),
        }
    }
}

impl Stored for FileRecord {
    fn encode(&self) -> Vec<u8> {
        let (shared, head) = against(&self.key, &self.dest_key);
        let record = FileRecord {
            dest_key: String::new(),
            etag: String::new(),
            ..self.clone()
        };
        let mut bytes = compact(&(head, shared, Version::of(&self.etag), record));
        let tags = self
            .meta
            .as_ref()
            .map(|m| &m.tags)
            .filter(|t| !t.is_empty());
        let later: Vec<Later> = self
            .verified
            .map(Later::Verified)
            .into_iter()
            .chain(tags.map(|t| Later::Tags(t.clone())))
            .chain(self.version_id.clone().map(Later::VersionId))
            .collect();
        if !later.is_empty() {
            bytes = postcard::to_extend(&later, bytes).unwrap_or_default();
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        if bytes.first() != Some(&COMPACT) {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let ((head, shared, version, mut record), rest): (
            (String, u32, Version, FileRecord),
            &[u8],
        ) = postcard::take_from_bytes(&bytes[1..]).map_err(|e| e.to_string())?;
        record.dest_key = joined(&record.key, shared, &head)
            .ok_or_else(|| "an object record's destination key does not fit its key".to_string())?;
        record.etag = version.text();
        if !rest.is_empty() {
            let later: Vec<Later> = match postcard::take_from_bytes(rest) {
                Ok((later, [])) => later,
                Ok((_, left)) => return Err(format!("{} bytes after the record", left.len())),
                Err(e) => return Err(e.to_string()),
            };
            for field in later {
                match field {
                    Later::Verified(verified) => record.verified = Some(verified),
                    Later::Tags(tags) => record.meta.get_or_insert_default().tags = tags,
                    Later::VersionId(version) => record.version_id = Some(version),
                }
            }
        }
        Ok(record)
    }
}

/// Fields of an object record added after its layout was fixed, stored after it as a list
/// (written only when one is set, so older records keep their bytes). Variants are only ever
/// added at the end.
#[derive(Serialize, serde::Deserialize)]
enum Later {
    /// [`FileRecord::verified`].
    Verified(crate::state::Verification),
    /// The tags of [`FileRecord::meta`], read when the upload began (`--copy-tags`).
    Tags(crate::store::tags::Tags),
    /// [`FileRecord::version_id`].
    VersionId(String),
}

/// A source version (ETag) as stored: S3's usual form, an MD5 in quoted hex, as its 16 bytes.
/// Variants are only ever added at the end (an older one still reads).
#[derive(Serialize, serde::Deserialize)]
enum Version {
    /// Any other form, as it is.
    Text(String),
    /// `"` + lower-case hex + `"`, as the bytes the hex spells (of another length than 16).
    QuotedHex(Vec<u8>),
    /// `"` + 32 lower-case hex digits + `"` (an MD5), as its 16 bytes, without a length.
    QuotedMd5([u8; 16]),
}

impl Version {
    fn of(etag: &str) -> Self {
        let hex = etag.strip_prefix('"').and_then(|e| e.strip_suffix('"'));
        let bytes = hex
            .filter(|h| !h.is_empty() && h.len() % 2 == 0)
            .and_then(|h| {
                h.as_bytes()
                    .chunks(2)
                    .map(|pair| {
                        let digit = |c: u8| match c {
                            b'0'..=b'9' => Some(c - b'0'),
                            b'a'..=b'f' => Some(c - b'a' + 10),
                            _ => None,
                        };
                        Some(digit(pair[0])? << 4 | digit(pair[1])?)
                    })
                    .collect::<Option<Vec<u8>>>()
            });
        match bytes {
            Some(bytes) => match <[u8; 16]>::try_from(bytes.as_slice()) {
                Ok(md5) => Version::QuotedMd5(md5),
                Err(_) => Version::QuotedHex(bytes),
            },
            None => Version::Text(etag.to_string()),
        }
    }

    fn text(self) -> String {
        let quoted = |bytes: &[u8]| {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            let mut text = String::with_capacity(bytes.len() * 2 + 2);
            text.push('"');
            for b in bytes {
                text.push(char::from(DIGITS[usize::from(b >> 4)]));
                text.push(char::from(DIGITS[usize::from(b & 0xf)]));
            }
            text.push('"');
            text
        };
        match self {
            Version::Text(text) => text,
            Version::QuotedHex(bytes) => quoted(&bytes),
            Version::QuotedMd5(bytes) => quoted(&bytes),
        }
    }
}

/// Tag and postcard.
fn compact<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_extend(value, vec![COMPACT]).unwrap_or_default()
}

/// Decodes a compact record, or a JSON one written before the compact form.
fn either<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&COMPACT, rest)) => match postcard::take_from_bytes(rest) {
            Ok((value, [])) => Ok(value),
            Ok((_, left)) => Err(format!("{} bytes after the record", left.len())),
            Err(e) => Err(e.to_string()),
        },
        _ => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
    }
}

/// `text` written against `reference`: how many bytes they share at their ends, and what of
/// `text` comes before those.
pub(super) fn against<'a>(reference: &str, text: &'a str) -> (u32, &'a str) {
    // A key is at most a few KiB; a longer shared end is stored as none shared.
    let shared = u32::try_from(shared_suffix(reference, text)).unwrap_or(0);
    (shared, &text[..text.len() - shared as usize])
}

/// The text [`against`] wrote, from its reference; `None` when it does not fit.
pub(super) fn joined(reference: &str, shared: u32, head: &str) -> Option<String> {
    let start = reference.len().checked_sub(shared as usize)?;
    Some(format!("{head}{}", reference.get(start..)?))
}

/// How many bytes `a` and `b` share at their ends, cut at a character boundary of both.
fn shared_suffix(a: &str, b: &str) -> usize {
    let mut shared = 0;
    for (x, y) in a.chars().rev().zip(b.chars().rev()) {
        if x != y {
            break;
        }
        shared += x.len_utf8();
    }
    shared
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::records::{AttemptRecord, ChunkState, ErrorRecord, FileState};
    use crate::store::{ErrorClass, ObjectMeta};
    use proptest::prelude::*;

    fn file(key: &str, dest_key: &str) -> FileRecord {
        let etag = "\"0123456789abcdef0123456789abcdef\"";
        FileRecord::new(key, dest_key, 5, etag, 16 << 20, 1)
    }

    #[test]
    fn a_small_object_and_its_chunk_take_a_fraction_of_their_json() {
        let record = file(
            "logs/2026/11/30/gateway-000000123456.json.gz",
            "archive/logs/2026/11/30/gateway-000000123456.json.gz",
        );
        let json = serde_json::to_vec(&record).expect("json");
        let bytes = record.encode();
        assert_eq!(FileRecord::decode(&bytes).expect("decode"), record);
        // The key once, the destination's prefix, and a few bytes of numbers.
        assert!(bytes.len() < 110, "{} bytes", bytes.len());
        assert!(
            bytes.len() * 2 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
        let chunk = ChunkRecord {
            state: ChunkState::Completed,
            attempts: 1,
            crc64: Some(u64::MAX),
            crc_reported: false,
            history: vec![AttemptRecord {
                started_ms: 1_764_600_000_000,
                latency_ms: 12,
                bytes: 5,
                error: None,
            }],
        };
        let bytes = chunk.encode();
        assert_eq!(ChunkRecord::decode(&bytes).expect("decode"), chunk);
        assert!(bytes.len() < 32, "{} bytes", bytes.len());
    }

    /// The stored layout, byte for byte: a change to a record's fields (or to a type inside
    /// one, such as `ObjectMeta` or `ErrorClass`) that moves it fails here, so it comes with
    /// a new tag and an upgrade instead of unreadable state files.
    #[test]
    fn the_stored_layout_does_not_move() {
        let mut record = file("k/a", "d/k/a");
        record.state = FileState::Failed;
        record.error = Some(ErrorRecord {
            class: ErrorClass::SourceChanged,
            status: Some(412),
            message: "m".into(),
            at_ms: 1,
        });
        record.meta = Some(ObjectMeta {
            content_type: Some("t".into()),
            pairs: [("p".to_string(), "v".to_string())].into(),
            ..ObjectMeta::default()
        });
        record.begun_ms = Some(2);
        let hex: String = record.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "b102642f03020123456789abcdef0123456789abcdef036b2f61000500808080080104000102\
             019c03016d02000001010174000001017001760104"
        );
        // As stored before MD5s lost their length byte: still read.
        let before = "b102642f0301100123456789abcdef0123456789abcdef036b2f61000500808080080104\
                      000102019c03016d02000001010174000001017001760104";
        assert_eq!(FileRecord::decode(&unhex(before)).expect("older"), record);
        // How it was verified follows the record, as a list of later fields.
        record.state = FileState::Done;
        record.error = None;
        record.verified = Some(crate::state::Verification::BlobwayCrc);
        let bytes = record.encode();
        let plain = FileRecord {
            verified: None,
            ..record.clone()
        }
        .encode();
        assert_eq!(bytes[..plain.len()], plain[..]);
        assert_eq!(bytes[plain.len()..], [1, 0, 1]);
        assert_eq!(FileRecord::decode(&bytes).expect("later"), record);
        let chunk = ChunkRecord {
            state: ChunkState::Completed,
            attempts: 2,
            crc64: Some(3),
            crc_reported: false,
            history: vec![AttemptRecord {
                started_ms: 4,
                latency_ms: 5,
                bytes: 6,
                error: None,
            }],
        };
        let hex: String = chunk.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "b1020201030108050600");
        // A CRC the destination reported: its eight bytes, apart from blobway's own.
        let reported = ChunkRecord {
            crc_reported: true,
            ..chunk.clone()
        };
        let hex: String = reported
            .encode()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, "b102020303000000000000000108050600");
        assert_eq!(
            ChunkRecord::decode(&unhex(&hex)).expect("reported"),
            reported
        );
        // A CRC whose varint would be longer than its eight bytes.
        let big = ChunkRecord {
            crc64: Some(0x8877_6655_4433_2211),
            ..chunk
        };
        let hex: String = big.encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "b102020211223344556677880108050600");
        // As stored before the fixed form: a varint of ten bytes, still read.
        let before = "b1020201 91c4cca1d4cad9bb8801 0108050600";
        assert_eq!(ChunkRecord::decode(&unhex(before)).expect("older"), big);
    }

    fn unhex(hex: &str) -> Vec<u8> {
        let hex: String = hex.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn records_written_as_json_before_the_compact_form_still_read() {
        let record = file("a/b", "c/b");
        let json = serde_json::to_vec(&record).expect("json");
        assert_eq!(FileRecord::decode(&json).expect("decode"), record);
        let chunk = ChunkRecord::pending();
        let json = serde_json::to_vec(&chunk).expect("json");
        assert_eq!(ChunkRecord::decode(&json).expect("decode"), chunk);
        assert!(FileRecord::decode(&[COMPACT, 0xff, 0xff]).is_err());
        let mut longer = ChunkRecord::pending().encode();
        longer.push(0);
        assert!(ChunkRecord::decode(&longer).is_err(), "bytes left over");
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z/._-]{0,12}",
            "\\PC{0,8}",
            Just(String::new()),
            Just("ü/é/😀".to_string()),
        ]
    }

    proptest! {
        /// Every field of every record survives the compact form, whatever the keys share.
        #[test]
        fn every_record_round_trips(
            key in text(),
            head in text(),
            cut in 0usize..6,
            size in any::<u64>(),
            note in proptest::option::of(text()),
            session in proptest::option::of(text()),
            begun in proptest::option::of(any::<i64>()),
            pairs in proptest::collection::btree_map(text(), text(), 0..3),
            content_type in proptest::option::of(text()),
            status in proptest::option::of(any::<u16>()),
            crc in proptest::option::of(any::<u64>()),
            attempts in 0usize..3,
            verified in proptest::option::of(proptest::sample::select(
                crate::state::Verification::ALL.to_vec()
            )),
            etag in prop_oneof![
                "\"[0-9a-f]{0,40}\"",
                "\"[0-9a-fA-F-]{0,12}\"",
                "0x[0-9A-F]{15}",
                "\\PC{0,6}",
            ],
        ) {
            let tail: String = key.chars().skip(cut).collect();
            let mut record = file(&key, &(head + &tail));
            record.size = size;
            record.etag = etag;
            record.note = note;
            record.session = session.clone();
            record.verified = verified;
            record.version_id = session.map(|s| s + "-version");
            record.begun_ms = begun;
            record.state = FileState::Failed;
            record.error = Some(ErrorRecord {
                class: ErrorClass::Throttled,
                status,
                message: "slow down".into(),
                at_ms: -1,
            });
            record.meta = Some(ObjectMeta {
                content_type,
                tags: pairs.iter().rev().take(2).map(|(k, v)| (v.clone(), k.clone())).collect(),
                pairs,
                ..ObjectMeta::default()
            });
            prop_assert_eq!(FileRecord::decode(&record.encode()).expect("file"), record);
            let chunk = ChunkRecord {
                state: ChunkState::Failed,
                attempts: attempts as u32,
                crc64: crc,
                crc_reported: crc.is_some() && attempts % 2 == 0,
                history: (0..attempts)
                    .map(|i| AttemptRecord {
                        started_ms: i as i64,
                        latency_ms: size,
                        bytes: size,
                        error: None,
                    })
                    .collect(),
            };
            prop_assert_eq!(ChunkRecord::decode(&chunk.encode()).expect("chunk"), chunk);
        }
    }
}
