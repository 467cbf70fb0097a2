//! The daemon's Unix socket: where it lives (derived from the state file, so every command
//! finds the daemon of its state file), how it is made private (mode 0600 in a 0700 folder
//! the user owns), who may connect (`SO_PEERCRED`: the same user, or root), and what is left
//! of a daemon that was killed (a stale socket nobody answers on, removed).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::net::{UnixListener, UnixStream};

/// The socket of the daemon serving `state`: `blobway-<uid>/<hash>.sock` under
/// `$XDG_RUNTIME_DIR` (or the temporary folder), where `<hash>` names the state file's
/// absolute path — always short enough for `sun_path` (108 bytes).
pub fn socket_path(state: &Path) -> PathBuf {
    let absolute = canonical(state);
    let digest = Sha256::digest(absolute.as_os_str().as_encoded_bytes());
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    socket_dir().join(format!("{name}.sock"))
}

/// `state` as one spelling of it: symbolic links and `..` resolved (its folder's, when the file
/// does not exist yet), so every command finds the same daemon however it names the file.
fn canonical(state: &Path) -> PathBuf {
    if let Ok(path) = std::fs::canonicalize(state) {
        return path;
    }
    let absolute = std::path::absolute(state).unwrap_or_else(|_| state.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|dir| dir.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

/// Connects to the daemon at `path` — only if the socket's folder is the user's own and closed
/// to others, and the process answering is the user's (or root's): a socket someone else
/// planted at a predictable path learns nothing.
pub async fn connect(path: &Path) -> io::Result<UnixStream> {
    if let Some(dir) = path.parent() {
        let meta = std::fs::symlink_metadata(dir)?;
        let me = nix::unistd::getuid().as_raw();
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} is not a folder of yours closed to others; not trusting the socket in it",
                    dir.display()
                ),
            ));
        }
    }
    let stream = UnixStream::connect(path).await?;
    if !peer_allowed(&stream) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is served by another user", path.display()),
        ));
    }
    Ok(stream)
}

/// The folder of the user's daemon sockets.
fn socket_dir() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("blobway-{}", nix::unistd::getuid()))
}

/// Makes the socket's folder (0700) and checks that it is the user's own and closed to
/// others: a folder someone else made in `/tmp` could hold a socket that impersonates the
/// daemon.
fn private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a folder of user {uid} closed to others (mode 0700); remove it \
                 and try again",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// Binds the daemon's socket at `path`. A socket file nobody answers on (left by a daemon
/// that was killed) is removed first; one that answers belongs to a running daemon, and
/// binding is refused.
pub async fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        private_dir(dir)?;
    }
    if path.exists() {
        match UnixStream::connect(path).await {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a daemon already answers on {}", path.display()),
                ));
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// True when the peer on `stream` is this user or root.
pub fn peer_allowed(stream: &UnixStream) -> bool {
    let me = nix::unistd::getuid().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == me || cred.uid() == 0)
}

/// The uid of the process at the other end of a socket connection, for the audit trail.
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(pub Option<u32>);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, CheckedUnix>>
    for PeerUid
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, CheckedUnix>) -> Self {
        PeerUid(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// The Unix listener the API is served on: connections from other users are closed at once.
pub struct CheckedUnix(pub UnixListener);

impl axum::serve::Listener for CheckedUnix {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) if peer_allowed(&stream) => return (stream, addr),
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().map(|c| c.uid()).ok();
                    tracing::warn!(?uid, "refused a connection from another user");
                }
                Err(e) => {
                    tracing::warn!("cannot accept on the socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_file_gets_a_short_socket_path_of_its_own() {
        let long = PathBuf::from(format!(
            "/{}/state.redb",
            "very-long-folder-name/".repeat(20)
        ));
        let path = socket_path(&long);
        assert!(path.as_os_str().len() < 108, "{}", path.display());
        assert_ne!(path, socket_path(Path::new("/other/state.redb")));
        assert_eq!(path, socket_path(&long), "derived the same way every time");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let sockets = dir.path().join("sockets");
        let path = sockets.join("d.sock");
        let first = bind(&path).await.expect("bind");
        let mode = std::fs::metadata(&path).expect("socket").mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&sockets).expect("dir").mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let refused = bind(&path).await.expect_err("a live daemon answers");
        assert_eq!(refused.kind(), io::ErrorKind::AddrInUse);
        drop(first); // killed: the file stays, nobody answers
        assert!(path.exists());
        bind(&path).await.expect("the stale socket is replaced");
    }

    #[test]
    fn a_socket_folder_open_to_others_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let open = dir.path().join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = private_dir(&open).expect_err("open to others");
        assert!(err.to_string().contains("closed to others"), "{err}");
    }
}
