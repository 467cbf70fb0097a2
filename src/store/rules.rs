//! What each destination can hold, as pure functions the planner applies before any byte
//! moves: the exact name a key becomes ([`Naming`]), which names would collide there, and which
//! metadata pairs the store accepts ([`MetaRules`], [`map_metadata`]).
//!
//! Every rule here is measured, not guessed: Azure (and Azurite) answer `400 InvalidMetadata`
//! to a metadata name that is not a C# identifier; URL layers resolve `.` and `..` path
//! segments, so `k/x/./a.txt` *is* the blob `k/x/a.txt`; `Path::components` drops `.`, `//`
//! and a trailing `/`, and a file cannot also be a folder.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a destination names what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// Azure Blob Storage: at most 1,024 characters; `.`/`..` segments are resolved by the URL
    /// layers; no control characters.
    Azure,
    /// Amazon S3 (and S3-compatible stores): at most 1,024 bytes; empty and `.` segments
    /// dropped, `..` resolved (file-backed S3 servers do it, or refuse such keys).
    S3,
    /// Google Cloud Storage: at most 1,024 bytes; no carriage return or line feed; not `.`
    /// or `..`; nothing under `.well-known/acme-challenge/`.
    Gcs,
    /// A local folder: each `/`-separated segment is a file or folder name (≤ 255 bytes, no
    /// NUL); empty and `.` segments vanish, `..` is refused; a file cannot also be a folder;
    /// names compare case-insensitively on a case-insensitive filesystem.
    Local {
        /// The filesystem compares names case-insensitively.
        case_insensitive: bool,
    },
}

/// What a source key becomes at a destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestName {
    /// The exact name the destination will hold.
    Object(String),
    /// A zero-byte `dir/` marker: on a destination without such objects, a folder that
    /// needs no object (nothing is written).
    FolderMarker,
    /// The destination cannot hold this name; why.
    Refused(String),
}

impl Naming {
    /// The exact name `key` (already mapped to the destination's prefix) will have at the
    /// destination, for an object of `size` bytes.
    pub fn destination_name(self, key: &str, size: u64) -> DestName {
        if key.is_empty() {
            return DestName::Refused("an empty name".into());
        }
        match self {
            Naming::Azure => {
                if key.chars().any(char::is_control) {
                    return DestName::Refused("a control character in the name".into());
                }
                if key.ends_with('/') && size == 0 {
                    return DestName::FolderMarker;
                }
                let Some(resolved) = resolve_dot_segments(key) else {
                    return DestName::Refused(
                        "a `..` segment that climbs above the container".into(),
                    );
                };
                if resolved.is_empty() || resolved.ends_with('/') {
                    return DestName::Refused(format!(
                        "a name Azure would hold as `{resolved}` (ending in `/`)"
                    ));
                }
                if resolved.chars().count() > 1024 {
                    return DestName::Refused("a name over 1,024 characters".into());
                }
                DestName::Object(resolved)
            }
            Naming::S3 => {
                // Amazon S3 holds any key, but S3-compatible servers backed by files (s3s-fs,
                // MinIO) resolve `.`, `..` and empty segments, or refuse them: one rule,
                // shown by the plan, instead of a name that depends on the server.
                let marker = key.ends_with('/');
                let Some(mut name) = resolve_segments(key) else {
                    return DestName::Refused("a `..` segment that climbs above the bucket".into());
                };
                if name.is_empty() {
                    return DestName::Refused("a key with no name in it".into());
                }
                if marker {
                    name.push('/');
                }
                if name.len() > 1024 {
                    return DestName::Refused("a key over 1,024 bytes".into());
                }
                DestName::Object(name)
            }
            Naming::Gcs => {
                if key.len() > 1024 {
                    return DestName::Refused("a name over 1,024 bytes".into());
                }
                if key.contains(['\r', '\n']) {
                    return DestName::Refused("a carriage return or line feed in the name".into());
                }
                if key == "." || key == ".." {
                    return DestName::Refused("the name `.` or `..`".into());
                }
                if key.starts_with(".well-known/acme-challenge/") {
                    return DestName::Refused("a name under `.well-known/acme-challenge/`".into());
                }
                DestName::Object(key.to_string())
            }
            Naming::Local { .. } => {
                if key.contains('\0') {
                    return DestName::Refused("a NUL character in the name".into());
                }
                if key.ends_with('/') && size == 0 {
                    return DestName::FolderMarker;
                }
                if key.ends_with('/') {
                    return DestName::Refused(format!(
                        "a name ending in `/` that holds {size} bytes (a file cannot be named as a folder)"
                    ));
                }
                // A `..` would leave the folder (or fold one key onto another): refused.
                if key.split('/').any(|s| s == "..") {
                    return DestName::Refused("a `..` segment".into());
                }
                if key.split('/').any(|s| s.len() > 255) {
                    return DestName::Refused(
                        "a path segment over 255 bytes (the filesystem's limit)".into(),
                    );
                }
                match resolve_segments(key) {
                    Some(name) if !name.is_empty() => DestName::Object(name),
                    _ => DestName::Refused("a name with no file name in it".into()),
                }
            }
        }
    }

