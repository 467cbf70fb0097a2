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

/// Held across a whole [`sync_deferred`]: one sync at a time, so a caller never takes a
/// `syncfs` that succeeds only because another one already consumed the error.
static SYNCING: Mutex<()> = Mutex::new(());

/// Set by the first failed sync, and returned by every later one: Linux reports a writeback
/// error once per open file, and what it covered is not on disk.
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// The filesystems with grouped durability, by device (None: not grouped, writes sync
/// themselves).
static FILESYSTEMS: Mutex<Option<HashMap<u64, Option<Filesystem>>>> = Mutex::new(None);

fn filesystems() -> MutexGuard<'static, Option<HashMap<u64, Option<Filesystem>>>> {
    FILESYSTEMS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Whether writes on device `dev` (of which `folder` is a folder) are grouped: the filesystem
/// is one whose `syncfs` is trusted, and a folder on it could be opened to sync through.
/// Decided once per device. When false, the caller syncs each write itself.
pub(crate) fn grouped(dev: u64, folder: &Path) -> bool {
    let mut guard = filesystems();
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

/// Counts a finished write (or a file found and taken as blobway's) on a [`grouped`] device
/// as waiting for the next [`sync_deferred`]: a sync that starts later covers it. `written`
/// names a file this process wrote (its metadata is taken off should the sync fail).
pub(crate) fn defer(dev: u64, written: Option<&Path>) {
    if let Some(Some(filesystem)) = filesystems().as_mut().and_then(|known| known.get_mut(&dev)) {
        filesystem.written += 1;
        if let Some(path) = written {
            filesystem.unsynced.push(path.to_path_buf());
        }
    }
}

/// Makes every write [`defer`]red so far durable: one `syncfs` per filesystem with writes
/// since its last sync. Safe to call from several threads (they take turns); a write counted
/// while a sync runs waits for the next one. On failure every file this process wrote and did
/// not see synced loses its metadata attribute, so no later run takes it as copied, and this
/// and every later call fail with the error, which names the folder and what the disk said.
pub fn sync_deferred() -> Result<(), String> {
    let _turn = SYNCING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(failed) = FAILED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
    {
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
    let due: Vec<Due> = filesystems()
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
            for filesystem in filesystems().iter_mut().flatten().flat_map(|(_, f)| f) {
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
            *FAILED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(failed.clone());
            return Err(failed);
        }
        if let Some(Some(filesystem)) = filesystems().as_mut().and_then(|known| known.get_mut(&dev))
        {
            filesystem.synced = filesystem.synced.max(written);
        }
    }
    Ok(())
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
    let kernel = nix::sys::utsname::uname().ok().and_then(|name| {
        let release = name.release().to_string_lossy().into_owned();
        let mut parts = release.split(['.', '-']);
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some((major, minor))
    });
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
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let options: Vec<&str> = mounts
        .lines()
        .filter(|line| line.split(' ').nth(2) == Some(id.as_str()))
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

    /// Writes counted on `dev` and not yet synced.
    fn pending_on(dev: u64) -> u64 {
        filesystems()
            .as_ref()
            .and_then(|known| known.get(&dev))
            .and_then(Option::as_ref)
            .map_or(0, |f| f.written - f.synced)
    }

    #[test]
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn deferred_writes_wait_for_the_next_sync_and_no_longer() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A device number no real write in this process uses.
        let dev = u64::MAX - 7;
        if !grouped(dev, dir.path()) {
            // The temporary folder's filesystem is not one whose sync is trusted.
            return;
        }
        defer(dev, None);
        defer(dev, None);
        assert_eq!(pending_on(dev), 2);
        sync_deferred().expect("sync");
        assert_eq!(pending_on(dev), 0);
        defer(dev, None);
        assert_eq!(pending_on(dev), 1, "a later write waits for the next sync");
        sync_deferred().expect("sync");
        assert_eq!(pending_on(dev), 0);
    }

    #[test]
    fn a_folder_that_cannot_be_opened_is_not_grouped_and_nothing_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = u64::MAX - 8;
        assert!(!grouped(dev, &dir.path().join("gone")));
        defer(dev, None);
        assert_eq!(pending_on(dev), 0);
    }
}
