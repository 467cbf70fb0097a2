//! Planning a job before any byte moves: list the source, size the chunks within the
//! destination's limits, derive deterministic block IDs, look at what the destination already
//! holds, merge with what an earlier run of the same route recorded, and write it all to the
//! state database.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::filter::Filter;
use super::retry::RetryPolicy;
use crate::location::Location;
use crate::size::human;
use crate::state::names::{Claim, MemoryNames, NameClash, NameIndex};
use crate::state::{
    ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobOptions, JobRecord, JobState,
    StateDb, Write, now_ms,
};
use crate::store::rules::{DestName, IfExists, InvalidMetadata, Naming, map_metadata};
use crate::store::{
    DestObject, ErrorClass, ObjectInfo, ObjectSink, ObjectSource, PlannedBlock, SinkLimits,
    StoreResult, meta_keys,
};

const MIB: u64 = 1 << 20;

/// The block ID of chunk `index` of the object version (`etag`, `size`) cut into `chunk_size`
/// chunks: fixed length, ASCII, and different for any other version or chunk size, so blocks of
/// two versions can never mix.
pub fn block_id(etag: &str, size: u64, chunk_size: u64, index: u32) -> String {
    let digest = Sha256::digest(format!("{etag}\n{size}\n{chunk_size}").as_bytes());
    let version: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("bw1-{version}-{index:010}")
}

/// The chunk size for an object of `size` bytes: the requested size, raised (to a whole MiB)
/// when the object would otherwise need more blocks than the store allows.
pub fn chunk_size_for(
    size: u64,
    requested: u64,
    limits: SinkLimits,
    max_memory: u64,
) -> Result<u64, String> {
    check_chunk_size(requested, limits)?;
    if size > limits.max_object() {
        let why = if limits.max_object() == limits.max_object_size {
            "the store's cap".to_string()
        } else {
            format!(
                "{} blocks of {}",
                limits.max_blocks,
                human(limits.max_block)
            )
        };
        return Err(format!(
            "the object is {} but the destination holds at most {} per object ({why})",
            human(size),
            human(limits.max_object()),
        ));
    }
    let mut chunk = requested.max(limits.min_block);
    let needed = size.div_ceil(limits.max_blocks);
    if chunk < needed {
        chunk = needed.div_ceil(MIB) * MIB;
    }
    // Every chunk but the last must be a whole number of the store's units.
    let unit = limits.granularity.max(1);
    let chunk = (chunk.div_ceil(unit) * unit).min(limits.max_block);
    if chunk.min(size) > max_memory {
        return Err(format!(
            "the object needs chunks of {} (at most {} blocks) but --max-memory is {}; raise \
             --max-memory to at least {}",
            human(chunk),
            limits.max_blocks,
            human(max_memory),
            human(chunk)
        ));
    }
    Ok(chunk)
}

/// Whether a requested chunk size can work with the destination at all.
pub fn check_chunk_size(requested: u64, limits: SinkLimits) -> Result<(), String> {
    if requested == 0 {
        return Err("the chunk size must be at least 1 byte".into());
    }
    if requested > limits.max_block {
        return Err(format!(
            "a chunk size of {} is over the destination's largest block ({}); use at most {}",
            human(requested),
            human(limits.max_block),
            human(limits.max_block)
        ));
    }
    Ok(())
}

/// How many chunks an object of `size` has: at least one (an empty object is one empty put).
pub fn chunk_count(size: u64, chunk_size: u64) -> u32 {
    u32::try_from(size.div_ceil(chunk_size).max(1)).unwrap_or(u32::MAX)
}

/// The blocks of a planned object, in order, with their deterministic IDs and sizes.
pub fn planned_blocks(file: &FileRecord) -> Vec<PlannedBlock> {
    (0..file.chunk_count)
        .map(|index| {
            let range = file.chunk_range(index);
            PlannedBlock {
                index,
                id: block_id(&file.etag, file.size, file.chunk_size, index),
                size: range.end - range.start,
            }
        })
        .collect()
}

