//! Planning a job before any byte moves: list the source, size the chunks within the
//! destination's limits, derive deterministic block IDs, look at what the destination already
//! holds, merge with what an earlier run of the same route recorded, and write it all to the
//! state database. Sizing and block IDs live in [`sizing`], destination names in [`names`],
//! what is read of metadata in [`metadata`].

mod existing;
mod metadata;
mod names;
mod sizing;

pub use sizing::{block_id, check_chunk_size, chunk_count, chunk_size_for, planned_blocks};

use existing::Existing;
pub(crate) use metadata::fill_metadata;
use metadata::preview_metadata;
use names::{claim_names, name_refusal, refused_file};

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use super::filter::Filter;
use super::retry::RetryPolicy;
use crate::location::Location;
use crate::size::human;
use crate::state::index::Listing;
use crate::state::names::{Claim, MemoryNames, NameClash, NameIndex};
use crate::state::{
    ChunkRecord, ChunkState, FileRecord, FileState, JobId, JobOptions, JobRecord, JobState,
    StateDb, Write, now_ms,
};
use crate::store::rules::{DestName, IfExists, Naming, map_metadata};
use crate::store::{
    DestObject, ErrorClass, ObjectInfo, ObjectSink, ObjectSource, PlannedBlock, SinkLimits,
    StoreResult, meta_keys,
};

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
    /// Objects (of a dry run with `--copy-tags`) whose tags the destination cannot hold.
    #[serde(default)]
    pub tags_refused: u64,
}

/// Why a plan failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The options cannot work: a filter that does not parse, a chunk size the destination
    /// refuses.
    #[error("{0}")]
    Options(String),
    /// The source could not be listed.
    #[error("{0}")]
    Source(String),
    /// The destination failed after the source was listed: the job is worth recording, so
    /// that `resume` tries the destination again.
    #[error("{0}")]
    Destination(String),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// The job stopped (cancelled, or failed) while it was listed; where the listing stood is
    /// recorded.
    #[error("the job stopped while its source was listed")]
    Stopped,
    /// Anything else: a store that cannot be opened, a planning task that died.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Lists, sizes and records a job. Re-planning a route that has a job resumes it: objects
/// unchanged at the source keep their progress, changed ones are planned afresh (their old
/// upload sessions given up), failed ones get another chance. A dry run reads the state file
/// (when there is one) but writes nothing anywhere.
pub async fn plan_job(
    db: Option<&StateDb>,
    req: PlanRequest<'_>,
    source: &dyn ObjectSource,
    sink: &dyn ObjectSink,
) -> Result<Plan, PlanError> {
    plan_job_paged(db, req, source, sink, &mut |_| true).await
}

