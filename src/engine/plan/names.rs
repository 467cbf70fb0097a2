//! Destination names at planning: every object's name claimed for its source key (in the state
//! database; in memory for a dry run), and the record of an object refused for its name.

use super::*;

/// How many names are claimed in one state transaction.
pub(super) const NAME_BATCH: usize = 4096;

/// Claims every object's destination name for its source key — keys the destination holds
/// as they are first, then in listing order — in the state database (in memory for a dry
/// run); for each object, the clash when another key holds the name first.
pub(super) fn claim_names(
    index: &mut NameIndex<'_>,
    naming: Naming,
    listing: &[&ObjectInfo],
    named: &[DestName],
    as_is: &[bool],
) -> anyhow::Result<Vec<Option<NameClash>>> {
    let mut clashes = vec![None; listing.len()];
    let mut wanted: Vec<usize> = (0..listing.len())
        .filter(|i| matches!(named[*i], DestName::Object(_)))
        .collect();
    wanted.sort_by_key(|i| !as_is[*i]);
    for batch in wanted.chunks(NAME_BATCH) {
        let claims: Vec<Claim<'_>> = batch
            .iter()
            .filter_map(|i| match &named[*i] {
                DestName::Object(name) => Some(Claim {
                    name,
                    source: &listing[*i].key,
                }),
                _ => None,
            })
            .collect();
        for (i, clash) in batch.iter().zip(index.claim(naming, &claims)?) {
            clashes[*i] = clash;
        }
    }
    Ok(clashes)
}

/// Why an object cannot be copied under its name, if it cannot: the state it is recorded in
/// (skipped for a folder marker, failed otherwise) and the reason.
pub(super) fn name_refusal(
    key: &str,
    dest_key: &str,
    name: &DestName,
    clash: Option<NameClash>,
) -> Option<(FileState, String)> {
    match (name, clash) {
        (DestName::Refused(why), _) => Some((
            FileState::Failed,
            format!(
                "the destination cannot hold `{key}` as `{dest_key}`: {why}; exclude it \
                 (--exclude) or rename it at the source"
            ),
        )),
        (DestName::FolderMarker, _) => Some((
            FileState::Skipped,
            "a folder marker (`dir/`, no bytes): the destination's folders need no object"
                .to_string(),
        )),
        (DestName::Object(_), Some(clash)) => Some((
            FileState::Failed,
            format!(
                "{}; blobway never writes two objects to one name — exclude one (--exclude) \
                 or rename it at the source",
                clash.why
            ),
        )),
        (DestName::Object(_), None) => None,
    }
}

/// The record of an object that is not copied because of its name.
pub(super) fn refused_file(
    object: &ObjectInfo,
    dest_key: String,
    state: FileState,
    why: String,
) -> FileRecord {
    let failed = state == FileState::Failed;
    FileRecord {
        state,
        error: failed.then(|| crate::state::ErrorRecord {
            class: ErrorClass::Invalid,
            status: None,
            message: why.clone(),
            at_ms: now_ms(),
        }),
        note: (!failed).then_some(why),
        ..FileRecord::new(&object.key, dest_key, object.size, &object.etag, 1, 0)
    }
}