    /// The key two names collide under: equal keys are one object at the destination.
    pub fn collision_key(self, name: &str) -> String {
        match self {
            Naming::Local {
                case_insensitive: true,
            } => name.to_lowercase(),
            _ => name.to_string(),
        }
    }

    /// Every folder `name` needs, when the destination's folders are real (local): a file
    /// already planned under one of these names collides with it.
    pub fn folders_of(self, name: &str) -> Vec<String> {
        match self {
            Naming::Local { .. } => {
                let mut out = Vec::new();
                let mut end = 0;
                while let Some(at) = name[end..].find('/') {
                    end += at;
                    out.push(self.collision_key(&name[..end]));
                    end += 1;
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

/// A `/`-separated name with its empty and `.` segments dropped and `..` segments resolved;
/// `None` when a `..` climbs above the root.
fn resolve_segments(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for segment in name.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// RFC 3986 "remove_dot_segments" over a `/`-separated name (what URL layers do to a path);
/// `None` when a `..` climbs above the root.
fn resolve_dot_segments(name: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = name.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop()?;
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Some(out.join("/"))
}

/// What to do when the destination already holds an object under a name blobway is about to
/// write, that blobway did not copy from this very source version (`--if-exists`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IfExists {
    /// Replace it (as AzCopy and rclone do); the summary counts what was replaced.
    #[default]
    Overwrite,
    /// Leave it as it is and skip the object; the commit is conditional, so a writer that
    /// appears meanwhile is not clobbered either.
    Skip,
    /// Fail the object with the reason; the commit is conditional as for `skip`.
    Fail,
}

impl IfExists {
    /// Whether commits must refuse to replace an object (`If-None-Match: *`).
    pub fn create_only(self) -> bool {
        self != IfExists::Overwrite
    }
}

/// The access tier objects are written to at an Azure destination (`--access-tier`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AccessTier {
    /// Frequent access.
    Hot,
    /// Infrequent access, kept 30 days or more.
    Cool,
    /// Rare access, kept 90 days or more.
    Cold,
    /// Offline: reading it back needs a rehydration of hours.
    Archive,
}

/// The storage class objects are written to at an S3 destination (`--storage-class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StorageClass {
    /// S3 Standard.
    Standard,
    /// Standard-Infrequent Access.
    StandardIa,
    /// One Zone-Infrequent Access.
    OnezoneIa,
    /// Intelligent-Tiering.
    IntelligentTiering,
    /// Glacier Instant Retrieval.
    GlacierIr,
    /// Glacier Flexible Retrieval (reading it back needs a restore).
    Glacier,
    /// Glacier Deep Archive (reading it back needs a restore).
    DeepArchive,
}

/// What to do with a metadata pair the destination cannot hold (`--invalid-metadata`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InvalidMetadata {
    /// Keep it under a valid name, `rename_<name>` (its value percent-encoded), with the
    /// original name beside it in `rename_key_<name>` — reversible, nothing lost.
    #[default]
    Rename,
    /// Leave the pair out (the object is copied without it).
    Exclude,
    /// Fail the object with the reason.
    Fail,
}

/// How a destination's metadata names are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetaNames {
    /// ASCII C# identifiers: a letter or `_`, then letters, digits or `_` (Azure).
    Identifier,
    /// HTTP header tokens (S3's `x-amz-meta-*`).
    HttpToken,
    /// Any non-empty name (GCS's JSON, local sidecars).
    Any,
}

/// What metadata a destination accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaRules {
    /// Which names are valid.
    pub names: MetaNames,
    /// Values must be printable ASCII (they travel as HTTP header values).
    pub ascii_values: bool,
    /// Names compare case-insensitively (two names differing in case are one).
    pub case_insensitive: bool,
    /// Bytes of names and values together, at most.
    pub max_total: usize,
}

