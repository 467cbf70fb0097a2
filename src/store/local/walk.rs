//! A local folder tree listed in key order — the bytes of each file's `/`-joined path under
//! the root, the order an object store lists in — a page at a time. Each folder's entries are
//! sorted with folders named `name/`, so the walk yields keys in order without sorting the
//! whole tree. A walk stopped after a page is kept by its store and goes on from where it
//! stopped; one asked to start elsewhere (a listing resumed after a stop) starts over and
//! passes, unread, every folder wholly before its start. A file or folder gone between its
//! folder's reading and its turn (copies run while the listing goes on) is passed over, and
//! a link back to a folder on the way down (a loop) is not followed.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{io_error, object_info, passed_over};
use crate::store::{ObjectInfo, StoreResult};

/// One entry of a folder: its name only (a folder of millions is held while it is walked).
struct Entry {
    name: OsString,
    folder: bool,
}

/// A folder on the way down: where it is, its key with `/`, and its entries still to visit,
/// in key order.
struct Folder {
    path: PathBuf,
    key: String,
    /// Its device and inode, to know a loop.
    id: (u64, u64),
    entries: VecDeque<Entry>,
}

/// The device and inode of the folder at `path`.
fn folder_id(path: &Path) -> io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// A walk under way.
pub(super) struct Walk {
    /// Keys up to this one are passed over; the last key given.
    after: Option<String>,
    /// The folders on the way down, the deepest last.
    folders: Vec<Folder>,
}

impl std::fmt::Debug for Walk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Walk").field("after", &self.after).finish()
    }
}

impl Walk {
    /// A walk of `start` (`root` or a folder under it) from the first key after `after`.
    pub(super) fn new(root: &Path, start: &Path, after: Option<String>) -> StoreResult<Self> {
        let mut walk = Walk {
            after,
            folders: Vec::new(),
        };
        let entries = walk
            .read(start)
            .map_err(|e| io_error("cannot list", start, e))?;
        let id = folder_id(start).map_err(|e| io_error("cannot read", start, e))?;
        let key = key_of(root, start);
        walk.folders.push(Folder {
            path: start.to_path_buf(),
            key: if key.is_empty() { key } else { key + "/" },
            id,
            entries,
        });
        Ok(walk)
    }

    /// The last key this walk gave (or the one it started after).
    pub(super) fn position(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// The next file, in key order.
    pub(super) fn next_file(&mut self) -> StoreResult<Option<ObjectInfo>> {
        while let Some(folder) = self.folders.last_mut() {
            let Some(entry) = folder.entries.pop_front() else {
                self.folders.pop();
                continue;
            };
            let path = folder.path.join(&entry.name);
            let mut key = format!("{}{}", folder.key, entry.name.to_string_lossy());
            if entry.folder {
                key.push('/');
            }
            if let Some(after) = self.after.as_deref() {
                let passed = if entry.folder {
                    after > key.as_str() && !after.starts_with(&key)
                } else {
                    key.as_str() <= after
                };
                if passed {
                    continue;
                }
            }
            if entry.folder {
                let id = match folder_id(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    id => id.map_err(|e| io_error("cannot read", &path, e))?,
                };
                if self.folders.iter().any(|f| f.id == id) {
                    tracing::warn!(path = %path.display(), "not following a link back to a folder it is in");
                    continue;
                }
                let entries = match self.read(&path) {
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    read => read.map_err(|e| io_error("cannot list", &path, e))?,
                };
                self.folders.push(Folder {
                    path,
                    key,
                    id,
                    entries,
                });
                continue;
            }
            let meta = match fs::metadata(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                meta => meta.map_err(|e| io_error("cannot read", &path, e))?,
            };
            if !meta.is_file() {
                continue;
            }
            self.after = Some(key.clone());
            return Ok(Some(object_info(key, &meta)));
        }
        Ok(None)
    }

    /// The entries of `dir` in key order (blobway's own names left out): by name, a
    /// folder's with `/` after it. A link is followed, as a file or a folder.
    fn read(&self, dir: &Path) -> io::Result<VecDeque<Entry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if passed_over(&name) {
                continue;
            }
            let kind = entry.file_type()?;
            let folder = if kind.is_symlink() {
                fs::metadata(entry.path()).is_ok_and(|m| m.is_dir())
            } else {
                kind.is_dir()
            };
            out.push(Entry { name, folder });
        }
        out.sort_by_cached_key(|e| {
            let mut key = e.name.to_string_lossy().into_owned();
            if e.folder {
                key.push('/');
            }
            key
        });
        Ok(out.into())
    }
}

