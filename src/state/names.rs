//! The destination-name index of each job: which source key holds each name the destination
//! will hold, so that two source keys never land on one name. It lives in the state database,
//! not in memory — a job may hold millions of objects — and is claimed a batch at a time in
//! one transaction. Names are claimed in listing order: the first key to claim a name keeps
//! it, a later one is refused with both keys named.

use redb::TableDefinition;

use super::{JobId, StateDb, StateError};
use crate::store::rules::Naming;

/// (job, claim) → the source key holding it, as (bytes it shares with the claim at their ends,
/// what comes before them) — a key and its destination name usually differ only in their
/// prefixes. A claim is `f:<name>` for an object, `d:<name>` for a folder an object needs
/// (local destinations).
pub(super) const NAMES: TableDefinition<(u64, &str), (u32, &str)> =
    TableDefinition::new("name_claims");

/// Schema 3 and older: (job, claim) → the whole source key.
pub(super) const WHOLE_KEY_NAMES: TableDefinition<(u64, &str), &str> =
    TableDefinition::new("names");

/// Why a name cannot be given to a source key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameClash {
    /// The source key that holds the name (or the folder) first.
    pub holder: String,
    /// What clashes, in words.
    pub why: String,
}

/// One name to claim: the destination name and the source key that wants it.
pub struct Claim<'a> {
    /// The exact destination name.
    pub name: &'a str,
    /// The source key.
    pub source: &'a str,
}

/// Claims in memory, for a dry run (which writes nothing).
#[derive(Default)]
pub struct MemoryNames(std::collections::HashMap<String, String>);

/// Where claims are recorded.
pub enum NameIndex<'a> {
    /// The job's table in the state database.
    Db(&'a StateDb, JobId),
    /// Memory (dry runs).
    Memory(MemoryNames),
}

/// Looks up and records claims, one at a time, through `get` and `put`.
pub(super) fn claim_one(
    naming: Naming,
    claim: &Claim<'_>,
    mut get: impl FnMut(&str) -> Result<Option<String>, StateError>,
    mut put: impl FnMut(&str, &str) -> Result<(), StateError>,
) -> Result<Option<NameClash>, StateError> {
    let key = naming.collision_key(claim.name);
    let file = format!("f:{key}");
    match get(&file)? {
        Some(holder) if holder != claim.source => {
            return Ok(Some(NameClash {
                why: format!(
                    "`{}` and `{holder}` would both be the destination's `{}`",
                    claim.source, claim.name
                ),
                holder,
            }));
        }
        _ => {}
    }
    if let Some(holder) = get(&format!("d:{key}"))?
        && holder != claim.source
    {
        return Ok(Some(NameClash {
            why: format!(
                "`{}` would be the file `{}`, which `{holder}` needs as a folder",
                claim.source, claim.name
            ),
            holder,
        }));
    }
    let folders = naming.folders_of(claim.name);
    for folder in &folders {
        if let Some(holder) = get(&format!("f:{folder}"))?
            && holder != claim.source
        {
            return Ok(Some(NameClash {
                why: format!(
                    "`{}` needs `{folder}` as a folder, but `{holder}` is the file `{folder}`",
                    claim.source
                ),
                holder,
            }));
        }
    }
    put(&file, claim.source)?;
    for folder in folders {
        let claim_key = format!("d:{folder}");
        if get(&claim_key)?.is_none() {
            put(&claim_key, claim.source)?;
        }
    }
    Ok(None)
}

