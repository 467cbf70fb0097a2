//! Grouped durability of local destinations. On a filesystem whose `syncfs` is known to write
//! and report everything (ext4 with its default data options, XFS, btrfs, ZFS, tmpfs, on Linux
//! 5.8 or later), a local write (an object linked into place) does not sync itself: it is
//! counted against its filesystem, and [`sync_deferred`] makes every write counted so far durable with one
//! `syncfs` per filesystem. So is a file blobway finds there and takes as its own (a read-back,
//! an identical object at planning): it may be another run's write not yet on disk. The state
//! writer (and the planner) call [`sync_deferred`] before each commit, so an object is
//! recorded done only after its bytes, its metadata and its name are on disk: one sync per
//! batch of records instead of two per object. A crash before that sync costs the objects
//! written since the last commit: recorded as not done, they are checked and copied again by
//! a resume. A sync that fails takes the metadata off the files it covered (they no longer
//! pass as copied, so a resume copies them again) and is reported.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// One filesystem written to: a folder on it to sync through, how many writes were counted
/// and synced, and the files written since the last sync.
struct Filesystem {
    folder: Arc<fs::File>,
    shown: String,
    written: u64,
    synced: u64,
    unsynced: Vec<PathBuf>,
}

/// What the grouped durability of this process knows: which filesystems group their writes,
/// what waits on each, and whether a sync failed. One per process ([`LEDGER`]); tests make
/// their own.
struct Ledger {
    /// Held across a whole sync: one at a time, so a caller never takes a `syncfs` that
    /// succeeds only because another one already consumed the error.
    syncing: Mutex<()>,
    /// Set by the first failed sync, and returned by every later one: Linux reports a
    /// writeback error once per open file, and what it covered is not on disk.
    failed: Mutex<Option<String>>,
    /// The filesystems with grouped durability, by device (None: not grouped, writes sync
    /// themselves).
    filesystems: Mutex<Option<HashMap<u64, Option<Filesystem>>>>,
}

static LEDGER: Ledger = Ledger::new();

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether writes on device `dev` (of which `folder` is a folder) are grouped: the filesystem
/// is one whose `syncfs` is trusted, and a folder on it could be opened to sync through.
/// Decided once per device. When false, the caller syncs each write itself.
pub(crate) fn grouped(dev: u64, folder: &Path) -> bool {
    LEDGER.grouped(dev, folder, trusted)
}

/// Counts a finished write (or a file found and taken as blobway's) on a [`grouped`] device
/// as waiting for the next [`sync_deferred`]: a sync that starts later covers it. `written`
/// names a file this process wrote (its metadata is taken off should the sync fail).
pub(crate) fn defer(dev: u64, written: Option<&Path>) {
    LEDGER.defer(dev, written);
}

/// Makes every write [`defer`]red so far durable: one `syncfs` per filesystem with writes
/// since its last sync. Safe to call from several threads (they take turns); a write counted
/// while a sync runs waits for the next one. On failure every file this process wrote and did
/// not see synced loses its metadata attribute, so no later run takes it as copied, and this
/// and every later call fail with the error, which names the folder and what the disk said.
pub fn sync_deferred() -> Result<(), String> {
    LEDGER.sync(sync_filesystem)
}

impl Ledger {
    const fn new() -> Self {
        Self {
            syncing: Mutex::new(()),
            failed: Mutex::new(None),
            filesystems: Mutex::new(None),
        }
    }

    fn grouped(&self, dev: u64, folder: &Path, trusted: impl FnOnce(&fs::File) -> bool) -> bool {
        let mut guard = locked(&self.filesystems);
        let known = guard.get_or_insert_with(HashMap::new);
        known
            .entry(dev)
            .or_insert_with(|| {
                let file = fs::File::open(folder).ok()?;
                trusted(&file).then(|| Filesystem {
                    folder: Arc::new(file),
                    shown: folder.display().to_string(),
                    written: 0,
                    synced: 0,
                    unsynced: Vec::new(),
                })
            })
            .is_some()
    }

    fn defer(&self, dev: u64, written: Option<&Path>) {
        let mut guard = locked(&self.filesystems);
        if let Some(Some(filesystem)) = guard.as_mut().and_then(|known| known.get_mut(&dev)) {
            filesystem.written += 1;
            if let Some(path) = written {
                filesystem.unsynced.push(path.to_path_buf());
            }
        }
    }