impl MetaRules {
    /// Azure Blob Storage.
    pub const AZURE: MetaRules = MetaRules {
        names: MetaNames::Identifier,
        ascii_values: true,
        case_insensitive: true,
        max_total: 8 * 1024,
    };
    /// Amazon S3: user metadata is at most 2 KiB.
    pub const S3: MetaRules = MetaRules {
        names: MetaNames::HttpToken,
        ascii_values: true,
        case_insensitive: true,
        max_total: 2 * 1024,
    };
    /// Google Cloud Storage: custom metadata is at most 8 KiB.
    pub const GCS: MetaRules = MetaRules {
        names: MetaNames::Any,
        ascii_values: false,
        case_insensitive: false,
        max_total: 8 * 1024,
    };
    /// Anything (local sidecars).
    pub const ANY: MetaRules = MetaRules {
        names: MetaNames::Any,
        ascii_values: false,
        case_insensitive: false,
        max_total: usize::MAX,
    };

    fn name_ok(&self, name: &str) -> bool {
        let mut chars = name.chars();
        match self.names {
            MetaNames::Identifier => {
                chars
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            }
            MetaNames::HttpToken => {
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            }
            MetaNames::Any => !name.is_empty(),
        }
    }

    fn value_ok(&self, value: &str) -> bool {
        !self.ascii_values || value.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    }

    fn fold(&self, name: &str) -> String {
        if self.case_insensitive {
            name.to_ascii_lowercase()
        } else {
            name.to_string()
        }
    }
}

/// Metadata as a destination will hold it, and what was changed to get there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MappedMeta {
    /// The pairs to write.
    pub pairs: BTreeMap<String, String>,
    /// Pairs kept under another name: (original name, new name).
    pub renamed: Vec<(String, String)>,
    /// Pairs left out, by original name.
    pub excluded: Vec<String>,
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, KEEP).to_string()
}

