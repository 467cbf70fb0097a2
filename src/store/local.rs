//! The local-filesystem store: a directory read as a bucket, and written with the same
//! stage/commit protocol as Azure — each block is staged as its own file under
//! `<root>/.blobway-staging/`, and a commit concatenates the blocks into a temporary file in
//! the same filesystem and renames it into place, so an object is never visible half-written.
//!
//! The version token of a local file is its modification time, size, change time and inode; a
//! ranged read checks it before and after reading, so a file rewritten mid-copy fails with
//! "source changed".

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::time::UNIX_EPOCH;

mod durable;
mod walk;
pub use durable::sync_deferred;
use walk::Walk;

use super::blocking::blocking;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::{
    BlockRef, Checksum, Chunk, DestObject, ErrorClass, Listed, ObjectInfo, ObjectMeta, ObjectSink,
    ObjectSource, Page, PlannedBlock, SinkLimits, StoreError, StoreResult, Upload,
};

/// Name of the directory, inside the root, where blocks wait for their commit.
pub const STAGING_DIR: &str = ".blobway-staging";

/// The extended attribute a committed local object carries its metadata in (a [`Sidecar`],
/// JSON): part of the file's inode, so it is put in place, renamed and synced with the file.
const META_XATTR: &str = "user.blobway.meta";