    fn sync(
        &self,
        mut sync_filesystem: impl FnMut(&fs::File) -> io::Result<()>,
    ) -> Result<(), String> {
        let _turn = locked(&self.syncing);
        if let Some(failed) = locked(&self.failed).clone() {
            return Err(failed);
        }
        /// A filesystem to sync: as its writes stood when the sync began.
        struct Due {
            dev: u64,
            folder: Arc<fs::File>,
            shown: String,
            written: u64,
            files: Vec<PathBuf>,
        }
        let due: Vec<Due> = locked(&self.filesystems)
            .iter_mut()
            .flatten()
            .filter_map(|(dev, f)| Some((*dev, f.as_mut()?)))
            .filter(|(_, f)| f.written > f.synced)
            .map(|(dev, f)| Due {
                dev,
                folder: f.folder.clone(),
                shown: f.shown.clone(),
                written: f.written,
                files: std::mem::take(&mut f.unsynced),
            })
            .collect();
        for Due {
            dev,
            folder,
            shown,
            written,
            files,
        } in due
        {
            if let Err(e) = sync_filesystem(&folder) {
                // Whatever was written and not seen synced, here or on another filesystem.
                let mut stripped = files;
                for filesystem in locked(&self.filesystems)
                    .iter_mut()
                    .flatten()
                    .flat_map(|(_, f)| f)
                {
                    stripped.append(&mut filesystem.unsynced);
                }
                for file in &stripped {
                    let _ = xattr::remove(file, super::META_XATTR);
                }
                let failed = format!(
                    "the local destination under {shown} could not be synced to disk ({e}); the \
                     {} objects written since the last record no longer pass as copied",
                    stripped.len()
                );
                *locked(&self.failed) = Some(failed.clone());
                return Err(failed);
            }
            if let Some(Some(filesystem)) = locked(&self.filesystems)
                .as_mut()
                .and_then(|known| known.get_mut(&dev))
            {
                filesystem.synced = filesystem.synced.max(written);
            }
        }
        Ok(())
    }

    /// Writes counted on `dev` and not yet synced.
    #[cfg(test)]
    fn pending_on(&self, dev: u64) -> u64 {
        locked(&self.filesystems)
            .as_ref()
            .and_then(|known| known.get(&dev))
            .and_then(Option::as_ref)
            .map_or(0, |f| f.written - f.synced)
    }
}

/// Whether `syncfs` on the filesystem of `file` writes everything and reports a failure, and
/// a crash before it never leaves a file at its full size without its bytes: local
/// filesystems that write a file's size only once its data is written (ext4 with delayed
/// allocation and ordered data, XFS, btrfs, ZFS, tmpfs), on Linux 5.8 or later (before,
/// `syncfs` did not report writeback errors; FUSE and network filesystems may not pass it on
/// at all).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn trusted(file: &fs::File) -> bool {
    use nix::sys::statfs::FsType;
    use nix::sys::statfs::{
        BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, fstatfs,
    };
    const ZFS_SUPER_MAGIC: FsType = FsType(0x2fc1_2fc1);
    let kernel = nix::sys::utsname::uname()
        .ok()
        .and_then(|name| kernel_version(&name.release().to_string_lossy()));
    if kernel.is_none_or(|version| version < (5, 8)) {
        return false;
    }
    let Ok(kind) = fstatfs(file).map(|stat| stat.filesystem_type()) else {
        return false;
    };
    if kind == EXT4_SUPER_MAGIC {
        return file
            .metadata()
            .is_ok_and(|meta| ext4_orders_data(std::os::unix::fs::MetadataExt::dev(&meta)));
    }
    [
        XFS_SUPER_MAGIC,
        BTRFS_SUPER_MAGIC,
        TMPFS_MAGIC,
        ZFS_SUPER_MAGIC,
    ]
    .contains(&kind)
}

/// Whether the ext4 filesystem of device `dev` is mounted with its defaults for data: not
/// `data=writeback` nor `nodelalloc`, under which a crash can leave a file at its size with
/// blocks never written (read from `/proc/self/mountinfo`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn ext4_orders_data(dev: u64) -> bool {
    let id = format!(
        "{}:{}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|mounts| mounted_ordering_data(&mounts, &id))
}

/// The major and minor version of a kernel release (`6.8.0-45-generic` → 6.8).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Whether `mountinfo` (as in `/proc/self/mountinfo`) mounts the device `id` (`major:minor`),
/// and never with `data=writeback` or `nodelalloc` in its mount or superblock options.
fn mounted_ordering_data(mountinfo: &str, id: &str) -> bool {
    let options: Vec<&str> = mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(id))
        .flat_map(|line| {
            // Mount options (field 6), then after " - ": type, source, super options.
            let mount = line.split(' ').nth(5).unwrap_or("");
            let sup = line
                .split(" - ")
                .nth(1)
                .and_then(|rest| rest.split(' ').nth(2));
            mount.split(',').chain(sup.unwrap_or("").split(','))
        })
        .collect();
    !options.is_empty()
        && !options
            .iter()
            .any(|o| *o == "data=writeback" || *o == "nodelalloc")
}