/// A valid identifier made of `name`: every character that is not an ASCII letter, digit or
/// `_` becomes `_`.
fn identifier_of(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The pairs `pairs` become at a destination with `rules`, under `policy`; an error names
/// the pair and the fix. Decided per object, before any of its bytes are sent.
///
/// Rename rule (reversible): a pair whose name or value the store cannot hold is kept as
/// `rename_<identifier>` = its value percent-encoded, with `rename_key_<identifier>` = its
/// name percent-encoded; `<identifier>` is the name with every character but ASCII letters,
/// digits and `_` turned into `_`. Two names landing on one (compared as the store compares
/// them, e.g. case-insensitively on Azure) and a total over the store's limit fail the object.
pub fn map_metadata(
    pairs: &BTreeMap<String, String>,
    rules: &MetaRules,
    policy: InvalidMetadata,
) -> Result<MappedMeta, String> {
    let mut out = MappedMeta::default();
    // Folded name → the original name it came from.
    let mut taken: BTreeMap<String, String> = BTreeMap::new();
    let mut put = |out: &mut MappedMeta, name: String, value: String, from: &str| {
        let folded = rules.fold(&name);
        if let Some(earlier) = taken.get(&folded) {
            return Err(format!(
                "metadata `{from}` and `{earlier}` would both be held as `{name}` at the \
                 destination (names compare case-insensitively there); rename one at the \
                 source, or pass --invalid-metadata exclude"
            ));
        }
        taken.insert(folded, from.to_string());
        out.pairs.insert(name, value);
        Ok(())
    };
    // Valid pairs first, so a renamed name never displaces one the source really has.
    let (valid, invalid): (Vec<_>, Vec<_>) = pairs
        .iter()
        .partition(|(name, value)| rules.name_ok(name) && rules.value_ok(value));
    for (name, value) in valid {
        put(&mut out, name.clone(), value.clone(), name)?;
    }
    for (name, value) in invalid {
        match policy {
            InvalidMetadata::Fail => {
                return Err(format!(
                    "metadata `{name}` cannot be held by the destination (names there must \
                     be {}{}); pass --invalid-metadata rename (kept under a valid name) or \
                     exclude",
                    match rules.names {
                        MetaNames::Identifier =>
                            "letters, digits and `_`, not starting with a digit",
                        MetaNames::HttpToken => "HTTP header tokens",
                        MetaNames::Any => "non-empty",
                    },
                    if rules.ascii_values {
                        ", values printable ASCII"
                    } else {
                        ""
                    }
                ));
            }
            InvalidMetadata::Exclude => out.excluded.push(name.clone()),
            InvalidMetadata::Rename => {
                let id = identifier_of(name);
                let new = format!("rename_{id}");
                put(&mut out, new.clone(), percent_encode(value), name)?;
                put(
                    &mut out,
                    format!("rename_key_{id}"),
                    percent_encode(name),
                    name,
                )?;
                out.renamed.push((name.clone(), new));
            }
        }
    }
    let total: usize = out.pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > rules.max_total {
        return Err(format!(
            "the metadata comes to {total} bytes{}, over the destination's {} bytes; trim \
             it at the source, or pass --invalid-metadata exclude",
            if out.renamed.is_empty() {
                ""
            } else {
                " with the renamed names"
            },
            rules.max_total
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str) -> DestName {
        DestName::Object(name.into())
    }

    fn refused(d: &DestName) -> bool {
        matches!(d, DestName::Refused(_))
    }

    #[test]
    fn nasty_keys_map_to_the_names_each_store_will_hold() {
        let local = Naming::Local {
            case_insensitive: false,
        };
        // (key, Azure, local, S3/GCS kept as is)
        let table: &[(&str, DestName, DestName)] = &[
            ("k/x/a.txt", object("k/x/a.txt"), object("k/x/a.txt")),
            ("k/x/./a.txt", object("k/x/a.txt"), object("k/x/a.txt")),
            (
                "k/y/../x/a.txt",
                object("k/x/a.txt"),
                DestName::Refused(String::new()),
            ),
            ("k//a.txt", object("k//a.txt"), object("k/a.txt")),
            ("./a.txt", object("a.txt"), object("a.txt")),
            (
                "../a.txt",
                DestName::Refused(String::new()),
                DestName::Refused(String::new()),
            ),
            ("dir/", DestName::FolderMarker, DestName::FolderMarker),
            (
                "a\u{7}b",
                DestName::Refused(String::new()),
                object("a\u{7}b"),
            ),
            ("a/.", DestName::Refused(String::new()), object("a")),
            (
                "é/ünï cödé.txt",
                object("é/ünï cödé.txt"),
                object("é/ünï cödé.txt"),
            ),
            (
                "",
                DestName::Refused(String::new()),
                DestName::Refused(String::new()),
            ),
        ];
        for (key, azure, on_local) in table {
            let size = if key.ends_with('/') { 0 } else { 3 };
            for (naming, expected) in [(Naming::Azure, azure), (local, on_local)] {
                let got = naming.destination_name(key, size);
                if refused(expected) {
                    assert!(refused(&got), "{naming:?} {key:?}: {got:?}");
                } else {
                    assert_eq!(&got, expected, "{naming:?} {key:?}");
                }
            }
        }
        for (key, held) in [
            ("k/x/./a.txt", "k/x/a.txt"),
            ("k//a.txt", "k/a.txt"),
            ("dir/", "dir/"),
            ("é/ü.txt", "é/ü.txt"),
            ("/lead", "lead"),
        ] {
            assert_eq!(Naming::S3.destination_name(key, 0), object(held), "{key}");
        }
        assert!(refused(&Naming::S3.destination_name("../a", 1)));
        assert!(refused(&Naming::S3.destination_name(&"a".repeat(1025), 1)));
        assert!(refused(&Naming::Gcs.destination_name("a\nb", 1)));
        assert!(refused(&Naming::Gcs.destination_name("..", 1)));
        assert!(
            refused(&local.destination_name("full/", 3)),
            "a file named as a folder"
        );
        assert!(refused(
            &local.destination_name(&format!("a/{}", "b".repeat(256)), 3)
        ));
    }

    #[test]
    fn local_names_collide_by_case_only_on_case_insensitive_filesystems() {
        let sensitive = Naming::Local {
            case_insensitive: false,
        };
        let insensitive = Naming::Local {
            case_insensitive: true,
        };
        assert_ne!(
            sensitive.collision_key("A.txt"),
            sensitive.collision_key("a.txt")
        );
        assert_eq!(
            insensitive.collision_key("A.txt"),
            insensitive.collision_key("a.txt")
        );
        assert_eq!(
            sensitive.folders_of("a/b/c.txt"),
            vec!["a".to_string(), "a/b".to_string()]
        );
        assert!(Naming::Azure.folders_of("a/b").is_empty(), "blobs are flat");
    }

    fn pairs(list: &[(&str, &str)]) -> BTreeMap<String, String> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn hyphenated_names_are_renamed_reversibly_for_azure() {
        let mapped = map_metadata(
            &pairs(&[("original-name", "Hello World.txt"), ("owner", "ops")]),
            &MetaRules::AZURE,
            InvalidMetadata::Rename,
        )
        .expect("mapped");
        assert_eq!(
            mapped.pairs,
            pairs(&[
                ("owner", "ops"),
                ("rename_original_name", "Hello%20World.txt"),
                ("rename_key_original_name", "original-name"),
            ])
        );
        assert_eq!(
            mapped.renamed,
            vec![(
                "original-name".to_string(),
                "rename_original_name".to_string()
            )]
        );
        // The same pairs are valid as they are on S3, GCS and local.
        for rules in [MetaRules::S3, MetaRules::GCS, MetaRules::ANY] {
            let kept = map_metadata(
                &pairs(&[("original-name", "Hello World.txt")]),
                &rules,
                InvalidMetadata::Fail,
            )
            .expect("valid");
            assert!(kept.renamed.is_empty());
        }
    }

    #[test]
    fn exclude_drops_and_fail_explains() {
        let source = pairs(&[("original-name", "x"), ("ok", "y")]);
        let excluded =
            map_metadata(&source, &MetaRules::AZURE, InvalidMetadata::Exclude).expect("mapped");
        assert_eq!(excluded.pairs, pairs(&[("ok", "y")]));
        assert_eq!(excluded.excluded, vec!["original-name".to_string()]);
        let failed =
            map_metadata(&source, &MetaRules::AZURE, InvalidMetadata::Fail).expect_err("invalid");
        assert!(failed.contains("`original-name`"), "{failed}");
        assert!(failed.contains("--invalid-metadata rename"), "{failed}");
    }

    #[test]
    fn renamed_names_that_collide_fail_with_both_names() {
        // `a-b` becomes `rename_a_b`; the source also has `RENAME_A_B` (Azure folds case).
        let failed = map_metadata(
            &pairs(&[("a-b", "1"), ("RENAME_A_B", "2")]),
            &MetaRules::AZURE,
            InvalidMetadata::Rename,
        )
        .expect_err("collision");
        assert!(
            failed.contains("`a-b`") && failed.contains("`RENAME_A_B`"),
            "{failed}"
        );
        // `a-b` and `a.b` both become `rename_a_b`.
        let failed = map_metadata(
            &pairs(&[("a-b", "1"), ("a.b", "2")]),
            &MetaRules::AZURE,
            InvalidMetadata::Rename,
        )
        .expect_err("collision");
        assert!(
            failed.contains("`a-b`") && failed.contains("`a.b`"),
            "{failed}"
        );
    }

    #[test]
    fn non_ascii_values_are_encoded_where_headers_carry_them() {
        let mapped = map_metadata(
            &pairs(&[("title", "Grüße")]),
            &MetaRules::S3,
            InvalidMetadata::Rename,
        )
        .expect("mapped");
        assert_eq!(
            mapped.pairs.get("rename_title").map(String::as_str),
            Some("Gr%C3%BC%C3%9Fe")
        );
        let gcs = map_metadata(
            &pairs(&[("title", "Grüße")]),
            &MetaRules::GCS,
            InvalidMetadata::Fail,
        )
        .expect("JSON carries Unicode");
        assert_eq!(gcs.pairs.get("title").map(String::as_str), Some("Grüße"));
    }

    #[test]
    fn the_size_limit_counts_renamed_pairs() {
        let big = "v".repeat(4090);
        let ok = map_metadata(
            &pairs(&[("a", &big), ("b", &big)]),
            &MetaRules::AZURE,
            InvalidMetadata::Rename,
        );
        assert!(ok.is_ok());
        let failed = map_metadata(
            &pairs(&[("a", &big), ("b-c", &big)]),
            &MetaRules::AZURE,
            InvalidMetadata::Rename,
        )
        .expect_err("over 8 KiB with the renamed names");
        assert!(failed.contains("8192 bytes"), "{failed}");
    }
}