/// A directory used as an object store.
#[derive(Clone, Debug)]
pub struct LocalStore {
    root: PathBuf,
    /// The listing walk the last page stopped (with its prefix), for the next page.
    walk: std::sync::Arc<std::sync::Mutex<Option<(String, Walk)>>>,
    /// Whether the root has a folder of sidecars (not yet known, no, yes): most have none,
    /// and then no object's sidecar is looked for.
    sidecars: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

const SIDECARS_UNKNOWN: u8 = 0;
const SIDECARS_NONE: u8 = 1;
const SIDECARS_SOME: u8 = 2;

impl LocalStore {
    /// A store rooted at `root` (created on [`ObjectSink::prepare`] when used as destination).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            walk: Default::default(),
            sidecars: Default::default(),
        }
    }

    fn object_path(&self, key: &str) -> StoreResult<PathBuf> {
        let relative = Path::new(key);
        let safe = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(StoreError::new(
                ErrorClass::Invalid,
                None,
                format!("`{key}` is not a safe relative file name for a local store"),
            ));
        }
        Ok(self.root.join(relative))
    }

    /// Whether the filesystem of the root compares names case-insensitively (as macOS and
    /// Windows volumes do): a probe file is created in the root (when it exists; a root
    /// blobway creates holds nothing yet to collide with) and looked for under its upper-case
    /// name, then removed.
    fn case_insensitive(&self) -> bool {
        let dir = self.root.as_path();
        if !dir.is_dir() {
            return false;
        }
        let probe = format!(".blobway-case-probe-{:016x}", rand::random::<u64>());
        let path = dir.join(&probe);
        if fs::write(&path, b"").is_err() {
            return false;
        }
        let folded = dir.join(probe.to_uppercase()).exists();
        let _ = fs::remove_file(&path);
        folded
    }

    fn staging_for(&self, key: &str) -> PathBuf {
        self.root.join(STAGING_DIR).join(key_hash(key))
    }

    fn meta_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR).join("meta")
    }

    fn meta_path(&self, key: &str) -> PathBuf {
        self.meta_dir().join(format!("{}.json", key_hash(key)))
    }

    /// Whether any object of this root may have a sidecar (looked at once; this store's own
    /// first sidecar says yes).
    fn may_have_sidecars(&self) -> bool {
        use std::sync::atomic::Ordering;
        match self.sidecars.load(Ordering::Relaxed) {
            SIDECARS_UNKNOWN => {
                let some = self.meta_dir().is_dir();
                let found = if some { SIDECARS_SOME } else { SIDECARS_NONE };
                let _ = self.sidecars.compare_exchange(
                    SIDECARS_UNKNOWN,
                    found,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                some
            }
            known => known == SIDECARS_SOME,
        }
    }

    /// What the destination holds under `key`: its size, and the metadata blobway committed it
    /// with when that still describes this very file.
    fn describe(&self, key: &str) -> StoreResult<Option<DestObject>> {
        use std::os::unix::fs::MetadataExt;
        let path = self.object_path(key)?;
        let (dev, stat) = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => (meta.dev(), FileStat::of(&meta)),
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot stat", &path, e)),
        };
        let attribute = xattr::get(&path, META_XATTR).ok().flatten();
        let meta = self.stored_meta(key, attribute, stat).pairs;
        // A file blobway wrote may be another run's write not yet on disk: whatever records
        // it as copied waits for the next sync.
        if !meta.is_empty() && durable::grouped(dev, path.parent().unwrap_or(&self.root)) {
            durable::defer(dev, None);
        }
        Ok(Some(DestObject {
            size: stat.size,
            meta,
        }))
    }

    /// The metadata blobway recorded for the file of `key` (as `stat` found it): from its
    /// extended attribute (`attribute`, as read), else from a sidecar — only while it still
    /// describes this very file (size, inode and, where recorded, modification time); empty
    /// otherwise.
    fn stored_meta(&self, key: &str, attribute: Option<Vec<u8>>, stat: FileStat) -> ObjectMeta {
        let described = |sidecar: &Sidecar| {
            sidecar.size == stat.size
                && sidecar.ino.is_none_or(|i| i == stat.ino)
                && sidecar.mtime_ns.is_none_or(|t| t == stat.mtime_ns)
        };
        attribute
            .or_else(|| {
                self.may_have_sidecars()
                    .then(|| fs::read(self.meta_path(key)).ok())
                    .flatten()
            })
            .and_then(|bytes| serde_json::from_slice::<Sidecar>(&bytes).ok())
            .filter(described)
            .map(|sidecar| sidecar.meta)
            .unwrap_or_default()
    }

    /// The metadata a file carries as a source: what blobway stored with it, and otherwise a
    /// content type guessed from its extension (`.json` → `application/json`), as other
    /// upload tools do.
    fn source_meta(&self, key: &str, file: &fs::File, stat: FileStat) -> ObjectMeta {
        let attribute = xattr::FileExt::get_xattr(file, META_XATTR).ok().flatten();
        let mut meta = self.stored_meta(key, attribute, stat);
        if meta.content_type.is_none() {
            meta.content_type = mime_guess::from_path(key).first_raw().map(str::to_string);
        }
        meta
    }

    /// Writes an object through a fresh temporary file: unnamed, in the target's own folder,
    /// where the filesystem has them (`O_TMPFILE`), else named, in `dir`. The bytes (`write`
    /// returns how many, which must be as `how` expects) and the metadata (in an extended attribute
    /// naming the file's size, inode and modification time; in a sidecar where attributes are
    /// not available) go in first; then the file is put in place. Its sync is
    /// [`durable::defer`]red to the state's next commit where the filesystem groups them,
    /// unless `now` (a commit, whose staged blocks go once it returns); otherwise the file is
    /// synced before it is put in place and its folder after. The bytes are synced before the
    /// name whenever the name may replace an object. A crash at any point leaves the old object
    /// (which new metadata never vouches for: another inode) or the new one with its metadata.
    fn publish(
        &self,
        dir: &Path,
        target: &Path,
        key: &str,
        meta: &ObjectMeta,
        how: Placing,
        write: impl FnOnce(&mut fs::File) -> io::Result<u64>,
    ) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let Placing {
            create_only,
            now,
            expected,
        } = how;
        let folder = target.parent().unwrap_or(&self.root);
        let unnamed = match unnamed_file(folder) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(folder)?;
                unnamed_file(folder)?
            }
            other => other?,
        };
        let (mut file, named) = match unnamed {
            Some(file) => (file, None),
            None => {
                fs::create_dir_all(folder)?;
                fs::create_dir_all(dir)?;
                let tmp = dir.join(format!(
                    ".tmp-{}-{:016x}",
                    std::process::id(),
                    rand::random::<u64>()
                ));
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)?;
                (file, Some(tmp))
            }
        };
        let result = (|| {
            let size = write(&mut file)?;
            if size != expected {
                return Err(io::Error::other(format!(
                    "{size} bytes were written where {expected} were planned"
                )));
            }
            let stat = file.metadata()?;
            let (dev, stat) = (stat.dev(), FileStat::of(&stat));
            let sidecar = Sidecar {
                size,
                ino: Some(stat.ino),
                mtime_ns: Some(stat.mtime_ns),
                meta: meta.clone(),
            };
            let described = serde_json::to_vec(&sidecar).map_err(io::Error::other)?;
            // In the file itself, durable with its bytes; a file system without extended
            // attributes (or metadata too large for them) gets the sidecar (synced before the
            // file is put in place, so it is there whenever the file is).
            let in_file = xattr::FileExt::set_xattr(&file, META_XATTR, &described).is_ok();
            let grouped = !now && in_file && durable::grouped(dev, folder);
            // A rename (the named way) may replace an object: its bytes go first.
            if !grouped || named.is_some() {
                file.sync_all()?;
            }
            if !in_file {
                self.write_meta(key, &described)?;
            }
            match &named {
                Some(tmp) => place(tmp, target, create_only)?,
                None => place_unnamed(&file, folder, target, create_only)?,
            }
            if grouped {
                durable::defer(dev, Some(target));
            } else {
                // The name is durable before the object is recorded done (a file system
                // that cannot sync a folder, EINVAL, has nothing more to offer).
                match fs::File::open(folder).and_then(|dir| dir.sync_all()) {
                    Err(e) if e.raw_os_error() != Some(nix::libc::EINVAL) => return Err(e),
                    _ => {}
                }
            }
            // What the name leads to now is this very file (its inode): what was written is
            // what the destination holds, with no need to read it back.
            if fs::symlink_metadata(target)?.ino() != stat.ino {
                return Err(io::Error::other(
                    "another writer replaced the object the moment it was put in place",
                ));
            }
            if in_file && self.may_have_sidecars() {
                // A sidecar an older copy left must never vouch for a later file that gets
                // its freed inode.
                match fs::remove_file(self.meta_path(key)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })();
        if let (Err(_), Some(tmp)) = (&result, &named) {
            let _ = fs::remove_file(tmp);
        }
        result
    }

    /// Records `described` (a [`Sidecar`] naming the inode of the file about to be put in
    /// place) in the sidecar of `key`.
    fn write_meta(&self, key: &str, described: &[u8]) -> io::Result<()> {
        self.sidecars
            .store(SIDECARS_SOME, std::sync::atomic::Ordering::Relaxed);
        let path = self.meta_path(key);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        fs::create_dir_all(&dir)?;
        write_atomically(&dir, &path, &[described], true)
    }
}