/// What a planning request needs.
pub struct PlanRequest<'a> {
    /// The id for a new job (ignored when the route already has one).
    pub new_job_id: JobId,
    /// Where to copy from.
    pub source: &'a Location,
    /// Where to copy to.
    pub destination: &'a Location,
    /// Job settings.
    pub options: JobOptions,
    /// The memory budget chunks must fit in.
    pub max_memory: u64,
    /// Retries for listing and preparing.
    pub retry: RetryPolicy,
    /// Only look: prepare nothing at the destination and record nothing.
    pub dry_run: bool,
}

/// One object of a plan, as a dry run shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlannedObject {
    /// Source key.
    pub key: String,
    /// Destination key.
    pub dest_key: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u64,
    /// Chunks still to send.
    pub chunks: u64,
    /// What happens to it: copy, skip (identical or done), or why it cannot be copied.
    pub action: String,
}

/// A plan: the job as recorded, what it amounts to, and (for a dry run) each object.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The job.
    pub job: JobRecord,
    /// What it amounts to.
    pub summary: PlanSummary,
    /// Every listed object and what happens to it (dry runs only).
    pub objects: Vec<PlannedObject>,
}

/// What a plan amounts to.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanSummary {
    /// Objects in the job.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects still to copy.
    pub to_copy: u64,
    /// Bytes still to copy.
    pub to_copy_bytes: u64,
    /// Chunks still to send.
    pub chunks: u64,
    /// Objects already done in an earlier run.
    pub already_done: u64,
    /// Objects found identical at the destination (copied earlier by blobway).
    pub identical: u64,
    /// Objects that cannot be copied at all (e.g. too large for the destination).
    pub rejected: u64,
    /// Objects the include/exclude filters left out.
    #[serde(default)]
    pub filtered: u64,
    /// Requests the copy will make, about (reads, uploads, begins, checks and commits).
    #[serde(default)]
    pub requests: u64,
    /// Objects the destination already holds (not copied by blobway from this version) that
    /// the copy replaces (`--if-exists overwrite`).
    #[serde(default)]
    pub replaced: u64,
    /// Objects left as the destination holds them (`--if-exists skip`).
    #[serde(default)]
    pub existing_skipped: u64,
    /// Zero-byte `dir/` markers a destination without such objects needs no copy of.
    #[serde(default)]
    pub folder_markers: u64,
    /// Objects (of a dry run) with metadata the destination will hold renamed or left out.
    #[serde(default)]
    pub metadata_changed: u64,
    /// Objects (of a dry run) whose metadata the destination cannot hold under the policy.
    #[serde(default)]
    pub metadata_refused: u64,
}

/// How many destination objects are looked at (HEAD) at once while planning.
const HEAD_CONCURRENCY: usize = 16;