impl NameIndex<'_> {
    /// Forgets every claim (a plan starts over from its listing).
    pub fn clear(&mut self) -> Result<(), StateError> {
        match self {
            NameIndex::Memory(names) => {
                names.0.clear();
                Ok(())
            }
            NameIndex::Db(db, job) => db.clear_names(*job),
        }
    }

    /// Claims each name for its source key, in order; for each, the clash when the name (or a
    /// folder it needs, or it as a folder) is held by another key.
    pub fn claim(
        &mut self,
        naming: Naming,
        claims: &[Claim<'_>],
    ) -> Result<Vec<Option<NameClash>>, StateError> {
        match self {
            NameIndex::Memory(names) => {
                let mut out = Vec::with_capacity(claims.len());
                for claim in claims {
                    let map = std::cell::RefCell::new(&mut names.0);
                    out.push(claim_one(
                        naming,
                        claim,
                        |k| Ok(map.borrow().get(k).cloned()),
                        |k, v| {
                            map.borrow_mut().insert(k.to_string(), v.to_string());
                            Ok(())
                        },
                    )?);
                }
                Ok(out)
            }
            NameIndex::Db(db, job) => db.claim_names(*job, naming, claims),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::RedbState;
    use redb::ReadableDatabase;

    fn clashes(index: &mut NameIndex<'_>, naming: Naming, keys: &[(&str, &str)]) -> Vec<bool> {
        let claims: Vec<Claim<'_>> = keys
            .iter()
            .map(|(name, source)| Claim { name, source })
            .collect();
        index
            .claim(naming, &claims)
            .expect("claim")
            .iter()
            .map(Option::is_some)
            .collect()
    }

    #[test]
    fn two_keys_never_get_one_name_in_the_database_or_in_memory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = StateDb::open(&dir.path().join("s.redb")).expect("open");
        let local = Naming::Local {
            case_insensitive: false,
        };
        for mut index in [
            NameIndex::Db(&db, 7),
            NameIndex::Memory(MemoryNames::default()),
        ] {
            index.clear().expect("clear");
            // `k/x/./a.txt` became the name `k/x/a.txt` too.
            assert_eq!(
                clashes(
                    &mut index,
                    Naming::Azure,
                    &[("k/x/a.txt", "k/x/a.txt"), ("k/x/a.txt", "k/x/./a.txt")]
                ),
                vec![false, true]
            );
            // Claimed again by its holder (a re-plan): no clash.
            assert_eq!(
                clashes(&mut index, Naming::Azure, &[("k/x/a.txt", "k/x/a.txt")]),
                vec![false]
            );
            index.clear().expect("clear");
            // A file and a folder of the same name, both ways round.
            assert_eq!(
                clashes(
                    &mut index,
                    local,
                    &[("a", "a"), ("a/b", "a/b"), ("c/d", "c/d"), ("c", "c")]
                ),
                vec![false, true, false, true]
            );
        }
        // In the database, claims outlive the batch that made them.
        let mut index = NameIndex::Db(&db, 7);
        let clash = index
            .claim(
                local,
                &[Claim {
                    name: "a",
                    source: "./a",
                }],
            )
            .expect("claim")
            .remove(0)
            .expect("clash");
        assert_eq!(clash.holder, "a");
        assert!(clash.why.contains("`./a` and `a`"), "{}", clash.why);
        // Another job's names are its own.
        let mut other = NameIndex::Db(&db, 8);
        assert_eq!(clashes(&mut other, local, &[("a", "./a")]), vec![false]);
    }

    #[test]
    fn claims_recorded_whole_before_schema_4_hold_after_the_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        {
            let db = RedbState::open(&path).expect("open");
            let txn = db.db.begin_write().expect("write");
            {
                let mut old = txn.open_table(WHOLE_KEY_NAMES).expect("old names");
                old.insert((3, "f:dst/ü/a.txt"), "src/ü/a.txt")
                    .expect("claim");
                old.insert((3, "f:dst/b"), "elsewhere").expect("claim");
                let mut meta = txn.open_table(super::super::embedded::META).expect("meta");
                meta.insert("schema", "3").expect("schema");
            }
            txn.commit().expect("commit");
        }
        let raw = RedbState::open(&path).expect("upgraded");
        let db = StateDb::new(raw.clone());
        let mut index = NameIndex::Db(&db, 3);
        let naming = Naming::Azure;
        for (name, holder) in [("dst/ü/a.txt", "src/ü/a.txt"), ("dst/b", "elsewhere")] {
            let clash = index
                .claim(
                    naming,
                    &[Claim {
                        name,
                        source: "another",
                    }],
                )
                .expect("claim")
                .remove(0)
                .expect("clash");
            assert_eq!(clash.holder, holder);
        }
        // Its holder claims it again freely.
        assert_eq!(
            clashes(&mut index, naming, &[("dst/ü/a.txt", "src/ü/a.txt")]),
            vec![false]
        );
        let txn = raw.db.begin_read().expect("read");
        assert!(
            txn.open_table(WHOLE_KEY_NAMES).is_err(),
            "the old table is gone"
        );
    }
}