/// How [`LocalStore::publish`] puts an object in place.
#[derive(Clone, Copy, Debug)]
struct Placing {
    /// Refuse (`AlreadyExists`) when anything is there.
    create_only: bool,
    /// Durable when this returns, not at the state's next commit.
    now: bool,
    /// The bytes the object must have.
    expected: u64,
}

/// The metadata of a committed local object: in its extended attribute, or in a sidecar
/// beside the staging area.
#[derive(serde::Serialize, serde::Deserialize)]
struct Sidecar {
    size: u64,
    /// The inode of the file it describes (a rename or a hard link keeps it), so a sidecar
    /// written just before a crash never vouches for the file that was there before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ino: Option<u64>,
    /// The file's modification time (ns) once written: an edit in place at the same size
    /// (same inode, same attribute) changes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mtime_ns: Option<i128>,
    meta: ObjectMeta,
}

/// What identifies one version of a file: size, inode and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStat {
    size: u64,
    ino: u64,
    mtime_ns: i128,
}

impl FileStat {
    fn of(meta: &fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStat {
            size: meta.len(),
            ino: meta.ino(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

fn key_hash(key: &str) -> String {
    Sha256::digest(key.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Maps an I/O failure to a store error, naming the path and the fix.
fn io_error(what: &str, path: &Path, err: io::Error) -> StoreError {
    let shown = path.display();
    match err.kind() {
        io::ErrorKind::NotFound => StoreError::new(
            ErrorClass::NotFound,
            None,
            format!("{what} {shown}: not found"),
        ),
        io::ErrorKind::AlreadyExists => StoreError::new(
            ErrorClass::Exists,
            None,
            format!("{what} {shown}: a file is already there (--if-exists skip|fail)"),
        ),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => StoreError::new(
            ErrorClass::Permission,
            None,
            format!("{what} {shown}: permission denied; check the directory's owner and mode"),
        ),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::new(
            ErrorClass::Capacity,
            None,
            format!(
                "{what} {shown}: the destination disk is full; free space there, then run \
                 `blobway resume` (nothing copied so far is lost)"
            ),
        ),
        io::ErrorKind::FileTooLarge => StoreError::new(
            ErrorClass::Capacity,
            None,
            format!("{what} {shown}: the file is too large for this filesystem"),
        ),
        _ => StoreError::transient(format!("{what} {shown}: {err}")),
    }
}

/// Checks the bytes as a store checks a transactional checksum on arrival.
fn check_arrival(checksum: &Checksum, data: &[u8]) -> StoreResult<()> {
    if checksum.matches(data) {
        return Ok(());
    }
    let code = match checksum {
        Checksum::Crc64(_) => "Crc64Mismatch",
        Checksum::Md5(_) => "Md5Mismatch",
    };
    Err(StoreError::new(
        ErrorClass::Transient,
        Some(400),
        format!("{code}: the bytes do not match their checksum"),
    ))
}

/// A local file's version token: modification time, size, status-change time and inode. The
/// ctime moves on every write and cannot be set back (`cp -p` and `rsync -t` restore the mtime
/// only), and a file replaced by a rename has another inode — so a same-size rewrite between a
/// crash and a resume is never taken for the version whose blocks are staged.
fn version_of(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let ctime = i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec());
    format!("\"{nanos:x}-{:x}-{ctime:x}-{:x}\"", meta.len(), meta.ino())
}

/// What a listing says of the file with metadata `meta`, as `key`.
fn object_info(key: String, meta: &fs::Metadata) -> ObjectInfo {
    ObjectInfo {
        key,
        size: meta.len(),
        etag: version_of(meta),
        modified: modified_secs(meta),
    }
}

fn modified_secs(meta: &fs::Metadata) -> Option<i64> {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_secs()).ok())
}

#[async_trait]
impl ObjectSource for LocalStore {
    fn blocking_io(&self) -> bool {
        true
    }

    async fn list(&self, prefix: &str, single: bool) -> StoreResult<Vec<ObjectInfo>> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let start = root.join(prefix.trim_end_matches('/'));
            let meta = fs::metadata(&start).map_err(|e| io_error("cannot read", &start, e))?;
            let mut out = Vec::new();
            if single || meta.is_file() {
                out.push(object_info(prefix, &meta));
            } else {
                let mut walk = Walk::new(&root, &start, None)?;
                while let Some(file) = walk.next_file()? {
                    out.push(file);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Listed> {
        let root = self.root.clone();
        let (prefix, after) = (prefix.to_string(), after.map(str::to_string));
        // The walk the previous page stopped, when this page goes on from it.
        let kept = self
            .walk
            .lock()
            .ok()
            .and_then(|mut kept| kept.take())
            .filter(|(p, walk)| *p == prefix && walk.position() == after.as_deref());
        let (listed, kept) = blocking(move || {
            let start = root.join(prefix.trim_end_matches('/'));
            let meta = fs::metadata(&start).map_err(|e| io_error("cannot read", &start, e))?;
            if meta.is_file() {
                let objects = if after.as_deref().is_none_or(|a| prefix.as_str() > a) {
                    vec![object_info(prefix, &meta)]
                } else {
                    Vec::new()
                };
                return Ok((
                    Listed {
                        objects,
                        next: None,
                    },
                    None,
                ));
            }
            let mut walk = match kept {
                Some((_, walk)) => walk,
                None => Walk::new(&root, &start, after)?,
            };
            let mut objects = Vec::new();
            while objects.len() < limit.max(1) {
                let Some(file) = walk.next_file()? else {
                    // The walk is over: nothing to keep, no next page.
                    return Ok((
                        Listed {
                            objects,
                            next: None,
                        },
                        None,
                    ));
                };
                objects.push(file);
            }
            let next = objects.last().map(|o| o.key.clone());
            Ok((Listed { objects, next }, Some((prefix, walk))))
        })
        .await?;
        if let Ok(mut slot) = self.walk.lock() {
            *slot = kept;
        }
        Ok(listed)
    }

    async fn list_page(&self, prefix: &str, _token: Option<String>) -> StoreResult<Page> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            let dir = root.join(prefix.trim_end_matches('/'));
            let entries = fs::read_dir(&dir).map_err(|e| io_error("cannot list", &dir, e))?;
            let mut page = Page::default();
            for entry in entries {
                let entry = entry.map_err(|e| io_error("cannot list", &dir, e))?;
                if passed_over(&entry.file_name()) {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let meta = fs::metadata(&path).map_err(|e| io_error("cannot read", &path, e))?;
                if meta.is_dir() {
                    page.dirs.push(format!("{prefix}{name}/"));
                } else if meta.is_file() {
                    page.objects
                        .push(object_info(format!("{prefix}{name}"), &meta));
                }
            }
            page.dirs.sort();
            page.objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(page)
        })
        .await
    }

    async fn read_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        buffer: BytesMut,
    ) -> StoreResult<Chunk> {
        let path = self.object_path(key)?;
        let (key, etag, store) = (key.to_string(), etag.to_string(), self.clone());
        blocking(move || {
            let file = fs::File::open(&path).map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => StoreError::source_changed(&key),
                _ => io_error("cannot open", &path, e),
            })?;
            let check = |file: &fs::File| -> StoreResult<fs::Metadata> {
                let meta = file
                    .metadata()
                    .map_err(|e| io_error("cannot stat", &path, e))?;
                if version_of(&meta) == etag {
                    Ok(meta)
                } else {
                    Err(StoreError::source_changed(&key))
                }
            };
            check(&file)?;
            let len = usize::try_from(range.end - range.start)
                .map_err(|_| StoreError::new(ErrorClass::Invalid, None, "range too large"))?;
            let mut buf = buffer;
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, range.start)
                .map_err(|e| io_error("cannot read", &path, e))?;
            let stat = check(&file)?;
            Ok(Chunk {
                data: buf.freeze(),
                meta: store.source_meta(&key, &file, FileStat::of(&stat)),
                source_crc64: None,
                version_id: None,
            })
        })
        .await
    }
}