/// Fetches the metadata of the destination objects in `keys` (those whose size matches their
/// source) into `existing`. One that cannot be looked at (no permission, a key blobway lacks)
/// keeps no metadata, so it counts as different and is copied.
async fn fill_metadata(
    sink: &dyn ObjectSink,
    retry: &RetryPolicy,
    keys: Vec<String>,
    existing: &mut BTreeMap<String, DestObject>,
) {
    use futures::StreamExt;
    let found: Vec<(String, StoreResult<Option<DestObject>>)> = futures::stream::iter(keys)
        .map(|key| async move {
            let found = retry.run(|| sink.head(&key)).await;
            (key, found)
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    for (key, found) in found {
        match found {
            Ok(Some(found)) => {
                existing.insert(key, found);
            }
            Ok(None) => {
                existing.remove(&key); // gone since the listing
            }
            Err(e) => {
                tracing::warn!(%key, "cannot read the destination object's metadata: {e}");
            }
        }
    }
}

/// A plan that failed at the destination after the source was listed: the job is worth
/// recording, so that `resume` tries the destination again.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DestinationFailed(pub String);

/// Lists, sizes and records a job. Re-planning a route that has a job resumes it: objects
/// unchanged at the source keep their progress, changed ones are planned afresh (their old
/// upload sessions given up), failed ones get another chance. A dry run reads the state file
/// (when there is one) but writes nothing anywhere.
pub async fn plan_job(
    db: Option<&StateDb>,
    req: PlanRequest<'_>,
    source: &dyn ObjectSource,
    sink: &dyn ObjectSink,
) -> anyhow::Result<Plan> {
    let (src, dst) = (req.source, req.destination);
    let filter = Filter::new(&req.options.include, &req.options.exclude)?;
    check_chunk_size(req.options.chunk_size, sink.limits())
        .map_err(|e| anyhow::anyhow!("--chunk-size: {e}"))?;
    let source_failed = |e: crate::store::StoreError| {
        let hint = if !src.is_prefix() && e.class == crate::store::ErrorClass::NotFound {
            " (to copy every object under it, end the location with `/`)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot list the source {src}: {e}{hint}")
    };
    // Fail fast: one cheap request to each side first, with few retries, so a wrong endpoint,
    // bucket or credential is reported in seconds rather than after a long backoff.
    let preflight = RetryPolicy::preflight();
    let listing = if src.is_prefix() {
        preflight
            .run(|| source.list_page(&src.key, None))
            .await
            .map_err(source_failed)?;
        None
    } else {
        Some(
            preflight
                .run(|| source.list(&src.key, true))
                .await
                .map_err(source_failed)?,
        )
    };
    if !req.dry_run {
        preflight
            .run(|| sink.prepare())
            .await
            .map_err(|e| DestinationFailed(format!("cannot prepare the destination {dst}: {e}")))?;
    }
    let listing = match listing {
        Some(listing) => listing,
        None => req
            .retry
            .run(|| source.list(&src.key, false))
            .await
            .map_err(source_failed)?,
    };
    let existing = if dst.is_prefix() {
        req.retry.run(|| sink.list_existing(&dst.key)).await
    } else {
        req.retry
            .run(|| sink.head(&dst.key))
            .await
            .map(|d| d.map(|d| (dst.key.clone(), d)).into_iter().collect())
    };
    let mut existing: BTreeMap<String, DestObject> = match existing {
        Ok(existing) => existing,
        // A dry run prepares nothing: a container that does not exist yet holds nothing.
        Err(e) if req.dry_run && e.class == ErrorClass::NotFound => BTreeMap::new(),
        Err(e) => {
            return Err(
                DestinationFailed(format!("cannot read the destination {dst}: {e}")).into(),
            );
        }
    };

    let mut summary_filtered = 0;
    let (src_text, dst_text) = (src.to_string(), dst.to_string());
    let previous = match db {
        Some(db) => match db.job_for_route(&src_text, &dst_text)? {
            Some(job) => db.load_job(job.id)?,
            None => None,
        },
        None => None,
    };
    let now = now_ms();
    let mut job = match &previous {
        Some(snapshot) => snapshot.job.clone(),
        None => JobRecord {
            id: req.new_job_id,
            source: src_text,
            destination: dst_text,
            options: req.options.clone(),
            state: JobState::Queued,
            created_ms: now,
            updated_ms: now,
            error: None,
            planned: true,
        },
    };
    job.planned = true;
    job.options = req.options.clone();
    job.state = JobState::Running;
    job.error = None;
    job.updated_ms = now;

    // Every admitted object's exact destination name, and the names two keys would share.
    let mut listing = listing;
    listing.retain(|o| {
        let admitted = filter.admits(src, &o.key);
        if !admitted {
            summary_filtered += 1;
        }
        admitted
    });
    let naming = sink.naming();
    let named: Vec<DestName> = listing
        .iter()
        .map(|o| naming.destination_name(&dst.destination_key(src, &o.key), o.size))
        .collect();
    // A key the destination holds as it is claims its name before keys folded onto it
    // (`k/x/a.txt` before `k/x/./a.txt`), whatever the listing order.
    let as_is: Vec<bool> = listing
        .iter()
        .zip(&named)
        .map(|(o, name)| matches!(name, DestName::Object(n) if *n == dst.destination_key(src, &o.key)))
        .collect();
    let clashes = claim_names(db, &req, job.id, naming, &listing, &named, &as_is)?;
    if !sink.listing_has_metadata() {
        let candidates: Vec<String> = listing
            .iter()
            .zip(&named)
            .filter_map(|(o, name)| match name {
                DestName::Object(key) => Some((key.clone(), o.size)),
                _ => None,
            })
            .filter(|(key, size)| existing.get(key).is_some_and(|d| d.size == *size))
            .map(|(key, _)| key)
            .collect();
        fill_metadata(sink, &req.retry, candidates, &mut existing).await;
    }

    let mut old: HashMap<String, (u32, FileRecord, Vec<ChunkRecord>)> = previous
        .map(|s| s.files.into_iter().map(|f| (f.1.key.clone(), f)).collect())
        .unwrap_or_default();
    let mut next_index = old.values().map(|(i, _, _)| i + 1).max().unwrap_or(0);
    let mut writes = vec![Write::Job(job.clone())];
    let mut summary = PlanSummary {
        filtered: summary_filtered,
        ..PlanSummary::default()
    };
    let mut objects = Vec::new();
    // Objects of a dry run to copy, whose metadata is looked at: (position, version).
    let mut to_preview: Vec<(usize, String)> = Vec::new();
    // Upload sessions of objects planned afresh, to give up.
    let mut stale: Vec<(String, String)> = Vec::new();
    let limits = sink.limits();

    for ((object, name), clash) in listing.iter().zip(named).zip(clashes) {
        summary.files += 1;
        summary.bytes += object.size;
        let dest_key = match &name {
            DestName::Object(key) => key.clone(),
            _ => dst.destination_key(src, &object.key),
        };
        if let Some((state, why)) = name_refusal(&object.key, &dest_key, &name, clash) {
            // Refused names are decided afresh by every plan, never copied.
            let index = match old.remove(&object.key) {
                Some((index, old_file, _)) => {
                    stale.extend(old_file.open_upload());
                    writes.push(Write::RemoveFile(job.id, index));
                    index
                }
                None => {
                    next_index += 1;
                    next_index - 1
                }
            };
            let file = refused_file(object, dest_key, state, why);
            let action = match state {
                FileState::Skipped => {
                    summary.folder_markers += 1;
                    "skip: a folder marker".to_string()
                }
                _ => {
                    summary.rejected += 1;
                    let why = file.error.as_ref().map_or("", |e| e.message.as_str());
                    format!("cannot copy: {why}")
                }
            };
            if req.dry_run {
                objects.push(planned_object(&file, 0, &action));
            }
            writes.push(Write::File(job.id, index, file));
            continue;
        }
        let at_destination = existing.get(&dest_key);
        let (index, mut file, mut chunks) = match old.remove(&object.key) {
            Some((index, file, chunks)) if file.etag == object.etag && file.size == object.size => {
                (index, file, chunks)
            }
            Some((index, old_file, _)) => {
                stale.extend(old_file.open_upload());
                writes.push(Write::RemoveFile(job.id, index));
                let (file, chunks) = new_file(object, dest_key, &req, limits);
                (index, file, chunks)
            }
            None => {
                let index = next_index;
                next_index += 1;
                let (file, chunks) = new_file(object, dest_key, &req, limits);
                (index, file, chunks)
            }
        };
        let finished = matches!(file.state, FileState::Done | FileState::Skipped);
        // Done, or skipped as identical, and still there. (An object left under --if-exists
        // skip is decided again: the policy may have changed.)
        if finished
            && at_destination.is_some_and(|d| d.size == file.size)
            && (file.state == FileState::Done || identical(at_destination, object))
        {
            summary.already_done += 1;
            if req.dry_run {
                objects.push(planned_object(&file, 0, "skip: done in an earlier run"));
            }
            continue;
        }
        if identical(at_destination, object) {
            file.state = FileState::Skipped;
            file.note = Some("already identical at the destination".into());
            summary.identical += 1;
        } else if finished || (file.state == FileState::Failed && file.chunk_count == 0) {
            // Recorded as done but gone from the destination, or never plannable (settings
            // may have changed since): plan it afresh.
            stale.extend(file.open_upload());
            writes.push(Write::RemoveFile(job.id, index));
            (file, chunks) = new_file(object, file.dest_key.clone(), &req, limits);
        } else if file.state == FileState::Failed {
            reopen(&mut file, &mut chunks);
        }
        // Someone else's object under the name: replaced, left, or the object fails.
        if at_destination.is_some()
            && matches!(file.state, FileState::Transferring | FileState::Committing)
        {
            match req.options.if_exists {
                IfExists::Overwrite => summary.replaced += 1,
                IfExists::Skip => {
                    stale.extend(file.open_upload());
                    file.state = FileState::Skipped;
                    file.note =
                        Some("already at the destination; left as it is (--if-exists skip)".into());
                    summary.existing_skipped += 1;
                }
                IfExists::Fail => {
                    stale.extend(file.open_upload());
                    file.state = FileState::Failed;
                    file.error = Some(crate::state::ErrorRecord {
                        class: ErrorClass::Exists,
                        status: None,
                        message: format!(
                            "`{}` is already at the destination and was not copied from this \
                             source version; --if-exists fail leaves it (overwrite replaces \
                             it, skip leaves it without failing)",
                            file.dest_key
                        ),
                        at_ms: now_ms(),
                    });
                }
            }
        }
        let remaining = chunks
            .iter()
            .filter(|c| c.state != ChunkState::Completed)
            .count() as u64;
        let action = match file.state {
            FileState::Transferring | FileState::Committing => {
                summary.to_copy += 1;
                summary.to_copy_bytes += object.size;
                summary.chunks += remaining;
                summary.requests += if file.is_single_put() {
                    2 // read, put
                } else {
                    // read and upload per chunk; begin, check and commit per object
                    2 * remaining + 3
                };
                "copy".to_string()
            }
            FileState::Failed => {
                summary.rejected += 1;
                let why = file.error.as_ref().map_or("", |e| e.message.as_str());
                format!("cannot copy: {why}")
            }
            FileState::Skipped
                if req.options.if_exists == IfExists::Skip
                    && !identical(at_destination, object) =>
            {
                "skip: already at the destination (--if-exists skip)".to_string()
            }
            FileState::Done | FileState::Skipped => "skip: already identical".to_string(),
        };
        if req.dry_run {
            if action == "copy" {
                to_preview.push((objects.len(), file.etag.clone()));
            }
            objects.push(planned_object(&file, remaining, &action));
        }
        writes.push(Write::File(job.id, index, file));
        writes.extend(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| Write::Chunk(job.id, index, i as u32, c)),
        );
    }
    // Objects recorded earlier that are gone from the source: keep finished ones as history,
    // drop unfinished ones (there is nothing left to copy).
    for (index, file, _) in old.into_values() {
        if !matches!(file.state, FileState::Done | FileState::Skipped) {
            stale.extend(file.open_upload());
            writes.push(Write::RemoveFile(job.id, index));
        }
    }
    if req.dry_run {
        let policy = req.options.invalid_metadata;
        preview_metadata(
            source,
            sink,
            policy,
            &mut objects,
            &to_preview,
            &mut summary,
        )
        .await;
        return Ok(Plan {
            job,
            summary,
            objects,
        });
    }
    if let Some(db) = db {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.apply(&writes))
            .await
            .context("the planning task failed")??;
    }
    super::transfer::give_up_uploads(sink, stale).await;
    Ok(Plan {
        job,
        summary,
        objects,
    })
}