/// [`plan_job`], a page at a time: each page of the source's listing is planned and recorded
/// with the listing's position in one transaction, then reported to `on_page` (not in a dry
/// run; it answers false to stop the listing), so a new job's objects can start while the
/// rest is listed and a listing stopped at any moment resumes after its last recorded key.
pub async fn plan_job_paged(
    db: Option<&StateDb>,
    req: PlanRequest<'_>,
    source: &dyn ObjectSource,
    sink: &dyn ObjectSink,
    on_page: &mut (dyn FnMut(PagePlanned) -> bool + Send),
) -> Result<Plan, PlanError> {
    let (src, dst) = (req.source, req.destination);
    let filter = Filter::new(&req.options.include, &req.options.exclude)
        .map_err(|e| PlanError::Options(format!("{e:#}")))?;
    check_chunk_size(req.options.chunk_size, sink.limits())
        .map_err(|e| PlanError::Options(format!("--chunk-size: {e}")))?;
    crate::store::copy::route_between(req.options.transfer, source, sink)
        .map_err(PlanError::Options)?;
    if let Some(why) = db.and_then(|db| crate::state::sealed::refusal(db, sink.bearer_sessions())) {
        return Err(PlanError::Options(why));
    }
    if req.options.access_tier.is_some() && !sink.access_tiers() {
        return Err(PlanError::Options(
            "--access-tier: only an Azure destination has access tiers".into(),
        ));
    }
    if req.options.storage_class.is_some() && !sink.storage_classes() {
        return Err(PlanError::Options(
            "--storage-class: only an S3 destination has storage classes".into(),
        ));
    }
    if req.options.copy_tags && !source.has_tags() {
        return Err(PlanError::Options(
            "--copy-tags: only S3 and Azure sources have object tags to copy".into(),
        ));
    }
    if req.options.copy_tags && sink.tag_rules().is_none() {
        return Err(PlanError::Options(
            "--copy-tags: only an S3 or Azure destination holds object tags".into(),
        ));
    }
    let source_failed = |e: crate::store::StoreError| {
        let hint = if !src.is_prefix() && e.class == crate::store::ErrorClass::NotFound {
            " (to copy every object under it, end the location with `/`)"
        } else {
            ""
        };
        PlanError::Source(format!("cannot list the source {src}: {e}{hint}"))
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
        preflight.run(|| sink.prepare()).await.map_err(|e| {
            PlanError::Destination(format!("cannot prepare the destination {dst}: {e}"))
        })?;
    }
    // A single object is listed already; a prefix is listed a page at a time below.
    let mut single = listing;

    let (src_text, dst_text) = (src.to_string(), dst.to_string());
    let previous = match db {
        Some(db) => db.job_for_route(&src_text, &dst_text)?,
        None => None,
    };
    let now = now_ms();
    let mut job = match &previous {
        Some(previous) => previous.clone(),
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
    // A listing stopped part-way goes on after its last recorded key, as long as it lists
    // with the same settings; otherwise the route is listed from the start.
    let resumed = match (db, &previous) {
        (Some(db), Some(previous)) if previous.options == req.options && !req.dry_run => {
            db.listing(job.id)?
        }
        _ => None,
    };
    let fresh = match (&resumed, db, &previous) {
        (Some(listing), _, _) => listing.fresh,
        (None, Some(db), Some(_)) => db.progress(job.id)?.files_total == 0,
        _ => true,
    };
    job.planned = true;
    job.options = req.options.clone();
    job.state = JobState::Running;
    job.error = None;
    job.updated_ms = now;

    let mut names = match db {
        Some(db) if !req.dry_run => NameIndex::Db(db, job.id),
        _ => NameIndex::Memory(MemoryNames::default()),
    };
    let mut planner = Planner {
        db,
        req: &req,
        filter: &filter,
        naming: sink.naming(),
        limits: sink.limits(),
        job: job.id,
        next_index: match db {
            Some(db) => db.next_file_index(job.id)?,
            None => 0,
        },
        summary: resumed
            .as_ref()
            .and_then(|l| serde_json::from_value(l.summary.clone()).ok())
            .unwrap_or_default(),
        objects: Vec::new(),
        to_preview: Vec::new(),
    };
    let mut after = resumed.as_ref().and_then(|l| l.after.clone());
    if let Some(key) = &after {
        tracing::info!(
            "job {}: the listing goes on after `{key}`, its position recorded before it stopped",
            job.id
        );
    }
    let record_listing = |after: Option<String>, summary: &PlanSummary| {
        Write::Listing(
            job.id,
            Some(Listing {
                after,
                fresh,
                summary: serde_json::to_value(summary).unwrap_or_default(),
            }),
        )
    };
    if let Some(db) = db.filter(|_| !req.dry_run) {
        let mut writes = vec![
            Write::Job(job.clone()),
            record_listing(after.clone(), &planner.summary),
        ];
        if resumed.is_some() {
            // The pages planned before the stop are not listed again: their failed objects
            // get another chance here, as a loaded job's do.
            writes.push(Write::ReopenFailed {
                job: job.id,
                keep: Vec::new(),
                rule: crate::state::index::Reopen::OnLoad,
            });
        }
        apply(db, writes).await?;
    }
    if after.is_none() {
        // Names are decided afresh by every plan (after its listing is recorded as starting
        // over, so a stop part-way through clearing clears again).
        names.clear()?;
    }

    let mut existing = Existing::new(sink, dst, &req.retry, req.dry_run);
    loop {
        let (page, next) = match single.take() {
            Some(listing) => (listing, None),
            None => {
                let listed = req
                    .retry
                    .run(|| source.list_after(&src.key, after.as_deref(), PAGE))
                    .await
                    .map_err(source_failed)?;
                (listed.objects, listed.next)
            }
        };
        let slices: Vec<&[ObjectInfo]> = page.chunks(PAGE).collect();
        let count = slices.len().max(1);
        for n in 0..count {
            let slice = slices.get(n).copied().unwrap_or(&[]);
            // The slice covers the keys after `after` up to its last; the page's last slice,
            // up to the key the store says it covered (markers it left out included), and
            // the listing's last, to the end.
            let upto = if n + 1 == count {
                next.clone()
            } else {
                slice.last().map(|o| o.key.clone())
            };
            if slice.windows(2).any(|w| w[0].key >= w[1].key)
                || (slice.first()).is_some_and(|o| after.as_ref().is_some_and(|a| &o.key <= a))
            {
                return Err(PlanError::Source(format!(
                    "the source {src} listed its keys out of order; blobway plans a listing \
                     in key order"
                )));
            }
            let planned = planner
                .plan_slice(
                    slice,
                    after.as_deref(),
                    upto.as_deref(),
                    &mut names,
                    &mut existing,
                    sink,
                )
                .await?;
            if let Some(key) = upto.clone().or_else(|| slice.last().map(|o| o.key.clone())) {
                after = Some(key);
            }
            if let Some(db) = db.filter(|_| !req.dry_run) {
                let mut writes = planned.writes;
                writes.push(match upto {
                    None => Write::Listing(job.id, None),
                    Some(_) => record_listing(after.clone(), &planner.summary),
                });
                apply(db, writes).await?;
                super::transfer::give_up_uploads(sink, planned.stale, None).await;
                let go_on = on_page(PagePlanned {
                    job: job.id,
                    fresh,
                    failed: planned.failed,
                });
                if !go_on {
                    return Err(PlanError::Stopped);
                }
            }
        }
        if next.is_none() {
            break;
        }
    }
    let Planner {
        mut summary,
        mut objects,
        to_preview,
        ..
    } = planner;
    if req.dry_run {
        preview_metadata(
            source,
            sink,
            &req.options,
            &mut objects,
            &to_preview,
            &mut summary,
        )
        .await;
    }
    Ok(Plan {
        job,
        summary,
        objects,
    })
}

/// Objects planned (and recorded) per transaction, and asked of a store per listing page.
const PAGE: usize = 1000;

/// A page of a job's listing was planned and recorded.
#[derive(Debug)]
pub struct PagePlanned {
    /// The job.
    pub job: JobId,
    /// The job had no objects when its listing began: its objects may start at once.
    pub fresh: bool,
    /// Objects of the page that cannot be copied, to announce.
    pub failed: Vec<(u32, FileRecord)>,
}

/// What one slice of a listing amounts to.
struct SlicePlanned {
    writes: Vec<Write>,
    /// Upload sessions of objects planned afresh, to give up once the writes are durable.
    stale: Vec<(String, String)>,
    failed: Vec<(u32, FileRecord)>,
}

async fn apply(db: &StateDb, writes: Vec<Write>) -> Result<(), PlanError> {
    let db = db.clone();
    // Objects found identical at a local destination may be another run's writes not yet
    // on disk: synced before they are recorded done.
    tokio::task::spawn_blocking(move || {
        crate::store::sync_deferred().map_err(crate::state::StateError::Unsynced)?;
        db.apply(&writes)
    })
    .await
    .context("the planning task failed")??;
    Ok(())
}

/// A plan under way: what it has decided so far.
struct Planner<'a> {
    db: Option<&'a StateDb>,
    req: &'a PlanRequest<'a>,
    filter: &'a Filter,
    naming: Naming,
    limits: SinkLimits,
    job: JobId,
    next_index: u32,
    summary: PlanSummary,
    /// Every listed object and what happens to it (dry runs only).
    objects: Vec<PlannedObject>,
    /// Objects of a dry run to copy, whose metadata is looked at: (position, version).
    to_preview: Vec<(usize, String)>,
}