/// Moves a finished temporary file into place, atomically: replacing what is there, or, when
/// `create_only`, failing with `AlreadyExists` if anything is (a hard link never replaces).
/// A filesystem without hard links (vfat, some network mounts) gets a check then a rename,
/// which a writer appearing in between can still race.
fn place(tmp: &Path, target: &Path, create_only: bool) -> io::Result<()> {
    if !create_only {
        return fs::rename(tmp, target);
    }
    match fs::hard_link(tmp, target) {
        Ok(()) => {
            // The object is in place; a temporary name left behind costs only space.
            let _ = fs::remove_file(tmp);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) if target.exists() => Err(io::Error::from(io::ErrorKind::AlreadyExists)),
        Err(_) => fs::rename(tmp, target),
    }
}

/// The prefix of the name an unnamed file gets for the moment it takes to replace an object
/// (listings pass such names over; a crash in that moment can leave one behind).
pub(crate) const REPLACING_PREFIX: &str = ".blobway-replacing-";

/// Whether a listing passes over the entry `name`: blobway's staging folder, or a file caught
/// in the moment of replacing an object.
fn passed_over(name: &std::ffi::OsStr) -> bool {
    name == STAGING_DIR
        || name
            .as_encoded_bytes()
            .starts_with(REPLACING_PREFIX.as_bytes())
}

