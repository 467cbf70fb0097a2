//! Locations as the operator writes them — `s3://bucket/key`, `az://container/path`,
//! `gs://bucket/path`, `file:///abs/path` or a plain path — parsed into one typed [`Location`], and the rule that
//! maps a source key onto its destination key.
//!
//! A location whose path is empty or ends in `/` names a *prefix* (every object under it,
//! recursively); otherwise it names one object. A local path that is an existing directory is a
//! prefix too. For local paths the "container" is the directory the store is rooted at, so that
//! every backend is addressed the same way: (container, key).

use std::fmt;
use std::path::{Path, PathBuf};

/// Which kind of store a location lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Scheme {
    /// Amazon S3 or an S3-compatible server.
    S3,
    /// Azure Blob Storage (block blobs).
    Azure,
    /// Google Cloud Storage (a destination only).
    Gcs,
    /// A directory on this machine.
    Local,
}

impl Scheme {
    /// The URL scheme the operator types for this store.
    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3://",
            Scheme::Azure => "az://",
            Scheme::Gcs => "gs://",
            Scheme::Local => "file://",
        }
    }
}

/// A parsed location: a store, its container (bucket, container or local root directory) and
/// a key or key prefix inside it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// The kind of store.
    pub scheme: Scheme,
    /// Bucket (S3), container (Azure) or root directory (local, absolute).
    pub container: String,
    /// Key of one object, or a prefix (empty or ending in `/`).
    pub key: String,
}

/// Why a location string could not be understood.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid location `{input}`: {reason}")]
pub struct LocationError {
    input: String,
    reason: String,
}

impl LocationError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        Self {
            input: input.to_string(),
            reason: reason.into(),
        }
    }
}

impl Location {
    /// Parses `s3://bucket[/key]`, `az://container[/path]`, `file:///abs/path` or a plain path.
    pub fn parse(input: &str) -> Result<Self, LocationError> {
        if input.trim().is_empty() {
            return Err(LocationError::new(input, "it is empty"));
        }
        if let Some(rest) = input.strip_prefix("s3://") {
            let (bucket, key) = split_container(input, rest)?;
            validate_bucket(input, bucket)?;
            return Ok(Self {
                scheme: Scheme::S3,
                container: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = input
            .strip_prefix("az://")
            .or_else(|| input.strip_prefix("azure://"))
        {
            let (container, key) = split_container(input, rest)?;
            validate_container(input, container)?;
            return Ok(Self {
                scheme: Scheme::Azure,
                container: container.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = input.strip_prefix("gs://") {
            let (bucket, key) = split_container(input, rest)?;
            validate_bucket(input, bucket)?;
            return Ok(Self {
                scheme: Scheme::Gcs,
                container: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = input.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err(LocationError::new(
                    input,
                    "a file:// location needs an absolute path, e.g. file:///data/in/",
                ));
            }
            return Ok(Self::local(Path::new(rest), rest.ends_with('/')));
        }
        if let Some((scheme, _)) = input.split_once("://") {
            return Err(LocationError::new(
                input,
                format!(
                    "unknown scheme `{scheme}://`; use s3://bucket/key, az://container/path, \
                     gs://bucket/path, file:///path or a plain local path"
                ),
            ));
        }
        // `az:/c/x` or `s3:bucket/x` is a mistyped scheme, not a folder named `az:`.
        if let Some((scheme, _)) = input.split_once(':')
            && ["s3", "az", "azure", "gs", "file"].contains(&scheme.to_ascii_lowercase().as_str())
        {
            return Err(LocationError::new(
                input,
                format!(
                    "`{scheme}:` needs two slashes: {scheme}://…; for a local folder with that \
                     name, write ./{input}"
                ),
            ));
        }
        let path = Path::new(input);
        let absolute = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| LocationError::new(input, format!("cannot resolve it: {e}")))?
                .join(path)
        };
        Ok(Self::local(&absolute, input.ends_with('/')))
    }

    /// A local location: an existing directory (or a path written with a trailing slash) is a
    /// prefix rooted at itself; anything else is one file rooted at its parent directory.
    fn local(path: &Path, trailing_slash: bool) -> Self {
        let path = normalize(path);
        if trailing_slash || path.is_dir() {
            Self {
                scheme: Scheme::Local,
                container: path.to_string_lossy().into_owned(),
                key: String::new(),
            }
        } else {
            let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Self {
                scheme: Scheme::Local,
                container: parent.to_string_lossy().into_owned(),
                key: name,
            }
        }
    }

    /// True when this location names every object under a prefix rather than one object.
    pub fn is_prefix(&self) -> bool {
        self.key.is_empty() || self.key.ends_with('/')
    }

    /// The same location read as a prefix (a directory), e.g. a local destination that does not
    /// exist yet but receives a whole prefix.
    pub fn as_prefix(&self) -> Self {
        if self.is_prefix() {
            return self.clone();
        }
        match self.scheme {
            Scheme::Local => Self {
                scheme: Scheme::Local,
                container: PathBuf::from(&self.container)
                    .join(&self.key)
                    .to_string_lossy()
                    .into_owned(),
                key: String::new(),
            },
            _ => Self {
                key: format!("{}/", self.key),
                ..self.clone()
            },
        }
    }

    /// The destination key for `source_key`, listed under the source location `source`, when
    /// copied to this destination location.
    ///
    /// A key under a source prefix keeps its remainder under the destination prefix; a single
    /// object copied to a prefix keeps its base name; a single object copied to a key takes
    /// that key.
    pub fn destination_key(&self, source: &Location, source_key: &str) -> String {
        if source.is_prefix() || self.is_prefix() {
            format!("{}{}", self.key, source.path_of(source_key))
        } else {
            self.key.clone()
        }
    }

    /// The path of `key`, listed under this location: its remainder under a prefix, or its
    /// base name when the location names the object itself.
    pub fn path_of<'k>(&self, key: &'k str) -> &'k str {
        if self.is_prefix() {
            key.strip_prefix(&self.key).unwrap_or(key)
        } else {
            key.rsplit('/').next().unwrap_or(key)
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Local => {
                let mut path = PathBuf::from(&self.container);
                if !self.key.is_empty() {
                    path.push(&self.key);
                }
                let mut shown = path.to_string_lossy().into_owned();
                if self.key.is_empty() && !shown.ends_with('/') {
                    shown.push('/');
                }
                write!(f, "{shown}")
            }
            scheme => write!(f, "{}{}/{}", scheme.prefix(), self.container, self.key),
        }
    }
}

/// Parses a source and a destination together: when the source is a prefix, the destination is
/// read as a prefix too (a local destination directory need not exist yet).
pub fn parse_route(source: &str, destination: &str) -> Result<(Location, Location), LocationError> {
    let src = Location::parse(source)?;
    let dst = Location::parse(destination)?;
    let dst = if src.is_prefix() {
        dst.as_prefix()
    } else {
        dst
    };
    Ok((src, dst))
}

fn split_container<'a>(input: &str, rest: &'a str) -> Result<(&'a str, &'a str), LocationError> {
    let (container, key) = rest.split_once('/').unwrap_or((rest, ""));
    if container.is_empty() {
        return Err(LocationError::new(
            input,
            "the bucket or container name is missing",
        ));
    }
    if key.contains("//") || key.starts_with('/') {
        return Err(LocationError::new(
            input,
            "the path has an empty segment (`//`)",
        ));
    }
    Ok((container, key))
}

fn validate_bucket(input: &str, bucket: &str) -> Result<(), LocationError> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = bucket
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && bucket
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if (3..=63).contains(&bucket.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(LocationError::new(
            input,
            format!(
                "`{bucket}` is not a valid S3 bucket name (3–63 characters: lowercase letters, \
                 digits, `-` and `.`, starting and ending with a letter or digit)"
            ),
        ))
    }
}

fn validate_container(input: &str, container: &str) -> Result<(), LocationError> {
    let ok_chars = container
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let ok_ends = container
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && !container.ends_with('-')
        && !container.contains("--");
    if (3..=63).contains(&container.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(LocationError::new(
            input,
            format!(
                "`{container}` is not a valid Azure container name (3–63 characters: lowercase \
                 letters, digits and single `-`, starting with a letter or digit)"
            ),
        ))
    }
}

/// Removes `.` and resolves `..` lexically, without touching the filesystem.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cloud_locations() {
        let s3 = Location::parse("s3://my-bucket/data/big.bin").expect("valid");
        assert_eq!(s3.scheme, Scheme::S3);
        assert_eq!(s3.container, "my-bucket");
        assert_eq!(s3.key, "data/big.bin");
        assert!(!s3.is_prefix());