impl Planner<'_> {
    /// Plans `listing` (keys increasing, the listing's keys after `after` up to `upto`, or to
    /// its end): each object against what the job recorded for it and what the destination
    /// holds; recorded objects in that span that the source no longer lists are dropped
    /// unless finished.
    async fn plan_slice(
        &mut self,
        listing: &[ObjectInfo],
        after: Option<&str>,
        upto: Option<&str>,
        names: &mut NameIndex<'_>,
        existing: &mut Existing<'_>,
        sink: &dyn ObjectSink,
    ) -> Result<SlicePlanned, PlanError> {
        let req = self.req;
        let (src, dst) = (req.source, req.destination);
        let job = self.job;
        let mut out = SlicePlanned {
            writes: Vec::new(),
            stale: Vec::new(),
            failed: Vec::new(),
        };
        // Every admitted object's exact destination name, and the names two keys would share.
        let listing: Vec<&ObjectInfo> = listing
            .iter()
            .filter(|o| {
                let admitted = self.filter.admits(src, &o.key);
                if !admitted {
                    self.summary.filtered += 1;
                }
                admitted
            })
            .collect();
        let named: Vec<DestName> = listing
            .iter()
            .map(|o| {
                self.naming
                    .destination_name(&dst.destination_key(src, &o.key), o.size)
            })
            .collect();
        // A key the destination holds as it is claims its name before keys folded onto it
        // (`k/x/a.txt` before `k/x/./a.txt`), whatever the listing order within a page.
        let as_is: Vec<bool> = listing
            .iter()
            .zip(&named)
            .map(|(o, name)| matches!(name, DestName::Object(n) if *n == dst.destination_key(src, &o.key)))
            .collect();
        let clashes = claim_names(names, self.naming, &listing, &named, &as_is)?;
        // What the destination holds under each name, by a merge with its listing.
        let mut at_destination: BTreeMap<String, DestObject> = BTreeMap::new();
        for name in &named {
            if let DestName::Object(name) = name
                && let Some(found) = existing.find(name).await?
            {
                at_destination.insert(name.clone(), found);
            }
        }
        if !sink.listing_has_metadata() {
            let candidates: Vec<String> = listing
                .iter()
                .zip(&named)
                .filter_map(|(o, name)| match name {
                    DestName::Object(key) => Some((key.clone(), o.size)),
                    _ => None,
                })
                .filter(|(key, size)| at_destination.get(key).is_some_and(|d| d.size == *size))
                .map(|(key, _)| key)
                .collect();
            fill_metadata(sink, &req.retry, candidates, &mut at_destination).await;
        }
        // What the job recorded for these keys, and for keys in the span no longer listed.
        let mut old: HashMap<String, (u32, FileRecord, Vec<ChunkRecord>)> = HashMap::new();
        let mut gone: Vec<u32> = Vec::new();
        if let Some(db) = self.db {
            let keys: Vec<&str> = listing.iter().map(|o| o.key.as_str()).collect();
            old = db
                .recorded(job, &keys)?
                .into_iter()
                .map(|(i, f, c)| (f.key.clone(), (i, f, c)))
                .collect();
            let listed: std::collections::HashSet<&str> = keys.iter().copied().collect();
            gone = db
                .keys_between(job, after, upto)?
                .into_iter()
                .filter(|(key, _)| !listed.contains(key.as_str()))
                .map(|(_, index)| index)
                .collect();
        }
        for ((object, name), clash) in listing.iter().zip(named).zip(clashes) {
            self.plan_object(object, name, clash, &mut old, &at_destination, &mut out);
        }
        // Objects recorded earlier that are gone from the source: keep finished ones as
        // history, drop unfinished ones (there is nothing left to copy).
        if let (Some(db), false) = (self.db, gone.is_empty()) {
            for (index, file) in db.objects_at(job, &gone)? {
                if !matches!(file.state, FileState::Done | FileState::Skipped) {
                    out.stale.extend(file.open_upload());
                    out.writes.push(Write::RemoveFile(job, index));
                }
            }
        }
        Ok(out)
    }

    /// Plans one listed object: refused, already done, identical, or to copy (resuming what
    /// was recorded for it when its source version is unchanged).
    fn plan_object(
        &mut self,
        object: &ObjectInfo,
        name: DestName,
        clash: Option<NameClash>,
        old: &mut HashMap<String, (u32, FileRecord, Vec<ChunkRecord>)>,
        existing: &BTreeMap<String, DestObject>,
        out: &mut SlicePlanned,
    ) {
        let req = self.req;
        let (src, dst) = (req.source, req.destination);
        let job = self.job;
        let limits = self.limits;
        let summary = &mut self.summary;
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
                    out.stale.extend(old_file.open_upload());
                    out.writes.push(Write::RemoveFile(job, index));
                    index
                }
                None => {
                    self.next_index += 1;
                    self.next_index - 1
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
                    out.failed.push((index, file.clone()));
                    let why = file.error.as_ref().map_or("", |e| e.message.as_str());
                    format!("cannot copy: {why}")
                }
            };
            if req.dry_run {
                self.objects.push(planned_object(&file, 0, &action));
            }
            out.writes.push(Write::File(job, index, file));
            return;
        }
        let at_destination = existing.get(&dest_key);
        let (index, mut file, mut chunks) = match old.remove(&object.key) {
            Some((index, file, chunks)) if file.etag == object.etag && file.size == object.size => {
                (index, file, chunks)
            }
            Some((index, old_file, _)) => {
                out.stale.extend(old_file.open_upload());
                out.writes.push(Write::RemoveFile(job, index));
                let (file, chunks) = new_file(object, dest_key, req, limits);
                (index, file, chunks)
            }
            None => {
                let index = self.next_index;
                self.next_index += 1;
                let (file, chunks) = new_file(object, dest_key, req, limits);
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
                self.objects
                    .push(planned_object(&file, 0, "skip: done in an earlier run"));
            }
            return;
        }
        if identical(at_destination, object) {
            file.state = FileState::Skipped;
            file.note = Some("already identical at the destination".into());
            summary.identical += 1;
        } else if finished || (file.state == FileState::Failed && file.chunk_count == 0) {
            // Recorded as done but gone from the destination, or never plannable (settings
            // may have changed since): plan it afresh.
            out.stale.extend(file.open_upload());
            out.writes.push(Write::RemoveFile(job, index));
            (file, chunks) = new_file(object, file.dest_key.clone(), req, limits);
        } else if file.state == FileState::Failed {
            crate::state::index::reopen(&mut file, &mut chunks);
        }
        // Someone else's object under the name: replaced, left, or the object fails.
        if at_destination.is_some()
            && matches!(file.state, FileState::Transferring | FileState::Committing)
        {
            match req.options.if_exists {
                IfExists::Overwrite => summary.replaced += 1,
                IfExists::Skip => {
                    out.stale.extend(file.open_upload());
                    file.state = FileState::Skipped;
                    file.note =
                        Some("already at the destination; left as it is (--if-exists skip)".into());
                    summary.existing_skipped += 1;
                }
                IfExists::Fail => {
                    out.stale.extend(file.open_upload());
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
                // One GetObjectTagging per object (`--copy-tags`).
                summary.requests += u64::from(req.options.copy_tags);
                "copy".to_string()
            }
            FileState::Failed => {
                summary.rejected += 1;
                out.failed.push((index, file.clone()));
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
                self.to_preview
                    .push((self.objects.len(), file.etag.clone()));
            }
            self.objects.push(planned_object(&file, remaining, &action));
        }
        out.writes.push(Write::File(job, index, file));
        out.writes.extend(
            chunks
                .into_iter()
                .enumerate()
                .map(|(i, c)| Write::Chunk(job, index, i as u32, c)),
        );
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
        state: if sized.is_ok() {
            FileState::Transferring
        } else {
            FileState::Failed
        },
        error: sized.err().map(|message| crate::state::ErrorRecord {
            class: crate::store::ErrorClass::Invalid,
            status: None,
            message,
            at_ms: now_ms(),
        }),
        ..FileRecord::new(
            &object.key,
            dest_key,
            object.size,
            &object.etag,
            chunk_size,
            chunk_count,
        )
    };
    (file, vec![ChunkRecord::pending(); chunk_count as usize])
}