/// Set when a filesystem gave an unnamed file but refused to link it: from then on, files
/// are written the named way.
static UNNAMED_REFUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A new file without a name in `folder` (`O_TMPFILE`), written then linked into place: no
/// shared staging folder whose lock every writer waits for, no rename across folders, and
/// nothing left behind by a crash (but, in the moment of a replace, a passing name listings
/// skip). None where the filesystem (or a missing `/proc`, through which it is linked) does
/// not offer it; `NotFound` when the folder is not there yet.
fn unnamed_file(folder: &Path) -> io::Result<Option<fs::File>> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if !*PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir())
            || UNNAMED_REFUSED.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(None);
        }
        match fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_TMPFILE)
            .mode(0o666)
            .open(folder)
        {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(e),
            // Not offered here (or refused: the named way says why, in its own words).
            Err(_) => Ok(None),
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = folder;
        Ok(None)
    }
}

/// Gives the unnamed `file` the name `target` in `folder`: linked there when nothing is (or
/// `AlreadyExists` when `create_only`), else synced, linked under a passing name and renamed
/// over what is there, atomically. A link refused for another reason is a passing failure
/// (the write is tried again the named way).
fn place_unnamed(
    file: &fs::File,
    folder: &Path,
    target: &Path,
    create_only: bool,
) -> io::Result<()> {
    use nix::fcntl::{AT_FDCWD, AtFlags};
    use std::os::fd::AsRawFd;
    let link = |to: &Path| {
        let from = format!("/proc/self/fd/{}", file.as_raw_fd());
        nix::unistd::linkat(
            AT_FDCWD,
            from.as_str(),
            AT_FDCWD,
            to,
            AtFlags::AT_SYMLINK_FOLLOW,
        )
        .map_err(io::Error::from)
    };
    match link(target) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && create_only => Err(e),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            file.sync_all()?;
            let passing = folder.join(format!(
                "{REPLACING_PREFIX}{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            link(&passing)?;
            fs::rename(&passing, target).inspect_err(|_| {
                let _ = fs::remove_file(&passing);
            })
        }
        Err(e) => {
            UNNAMED_REFUSED.store(true, std::sync::atomic::Ordering::Relaxed);
            Err(io::Error::other(format!(
                "cannot link the new file into place ({e}); it is written again another way"
            )))
        }
        Ok(()) => Ok(()),
    }
}