/// For a dry run: reads the metadata of every object to copy (one metadata read each, 16 at a
/// time — listings carry none) and says what the destination will hold of it, as the copy
/// will decide it ([`map_metadata`]).
async fn preview_metadata(
    source: &dyn ObjectSource,
    sink: &dyn ObjectSink,
    policy: InvalidMetadata,
    objects: &mut [PlannedObject],
    to_preview: &[(usize, String)],
    summary: &mut PlanSummary,
) {
    use futures::StreamExt;
    let rules = sink.meta_rules();
    let wanted: Vec<(usize, String, String)> = to_preview
        .iter()
        .map(|(at, etag)| (*at, objects[*at].key.clone(), etag.clone()))
        .collect();
    let found: Vec<(usize, StoreResult<crate::store::Chunk>)> = futures::stream::iter(wanted)
        .map(|(at, key, etag)| async move {
            let read = source
                .read_range(&key, &etag, 0..0, bytes::BytesMut::new())
                .await;
            (at, read)
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    for (at, read) in found {
        let object = &mut objects[at];
        let meta = match read {
            Ok(chunk) => crate::store::ObjectMeta::from_source(chunk.meta),
            Err(e) => {
                tracing::warn!(key = %object.key, "cannot read the object's metadata: {e}");
                continue;
            }
        };
        match map_metadata(&meta.pairs, &rules, policy) {
            Ok(mapped) if mapped.renamed.is_empty() && mapped.excluded.is_empty() => {}
            Ok(mapped) => {
                summary.metadata_changed += 1;
                let renamed = mapped
                    .renamed
                    .iter()
                    .map(|(from, to)| format!("{from} → {to}"));
                let excluded = mapped
                    .excluded
                    .iter()
                    .map(|name| format!("{name} left out"));
                let changes: Vec<String> = renamed.chain(excluded).collect();
                object.action = format!("copy; metadata {}", changes.join(", "));
            }
            Err(why) => {
                summary.metadata_refused += 1;
                object.action = format!("cannot copy: {why}");
            }
        }
    }
}

/// How many names are claimed in one state transaction.
const NAME_BATCH: usize = 4096;

/// Claims every object's destination name for its source key — keys the destination holds
/// as they are first, then in listing order — in the state database (in memory for a dry
/// run); for each object, the clash when another key holds the name first.
fn claim_names(
    db: Option<&StateDb>,
    req: &PlanRequest<'_>,
    job: JobId,
    naming: Naming,
    listing: &[ObjectInfo],
    named: &[DestName],
    as_is: &[bool],
) -> anyhow::Result<Vec<Option<NameClash>>> {
    let mut index = match db {
        Some(db) if !req.dry_run => NameIndex::Db(db, job),
        _ => NameIndex::Memory(MemoryNames::default()),
    };
    index.clear()?;
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
fn name_refusal(
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
fn refused_file(
    object: &ObjectInfo,
    dest_key: String,
    state: FileState,
    why: String,
) -> FileRecord {
    let failed = state == FileState::Failed;
    FileRecord {
        key: object.key.clone(),
        dest_key,
        size: object.size,
        etag: object.etag.clone(),
        chunk_size: 1,
        chunk_count: 0,
        state,
        commit_attempts: 0,
        error: failed.then(|| crate::state::ErrorRecord {
            class: ErrorClass::Invalid,
            status: None,
            message: why.clone(),
            at_ms: now_ms(),
        }),
        note: (!failed).then_some(why),
        session: None,
        meta: None,
        begun_ms: None,
    }
}

fn planned_object(file: &FileRecord, chunks: u64, action: &str) -> PlannedObject {
    PlannedObject {
        key: file.key.clone(),
        dest_key: file.dest_key.clone(),
        size: file.size,
        chunk_size: file.chunk_size,
        chunks,
        action: action.to_string(),
    }
}

/// True when the destination holds exactly this source version, as recorded by blobway.
fn identical(at_destination: Option<&DestObject>, object: &ObjectInfo) -> bool {
    at_destination.is_some_and(|d| {
        d.size == object.size
            && d.meta.get(meta_keys::SOURCE_ETAG).map(String::as_str) == Some(object.etag.as_str())
    })
}

/// A freshly planned object: every chunk pending, or the object failed when no chunk size fits.
fn new_file(
    object: &ObjectInfo,
    dest_key: String,
    req: &PlanRequest<'_>,
    limits: SinkLimits,
) -> (FileRecord, Vec<ChunkRecord>) {
    let sized = chunk_size_for(object.size, req.options.chunk_size, limits, req.max_memory);
    let chunk_size = sized
        .as_ref()
        .copied()
        .unwrap_or(req.options.chunk_size.max(1));
    let chunk_count = if sized.is_ok() {
        chunk_count(object.size, chunk_size)
    } else {
        0
    };
    let file = FileRecord {
        key: object.key.clone(),
        dest_key,
        size: object.size,
        etag: object.etag.clone(),
        chunk_size,
        chunk_count,
        state: if sized.is_ok() {
            FileState::Transferring
        } else {
            FileState::Failed
        },
        commit_attempts: 0,
        error: sized.err().map(|message| crate::state::ErrorRecord {
            class: crate::store::ErrorClass::Invalid,
            status: None,
            message,
            at_ms: now_ms(),
        }),
        note: None,
        session: None,
        meta: None,
        begun_ms: None,
    };
    (file, vec![ChunkRecord::pending(); chunk_count as usize])
}

/// Gives a failed object another chance: failed and claimed chunks go back to pending (their
/// attempt counts and histories stay), completed ones are kept.
pub fn reopen(file: &mut FileRecord, chunks: &mut [ChunkRecord]) {
    for chunk in chunks.iter_mut() {
        if matches!(chunk.state, ChunkState::Failed | ChunkState::InProgress) {
            chunk.state = ChunkState::Pending;
        }
    }
    file.state = FileState::Transferring;
    file.error = None;
    file.commit_attempts = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZURE: SinkLimits = SinkLimits {
        max_block: 4000 * MIB,
        max_blocks: 50_000,
        min_block: 0,
        granularity: 1,
        max_single_put: 5000 * MIB,
        sequential: false,
        max_object_size: u64::MAX,
    };

    #[test]
    fn block_ids_are_fixed_length_and_bound_to_the_version() {
        let a = block_id("\"e1\"", 100, 10, 0);
        let b = block_id("\"e1\"", 100, 10, 9_999_999);
        let c = block_id("\"e2\"", 100, 10, 0);
        let d = block_id("\"e1\"", 100, 20, 0);
        assert_eq!(a.len(), b.len());
        assert!(a.len() <= 64);
        assert_ne!(a, c, "another source version");
        assert_ne!(a, d, "another chunk size");
        assert_eq!(a, block_id("\"e1\"", 100, 10, 0), "deterministic");
    }

    #[test]
    fn chunk_size_is_raised_to_stay_within_the_block_count() {
        let one_tib = 1u64 << 40;
        assert_eq!(
            chunk_size_for(one_tib, 64 * MIB, AZURE, 1 << 30),
            Ok(64 * MIB)
        );
        let size = 5 * one_tib;
        let chunk = chunk_size_for(size, 64 * MIB, AZURE, 1 << 30).expect("fits");
        assert!(chunk_count(size, chunk) <= 50_000);
        assert_eq!(chunk % MIB, 0);
    }

    #[test]
    fn impossible_sizes_are_explained() {
        assert!(
            chunk_size_for(10, 0, AZURE, 1 << 30)
                .expect_err("zero")
                .contains("at least 1 byte")
        );
        assert!(
            chunk_size_for(10, 5000 * MIB, AZURE, 1 << 40)
                .expect_err("too big")
                .contains("largest block")
        );
        assert!(
            chunk_size_for(200_000 * 4000 * MIB, 64 * MIB, AZURE, 1 << 40)
                .expect_err("object too big")
                .contains("at most")
        );
        assert!(
            chunk_size_for(50_000 * 300 * MIB, 64 * MIB, AZURE, 256 * MIB)
                .expect_err("memory")
                .contains("--max-memory")
        );
    }

    #[test]
    fn s3_parts_are_at_least_5_mib_and_at_most_10000() {
        let s3 = crate::store::S3_SINK_LIMITS;
        assert_eq!(chunk_size_for(100 * MIB, MIB, s3, 1 << 30), Ok(5 * MIB));
        assert_eq!(chunk_size_for(100 * MIB, 8 * MIB, s3, 1 << 30), Ok(8 * MIB));
        let size = 200 * 1024 * MIB; // 200 GiB in 16 MiB parts would be 12,800 parts
        let chunk = chunk_size_for(size, 16 * MIB, s3, 1 << 30).expect("fits");
        assert!(chunk_count(size, chunk) <= 10_000, "{chunk}");
        assert_eq!(chunk % MIB, 0);
    }

    #[test]
    fn gcs_chunks_are_whole_multiples_of_256_kib() {
        let gcs = crate::store::gcs::LIMITS;
        let unit = crate::store::gcs::GRANULARITY;
        assert_eq!(chunk_size_for(10 * MIB, MIB, gcs, 1 << 30), Ok(MIB));
        assert_eq!(
            chunk_size_for(10 * MIB, MIB + 1, gcs, 1 << 30),
            Ok(MIB + unit)
        );
        assert_eq!(chunk_size_for(10 * MIB, 1000, gcs, 1 << 30), Ok(unit));
        assert!(gcs.sequential, "a resumable session takes bytes in order");
        assert!(
            chunk_size_for(6 << 40, 64 * MIB, gcs, 1 << 30)
                .expect_err("over 5 TiB")
                .contains("at most 5 TiB per object (the store's cap)")
        );
    }

    #[test]
    fn counts_chunks_with_one_for_empty_objects() {
        assert_eq!(chunk_count(0, 8), 1);
        assert_eq!(chunk_count(8, 8), 1);
        assert_eq!(chunk_count(9, 8), 2);
        assert_eq!(chunk_count(16, 8), 2);
    }
}