/// The key of `path` under `root`: its parts joined by `/`.
fn key_of(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::STAGING_DIR;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for path in [
            "a",
            "a-b",
            "a.txt",
            "b/c/d",
            "b/c-",
            "b/c/e/f",
            "b0",
            "é/ü",
            "z/.hidden",
        ] {
            let path = dir.path().join("top").join(path);
            if path.exists() {
                continue;
            }
            fs::create_dir_all(path.parent().expect("parent")).expect("dir");
            if !path.is_dir() {
                fs::write(&path, b"x").unwrap_or(());
            }
        }
        fs::create_dir_all(dir.path().join("top").join(STAGING_DIR)).expect("staging");
        fs::write(dir.path().join("top").join(STAGING_DIR).join("tmp"), b"x").expect("tmp");
        fs::create_dir_all(dir.path().join("top/empty")).expect("empty");
        dir
    }

    fn all(walk: &mut Walk) -> Vec<String> {
        let mut keys = Vec::new();
        while let Some(file) = walk.next_file().expect("next") {
            keys.push(file.key);
        }
        keys
    }

    #[test]
    fn keys_come_in_byte_order_and_a_walk_started_after_any_key_gives_the_rest() {
        let dir = tree();
        let root = dir.path();
        let start = root.join("top");
        let keys = all(&mut Walk::new(root, &start, None).expect("walk"));
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "in byte order");
        assert_eq!(keys.len(), 9, "{keys:?}");
        assert!(keys.contains(&"top/a-b".to_string()) && keys.contains(&"top/é/ü".to_string()));
        assert!(!keys.iter().any(|k| k.contains(STAGING_DIR)));
        for (i, after) in keys.iter().enumerate() {
            let rest = all(&mut Walk::new(root, &start, Some(after.clone())).expect("walk"));
            assert_eq!(rest, keys[i + 1..], "after {after}");
        }
        // From a key no file has (a listing position from before files changed).
        let rest = all(&mut Walk::new(root, &start, Some("top/b/c/".into())).expect("walk"));
        assert_eq!(rest[0], "top/b/c/d");
        let rest = all(&mut Walk::new(root, &start, Some("top/b/c0".into())).expect("walk"));
        assert_eq!(rest[0], "top/b0");
    }

    #[test]
    fn a_file_or_folder_gone_before_its_turn_is_passed_over() {
        let dir = tree();
        let root = dir.path();
        let mut walk = Walk::new(root, &root.join("top"), None).expect("walk");
        assert_eq!(
            walk.next_file().expect("next").map(|f| f.key).as_deref(),
            Some("top/a")
        );
        fs::remove_file(root.join("top/a-b")).expect("remove");
        fs::remove_dir_all(root.join("top/b")).expect("remove");
        let rest = all(&mut walk);
        assert_eq!(rest, ["top/a.txt", "top/b0", "top/z/.hidden", "top/é/ü"]);
    }

    #[test]
    fn a_link_back_to_a_folder_on_the_way_down_is_not_followed() {
        let dir = tree();
        let root = dir.path();
        std::os::unix::fs::symlink("../..", root.join("top/b/c/up")).expect("link");
        std::os::unix::fs::symlink("../a.txt", root.join("top/b/link.txt")).expect("link");
        let keys = all(&mut Walk::new(root, &root.join("top"), None).expect("walk"));
        assert_eq!(
            keys.len(),
            10,
            "every file once, the linked file too: {keys:?}"
        );
        assert!(keys.contains(&"top/b/link.txt".to_string()));
    }

    #[tokio::test]
    async fn a_store_lists_a_page_at_a_time_going_on_where_the_last_page_stopped() {
        use crate::store::ObjectSource;
        let dir = tree();
        let store = super::super::LocalStore::new(dir.path());
        let whole: Vec<String> = store
            .list("top/", false)
            .await
            .expect("list")
            .into_iter()
            .map(|o| o.key)
            .collect();
        for limit in [1, 2, 4, 100] {
            let (mut keys, mut after) = (Vec::new(), None::<String>);
            loop {
                let page = store
                    .list_after("top/", after.as_deref(), limit)
                    .await
                    .expect("page");
                assert!(page.objects.len() <= limit);
                keys.extend(page.objects.into_iter().map(|o| o.key));
                match page.next {
                    Some(next) => after = Some(next),
                    None => break,
                }
            }
            assert_eq!(keys, whole, "pages of {limit}");
        }
        // A page asked from elsewhere (a resumed listing) starts a walk of its own.
        let page = store
            .list_after("top/", Some("top/b0"), 2)
            .await
            .expect("page");
        let keys: Vec<&str> = page.objects.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(keys, ["top/z/.hidden", "top/é/ü"]);
    }
}