/// Writes `parts` to `target` through a temporary file in `dir`, renamed into place: synced
/// before the rename when `now` or where the filesystem does not group syncs; otherwise its
/// sync is [`durable::defer`]red to the state's next commit.
fn write_atomically(dir: &Path, target: &Path, parts: &[&[u8]], now: bool) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        for part in parts {
            file.write_all(part)?;
        }
        let dev = file.metadata()?.dev();
        let grouped = !now && durable::grouped(dev, dir);
        if !grouped {
            file.sync_all()?;
        }
        fs::rename(&tmp, target)?;
        if grouped {
            durable::defer(dev, None);
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[async_trait]
impl ObjectSink for LocalStore {
    fn naming(&self) -> super::rules::Naming {
        super::rules::Naming::Local {
            case_insensitive: self.case_insensitive(),
        }
    }

    fn blocking_io(&self) -> bool {
        true
    }

    /// A put or commit checks that the name leads to the very file it wrote.
    fn confirms_writes(&self) -> bool {
        true
    }

    /// Azure's, so a local run plans its objects as the main route does; but its blocks are
    /// staged on this machine's disk, so an object stays on one worker.
    fn limits(&self) -> SinkLimits {
        SinkLimits {
            shared_blocks: false,
            ..super::azure::LIMITS
        }
    }

    async fn prepare(&self) -> StoreResult<()> {
        let staging = self.root.join(STAGING_DIR);
        blocking(move || {
            fs::create_dir_all(&staging).map_err(|e| io_error("cannot create", &staging, e))?;
            let probe = staging.join(format!(".probe-{}", std::process::id()));
            fs::write(&probe, b"ok").map_err(|e| io_error("cannot write to", &staging, e))?;
            let _ = fs::remove_file(&probe);
            Ok(())
        })
        .await
    }

    async fn put_block(
        &self,
        upload: Upload<'_>,
        block: BlockRef<'_>,
        data: Bytes,
    ) -> StoreResult<()> {
        check_arrival(&block.checksum, &data)?;
        let dir = self.staging_for(upload.key);
        let target = dir.join(block.id);
        blocking(move || {
            fs::create_dir_all(&dir).map_err(|e| io_error("cannot create", &dir, e))?;
            write_atomically(&dir, &target, &[&data], false)
                .map_err(|e| io_error("cannot stage", &target, e))
        })
        .await
    }

    async fn missing_blocks(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
    ) -> StoreResult<Vec<u32>> {
        let dir = self.staging_for(upload.key);
        let blocks = blocks.to_vec();
        blocking(move || {
            Ok(blocks
                .iter()
                .filter(|b| fs::metadata(dir.join(&b.id)).map(|m| m.len()).ok() != Some(b.size))
                .map(|b| b.index)
                .collect())
        })
        .await
    }

    async fn commit(
        &self,
        upload: Upload<'_>,
        blocks: &[PlannedBlock],
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let target = self.object_path(upload.key)?;
        let dir = self.staging_for(upload.key);
        let ids: Vec<String> = blocks.iter().map(|b| b.id.clone()).collect();
        let (store, key, meta) = (self.clone(), upload.key.to_string(), meta.clone());
        // Durable before the staged blocks go.
        let how = Placing {
            create_only: upload.create_only,
            now: true,
            expected: blocks.iter().map(|b| b.size).sum(),
        };
        blocking(move || {
            store
                .publish(&dir, &target, &key, &meta, how, |out| {
                    let mut size = 0;
                    for id in &ids {
                        let mut block = fs::File::open(dir.join(id))?;
                        size += io::copy(&mut block, out)?;
                    }
                    Ok(size)
                })
                .map_err(|e| io_error("cannot commit", &target, e))?;
            let _ = fs::remove_dir_all(&dir);
            Ok(())
        })
        .await
    }

    async fn put_whole(
        &self,
        upload: Upload<'_>,
        data: Bytes,
        checksum: Checksum,
        meta: &ObjectMeta,
    ) -> StoreResult<()> {
        let key = upload.key;
        check_arrival(&checksum, &data)?;
        let target = self.object_path(key)?;
        let staging = self.root.join(STAGING_DIR);
        let (store, key, meta) = (self.clone(), key.to_string(), meta.clone());
        let how = Placing {
            create_only: upload.create_only,
            now: false,
            expected: data.len() as u64,
        };
        blocking(move || {
            store
                .publish(&staging, &target, &key, &meta, how, |out| {
                    out.write_all(&data)?;
                    Ok(data.len() as u64)
                })
                .map_err(|e| io_error("cannot write", &target, e))
        })
        .await
    }

    async fn head(&self, key: &str) -> StoreResult<Option<DestObject>> {
        let (store, key) = (self.clone(), key.to_string());
        blocking(move || store.describe(&key)).await
    }

    async fn list_existing(&self, prefix: &str) -> StoreResult<BTreeMap<String, DestObject>> {
        let listed = match ObjectSource::list(self, prefix, false).await {
            Ok(listed) => listed,
            Err(e) if e.class == ErrorClass::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let store = self.clone();
        blocking(move || {
            let mut out = BTreeMap::new();
            for object in listed {
                if let Some(found) = store.describe(&object.key)? {
                    out.insert(object.key, found);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_file_without_stored_metadata_gets_a_content_type_from_its_extension() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.json"), b"{}").expect("write");
        std::fs::write(dir.path().join("b.unknownext"), b"x").expect("write");
        let store = LocalStore::new(dir.path());
        for (key, expected) in [("a.json", Some("application/json")), ("b.unknownext", None)] {
            let info = store.list(key, true).await.expect("list")[0].clone();
            let chunk = store
                .read_range(key, &info.etag, 0..info.size, BytesMut::new())
                .await
                .expect("read");
            assert_eq!(chunk.meta.content_type.as_deref(), expected, "{key}");
        }
    }

    #[tokio::test]
    async fn committed_metadata_travels_in_the_file_and_older_sidecars_are_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let meta = ObjectMeta {
            content_type: Some("text/plain".into()),
            pairs: BTreeMap::from([("blobway_source_etag".into(), "\"v1\"".into())]),
            ..ObjectMeta::default()
        };
        let data = Bytes::from_static(b"hello");
        let checksum = Checksum::of(super::super::ChecksumKind::Crc64, &data);
        let upload = Upload {
            key: "a/b.txt",
            ..Upload::default()
        };
        store
            .put_whole(upload, data, checksum, &meta)
            .await
            .expect("put");
        let path = dir.path().join("a/b.txt");
        let in_file = xattr::get(&path, META_XATTR).expect("xattr");
        if in_file.is_some() {
            assert!(
                !store.meta_path("a/b.txt").exists(),
                "no sidecar when the file carries it"
            );
        }
        let found = store.head("a/b.txt").await.expect("head").expect("there");
        assert_eq!(found.meta, meta.pairs);

        // Rewritten in place by another tool: the attribute no longer describes it.
        std::fs::write(&path, b"other bytes").expect("rewrite");
        let found = store.head("a/b.txt").await.expect("head").expect("there");
        assert!(found.meta.is_empty(), "{:?}", found.meta);

        // Edited in place at the same size (same inode, same attribute): not vouched for.
        let copy = |key: &'static str| {
            let store = store.clone();
            let meta = meta.clone();
            async move {
                let data = Bytes::from_static(b"12345");
                let checksum = Checksum::of(super::super::ChecksumKind::Crc64, &data);
                let upload = Upload {
                    key,
                    ..Upload::default()
                };
                store
                    .put_whole(upload, data, checksum, &meta)
                    .await
                    .expect("put");
            }
        };
        copy("same.txt").await;
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("same.txt"))
            .and_then(|mut f| f.write_all(b"54321"))
            .expect("edit");
        let found = store.head("same.txt").await.expect("head").expect("there");
        assert!(found.meta.is_empty(), "{:?}", found.meta);

        // Copied by an older blobway: a sidecar naming the file's inode is still read, and
        // removed once the object is copied again (it must not vouch for a later file).
        let old = dir.path().join("old.txt");
        std::fs::write(&old, b"old").expect("write");
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&old).expect("stat"));
        let described = serde_json::to_vec(&Sidecar {
            size: 3,
            ino: Some(ino),
            mtime_ns: None,
            meta: meta.clone(),
        })
        .expect("json");
        store.write_meta("old.txt", &described).expect("sidecar");
        let found = store.head("old.txt").await.expect("head").expect("there");
        assert_eq!(found.meta, meta.pairs);
        copy("old.txt").await;
        if xattr::get(&old, META_XATTR).expect("xattr").is_some() {
            assert!(
                !store.meta_path("old.txt").exists(),
                "the old sidecar is gone"
            );
        }
    }

    #[tokio::test]
    async fn a_same_size_rewrite_that_keeps_the_mtime_is_another_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"old bytes").expect("write");
        let mtime = std::fs::metadata(&path)
            .expect("stat")
            .modified()
            .expect("mtime");
        let store = LocalStore::new(dir.path());
        let before = store.list("a.bin", true).await.expect("list")[0]
            .etag
            .clone();
        // What `cp -p` or `rsync -t` do: new bytes of the same length, the old mtime kept.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, b"new bytes").expect("rewrite");
        std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(mtime)
            .expect("keep the mtime");
        let after = store.list("a.bin", true).await.expect("list")[0]
            .etag
            .clone();
        assert_ne!(before, after, "the rewrite must be another version");
        let read = store
            .read_range("a.bin", &before, 0..9, BytesMut::new())
            .await
            .expect_err("pinned to the old version");
        assert_eq!(read.class, ErrorClass::SourceChanged);
    }

    fn crc(data: &[u8]) -> Checksum {
        Checksum::of(crate::store::ChecksumKind::Crc64, data)
    }

    #[tokio::test]
    async fn a_put_replaces_in_place_leaves_no_passing_name_and_create_only_refuses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let put = |key: &'static str, data: &'static [u8], create_only: bool| {
            let store = store.clone();
            async move {
                let upload = Upload {
                    key,
                    session: None,
                    create_only,
                    tier: None,
                    storage_class: None,
                };
                let data = Bytes::from_static(data);
                store
                    .put_whole(upload, data.clone(), crc(&data), &ObjectMeta::default())
                    .await
            }
        };
        // Into a folder not there yet, then over what is there.
        put("deep/er/a.txt", b"first", false).await.expect("put");
        put("deep/er/a.txt", b"second!", false)
            .await
            .expect("replace");
        let folder = dir.path().join("deep/er");
        assert_eq!(fs::read(folder.join("a.txt")).expect("read"), b"second!");
        let names: Vec<_> = fs::read_dir(&folder)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("a.txt")],
            "nothing else"
        );
        let refused = put("deep/er/a.txt", b"third", true)
            .await
            .expect_err("refused");
        assert_eq!(refused.class, ErrorClass::Exists, "{refused}");
        assert_eq!(fs::read(folder.join("a.txt")).expect("read"), b"second!");
        put("deep/er/b.txt", b"new", true).await.expect("created");

        // A passing name a crash left behind is no object.
        fs::write(folder.join(format!("{REPLACING_PREFIX}1-2")), b"x").expect("leftover");
        let keys: Vec<String> = store
            .list("", false)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, vec!["deep/er/a.txt", "deep/er/b.txt"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn inline_work_reads_and_writes_on_its_own_blocking_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.txt"), b"hello").expect("write");
        let store = LocalStore::new(dir.path());
        let runtime = tokio::runtime::Handle::current();
        let (flagged, data, after) = tokio::task::spawn_blocking(move || {
            let (flagged, data) = crate::store::blocking::inline(|| {
                let info = runtime.block_on(store.list("a.txt", true)).expect("list")[0].clone();
                let chunk = runtime
                    .block_on(store.read_range("a.txt", &info.etag, 0..5, BytesMut::new()))
                    .expect("read");
                let upload = Upload {
                    key: "b.txt",
                    session: None,
                    create_only: true,
                    tier: None,
                    storage_class: None,
                };
                runtime
                    .block_on(store.put_whole(
                        upload,
                        chunk.data.clone(),
                        crc(&chunk.data),
                        &ObjectMeta::default(),
                    ))
                    .expect("put");
                (crate::store::blocking::inline_here(), chunk.data)
            });
            (flagged, data, crate::store::blocking::inline_here())
        })
        .await
        .expect("joined");
        assert!(flagged, "inside: calls made on this thread");
        assert!(!after, "the thread is given back as it was");
        assert_eq!(&data[..], b"hello");
        assert_eq!(
            fs::read(dir.path().join("b.txt")).expect("copied"),
            b"hello"
        );
    }

    #[tokio::test]
    async fn staged_blocks_are_invisible_until_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        store.prepare().await.expect("prepare");
        let upload = Upload {
            key: "out/x.txt",
            session: None,
            create_only: false,
            tier: None,
            storage_class: None,
        };
        let planned = [
            PlannedBlock {
                index: 0,
                id: "b-0".into(),
                size: 6,
            },
            PlannedBlock {
                index: 1,
                id: "b-1".into(),
                size: 5,
            },
        ];
        assert_eq!(
            store
                .missing_blocks(upload, &planned)
                .await
                .expect("missing"),
            vec![0, 1]
        );
        let mut offset = 0;
        for (block, data) in planned.iter().zip([&b"hello "[..], b"world"]) {
            let block_ref = BlockRef {
                index: block.index,
                id: &block.id,
                checksum: crc(data),
                offset,
                last: block.index == 1,
            };
            offset += data.len() as u64;
            store
                .put_block(upload, block_ref, Bytes::copy_from_slice(data))
                .await
                .expect("stage");
        }
        assert_eq!(store.head("out/x.txt").await.expect("head"), None);
        assert_eq!(
            store
                .missing_blocks(upload, &planned)
                .await
                .expect("missing"),
            Vec::<u32>::new()
        );
        let mut wrong_size = planned.clone();
        wrong_size[1].size = 6;
        assert_eq!(
            store
                .missing_blocks(upload, &wrong_size)
                .await
                .expect("missing"),
            vec![1],
            "a block staged with another size does not count"
        );
        let mut meta = ObjectMeta {
            content_type: Some("text/plain".into()),
            ..ObjectMeta::default()
        };
        meta.pairs
            .insert("blobway_source_etag".into(), "\"v1\"".into());
        store.commit(upload, &planned, &meta).await.expect("commit");
        let found = store
            .head("out/x.txt")
            .await
            .expect("head")
            .expect("exists");
        assert_eq!((found.size, found.meta), (11, meta.pairs.clone()));
        let listed = store.list_existing("out/").await.expect("list");
        assert_eq!(listed["out/x.txt"].meta, meta.pairs);
        assert_eq!(
            fs::read(dir.path().join("out/x.txt")).expect("read"),
            b"hello world"
        );
        assert_eq!(
            store
                .missing_blocks(upload, &planned)
                .await
                .expect("missing"),
            vec![0, 1],
            "nothing stays staged after the commit"
        );
        let etag = store.list("out/x.txt", true).await.expect("stat")[0]
            .etag
            .clone();
        let read = store
            .read_range("out/x.txt", &etag, 0..0, BytesMut::new())
            .await
            .expect("metadata");
        assert_eq!(
            read.meta.content_type.as_deref(),
            Some("text/plain"),
            "the content type travels with the object"
        );
    }

    #[tokio::test]
    async fn rejects_a_block_whose_checksum_does_not_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStore::new(dir.path());
        let block = BlockRef {
            index: 0,
            id: "b-0",
            checksum: crc(b"other"),
            offset: 0,
            last: false,
        };
        let upload = Upload {
            key: "k",
            ..Default::default()
        };
        let err = store
            .put_block(upload, block, Bytes::from_static(b"data"))
            .await
            .expect_err("mismatch");
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(err.message.contains("Crc64Mismatch"));
    }

    #[tokio::test]
    async fn a_rewritten_file_reads_as_source_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("a.bin"), b"0123456789").expect("write");
        let store = LocalStore::new(dir.path());
        let listed = store.list("", false).await.expect("list");
        assert_eq!(listed.len(), 1);
        let etag = listed[0].etag.clone();
        let got = store
            .read_range("a.bin", &etag, 2..5, BytesMut::new())
            .await
            .expect("read");
        assert_eq!(&got.data[..], b"234");
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(dir.path().join("a.bin"), b"01234567890").expect("rewrite");
        let err = store
            .read_range("a.bin", &etag, 2..5, BytesMut::new())
            .await
            .expect_err("changed");
        assert_eq!(err.class, ErrorClass::SourceChanged);
    }

    #[test]
    fn refuses_keys_that_escape_the_root() {
        let store = LocalStore::new("/tmp/root");
        for key in ["../etc/passwd", "/abs", "a/../../b", ""] {
            assert_eq!(
                store.object_path(key).expect_err(key).class,
                ErrorClass::Invalid
            );
        }
    }
}
