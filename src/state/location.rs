//! Where the state lives, as the operator named it (`--state`, `BLOBWAY_STATE`): a redb file,
//! or a PostgreSQL database shared by workers. A database's URL holds a password, so it is
//! shown only redacted, passed to a daemon this process starts through its environment (not
//! its command line, which every user of the machine can read), and never used as a path: the
//! daemon's socket, token and log of a database are found from an anchor path of their own.

use std::path::{Path, PathBuf};

use super::{StateDb, StateError, postgres};

/// Where the state lives.
#[derive(Clone)]
pub enum StateLocation {
    /// A redb file.
    File(PathBuf),
    /// A PostgreSQL database: its URL, password included.
    Postgres(String),
}

impl std::fmt::Debug for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StateLocation({self})")
    }
}

impl std::fmt::Display for StateLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateLocation::File(path) => write!(f, "{}", path.display()),
            StateLocation::Postgres(url) => write!(f, "{}", postgres::redacted(url)),
        }
    }
}

impl StateLocation {
    /// The location `given` names: a database for a `postgres://` URL, a file otherwise.
    pub fn parse(given: &Path) -> Self {
        match given.to_str().filter(|g| postgres::is_url(g)) {
            Some(url) => StateLocation::Postgres(url.to_string()),
            None => StateLocation::File(given.to_path_buf()),
        }
    }

    /// Opens the state (a file is created if missing; a database's tables are).
    pub fn open(&self) -> Result<StateDb, StateError> {
        match self {
            StateLocation::File(path) => StateDb::open_file(path),
            StateLocation::Postgres(url) => Ok(StateDb::new(postgres::PgState::open(url)?)),
        }
    }

    /// Opens the state to read it while another blobway may serve it: a database is shared
    /// without taking its lock ([`postgres::PgState::open_reader`]); a file is opened as
    /// [`StateLocation::open`] does (one process at a time).
    pub fn open_to_read(&self) -> Result<StateDb, StateError> {
        match self {
            StateLocation::File(path) => StateDb::open_file(path),
            StateLocation::Postgres(url) => Ok(StateDb::new(postgres::PgState::open_reader(url)?)),
        }
    }

    /// True when there may be state to read: a file that exists, or any database (whether it
    /// holds blobway's tables is known once it is opened).
    pub fn may_exist(&self) -> bool {
        match self {
            StateLocation::File(path) => path.exists(),
            StateLocation::Postgres(_) => true,
        }
    }

    /// True for a database several workers may share.
    pub fn is_shared(&self) -> bool {
        matches!(self, StateLocation::Postgres(_))
    }

    /// A local path that stands for this state: the file itself, or for a database
    /// [`postgres::anchor`]. The daemon's socket,
    /// token and log are named from it, so every command on this machine finds the daemon of
    /// the same state.
    pub fn anchor(&self) -> PathBuf {
        match self {
            StateLocation::File(path) => path.clone(),
            StateLocation::Postgres(url) => postgres::anchor(url),
        }
    }

    /// Makes the folder of [`StateLocation::anchor`] for a database (closed to others: its
    /// token and log are kept there); a file's folder is made when the file is.
    pub fn prepare_anchor(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        match (self, self.anchor().parent()) {
            (StateLocation::Postgres(_), Some(dir)) => std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir),
            _ => Ok(()),
        }
    }

    /// How to hand this location to a daemon started from here: (a `--state` argument, an
    /// environment variable) — a database's URL goes only through the environment.
    pub fn for_child(&self) -> (Option<&Path>, Option<(&'static str, &str)>) {
        match self {
            StateLocation::File(path) => (Some(path), None),
            StateLocation::Postgres(url) => (None, Some(("BLOBWAY_STATE", url))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_is_shown_and_anchored_without_its_password() {
        let location = StateLocation::parse(Path::new(
            "postgres://migrator:s3cret-pw@db.example:5432/blobway?password=other-pw",
        ));
        assert!(location.is_shared());
        let shown = location.to_string();
        assert!(
            !shown.contains("s3cret-pw") && !shown.contains("other-pw"),
            "{shown}"
        );
        assert!(
            shown.contains("migrator") && shown.contains("db.example:5432"),
            "{shown}"
        );
        assert!(!format!("{location:?}").contains("s3cret-pw"));
        let anchor = location.anchor();
        assert!(
            !anchor.to_string_lossy().contains("s3cret-pw"),
            "{anchor:?}"
        );
        assert!(
            anchor.is_absolute() || anchor.starts_with("."),
            "{anchor:?}"
        );
        // The same database under another password is the same state here.
        let other = StateLocation::parse(Path::new(
            "postgres://migrator:rotated@db.example:5432/blobway?password=other-pw",
        ));
        assert_eq!(other.anchor(), anchor);
        let (arg, env) = location.for_child();
        assert!(arg.is_none(), "never on a command line");
        assert_eq!(env.map(|(name, _)| name), Some("BLOBWAY_STATE"));
    }

    #[test]
    fn libpq_keywords_and_any_case_name_a_database_too() {
        for given in [
            "host=db.example dbname=m user=u password=kw-secret",
            "POSTGRES://u:kw-secret@db.example/m",
            "PostgreSQL://u:kw-secret@db.example:5432/m",
        ] {
            let location = StateLocation::parse(Path::new(given));
            assert!(location.is_shared(), "{given}");
            assert!(!location.to_string().contains("kw-secret"), "{location}");
            assert!(!location.anchor().to_string_lossy().contains("kw-secret"));
        }
        // One database however its URL is spelled: the same daemon is found.
        let anchor = |url: &str| StateLocation::parse(Path::new(url)).anchor();
        assert_eq!(
            anchor("postgres://u:a@db.example/m"),
            anchor("postgresql://u:b@db.example:5432/m?application_name=x")
        );
        assert_ne!(
            anchor("postgres://u@db.example/m"),
            anchor("postgres://u@db.example/n")
        );
    }

    #[test]
    fn anything_else_is_a_file() {
        for given in [
            "state.redb",
            "/var/lib/blobway/s.redb",
            "postgres.redb",
            "./postgres:x",
        ] {
            let location = StateLocation::parse(Path::new(given));
            assert!(!location.is_shared(), "{given}");
            assert_eq!(location.anchor(), PathBuf::from(given));
            assert_eq!(location.to_string(), given);
        }
    }
}