        let az = Location::parse("az://dest/backup/").expect("valid");
        assert_eq!(az.scheme, Scheme::Azure);
        assert_eq!(az.key, "backup/");
        assert!(az.is_prefix());

        let root = Location::parse("s3://bucket").expect("valid");
        assert!(root.is_prefix());
        assert_eq!(root.to_string(), "s3://bucket/");
    }

    #[test]
    fn rejects_malformed_locations_with_a_reason() {
        let cases = [
            ("s3://", "missing"),
            ("s3://Bad_Bucket/x", "not a valid S3 bucket name"),
            ("az://A/x", "not a valid Azure container name"),
            ("gs2://b/k", "unknown scheme"),
            ("file://relative/path", "absolute path"),
            ("s3://bucket//x", "empty segment"),
            ("", "empty"),
        ];
        for (input, reason) in cases {
            let err = Location::parse(input).expect_err(input).to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn local_paths_root_at_directory_or_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_string_lossy().into_owned();
        let as_dir = Location::parse(&d).expect("dir");
        assert!(as_dir.is_prefix());
        assert_eq!(as_dir.container, d);

        let file = Location::parse(&format!("{d}/x/../file.bin")).expect("file");
        assert_eq!(file.container, d);
        assert_eq!(file.key, "file.bin");

        let url = Location::parse(&format!("file://{d}/sub/")).expect("url");
        assert!(url.is_prefix());
        assert_eq!(url.container, format!("{d}/sub"));
    }

    #[test]
    fn maps_source_keys_onto_destination_keys() {
        let src = Location::parse("s3://bkt/photos/2024/").expect("src");
        let dst = Location::parse("az://ctr/archive/").expect("dst");
        assert_eq!(
            dst.destination_key(&src, "photos/2024/jan/a b.jpg"),
            "archive/jan/a b.jpg"
        );

        let one = Location::parse("s3://bkt/photos/x.jpg").expect("one");
        assert_eq!(dst.destination_key(&one, "photos/x.jpg"), "archive/x.jpg");
        let renamed = Location::parse("az://ctr/y.jpg").expect("renamed");
        assert_eq!(renamed.destination_key(&one, "photos/x.jpg"), "y.jpg");

        let whole = Location::parse("s3://bkt").expect("whole");
        let root = Location::parse("az://ctr").expect("root");
        assert_eq!(root.destination_key(&whole, "k/é.txt"), "k/é.txt");
        assert_eq!(
            Location::parse("az://ctr/new")
                .expect("new")
                .as_prefix()
                .destination_key(&whole, "k"),
            "new/k"
        );
    }
}