/// Elsewhere nothing is grouped: each write syncs itself.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn trusted(_file: &fs::File) -> bool {
    false
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn sync_filesystem(folder: &fs::File) -> io::Result<()> {
    nix::unistd::syncfs(folder).map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn sync_filesystem(_folder: &fs::File) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn always(_: &fs::File) -> bool {
        true
    }

    #[test]
    fn deferred_writes_wait_for_the_next_sync_and_no_longer() {
        let ledger = Ledger::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = 7;
        assert!(ledger.grouped(dev, dir.path(), always));
        ledger.defer(dev, None);
        ledger.defer(dev, None);
        assert_eq!(ledger.pending_on(dev), 2);
        ledger.sync(|_| Ok(())).expect("sync");
        assert_eq!(ledger.pending_on(dev), 0);
        ledger.defer(dev, None);
        assert_eq!(
            ledger.pending_on(dev),
            1,
            "a later write waits for the next sync"
        );
        ledger.sync(|_| Ok(())).expect("sync");
        assert_eq!(ledger.pending_on(dev), 0);
    }

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn the_real_sync_succeeds_on_the_temporary_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A device number no real write in this process uses.
        let dev = u64::MAX - 7;
        if !grouped(dev, dir.path()) {
            // The temporary folder's filesystem is not one whose sync is trusted.
            return;
        }
        defer(dev, None);
        assert_eq!(LEDGER.pending_on(dev), 1);
        sync_deferred().expect("sync");
        assert_eq!(LEDGER.pending_on(dev), 0);
    }

    #[test]
    fn a_folder_that_cannot_be_opened_or_is_not_trusted_is_not_grouped() {
        let ledger = Ledger::new();
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(!ledger.grouped(1, &dir.path().join("gone"), always));
        assert!(!ledger.grouped(2, dir.path(), |_| false));
        ledger.defer(1, None);
        ledger.defer(2, None);
        assert_eq!(ledger.pending_on(1) + ledger.pending_on(2), 0);
        let mut syncs = 0;
        ledger
            .sync(|_| {
                syncs += 1;
                Ok(())
            })
            .expect("nothing to sync");
        assert_eq!(syncs, 0, "nothing grouped, nothing synced");
    }

    #[test]
    fn a_failed_sync_strips_the_unsynced_files_and_every_later_sync_fails() {
        let ledger = Ledger::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let synced = dir.path().join("synced");
        let unsynced = dir.path().join("unsynced");
        for file in [&synced, &unsynced] {
            fs::write(file, b"x").expect("write");
            if xattr::set(file, super::super::META_XATTR, b"{}").is_err() {
                // No extended attributes on this filesystem: nothing to strip.
                return;
            }
        }
        assert!(ledger.grouped(3, dir.path(), always));
        ledger.defer(3, Some(&synced));
        ledger.sync(|_| Ok(())).expect("first sync");
        ledger.defer(3, Some(&unsynced));
        let error = ledger
            .sync(|_| Err(io::Error::from_raw_os_error(5)))
            .expect_err("the disk failed");
        assert!(error.contains(&dir.path().display().to_string()), "{error}");
        assert!(error.contains("1 objects"), "{error}");
        let has_meta = |file: &Path| {
            xattr::get(file, super::super::META_XATTR)
                .expect("xattr")
                .is_some()
        };
        assert!(has_meta(&synced), "a synced file keeps its metadata");
        assert!(
            !has_meta(&unsynced),
            "an unsynced file no longer passes as copied"
        );
        let again = ledger.sync(|_| Ok(())).expect_err("sticky");
        assert_eq!(again, error);
    }

    #[test]
    fn kernel_releases_are_read_as_major_and_minor() {
        assert_eq!(kernel_version("6.8.0-45-generic"), Some((6, 8)));
        assert_eq!(kernel_version("5.10.0"), Some((5, 10)));
        assert_eq!(kernel_version("4.19-rc1"), Some((4, 19)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.7.0").is_some_and(|v| v < (5, 8)));
    }

    #[test]
    fn ext4_is_trusted_only_with_ordered_delayed_data() {
        let line = |options: &str, sup: &str| {
            format!("29 1 253:1 / / {options} shared:1 - ext4 /dev/vda1 {sup}\n")
        };
        let ordered = line("rw,relatime", "rw,errors=remount-ro");
        assert!(mounted_ordering_data(&ordered, "253:1"));
        assert!(!mounted_ordering_data(&ordered, "253:2"), "not mounted");
        let writeback = line("rw,relatime", "rw,data=writeback");
        assert!(!mounted_ordering_data(&writeback, "253:1"));
        let nodelalloc = line("rw,nodelalloc", "rw");
        assert!(!mounted_ordering_data(&nodelalloc, "253:1"));
        // Mounted twice, once with writeback: not trusted.
        let both = format!("{ordered}{writeback}");
        assert!(!mounted_ordering_data(&both, "253:1"));
    }
}
