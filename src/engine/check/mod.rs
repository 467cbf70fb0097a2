//! `blobway check SRC DST`: compares a source and a destination object by object — missing,
//! extra, size, the source version blobway recorded with each copy, and with `--download` the
//! bytes — and says how each object was verified. Both listings are merged by the name each
//! object has at the destination ([`compare`]); nothing is written anywhere.

pub mod compare;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::BytesMut;
use futures::StreamExt;
use serde::Serialize;

use super::StoreFactory;
use super::filter::Filter;
use super::retry::RetryPolicy;
use crate::location::Location;
use crate::store::rules::DestName;
use crate::store::{Access, DestObject, ObjectInfo, ObjectSink, ObjectSource};
use compare::{Listed, Pair, Verified, judge, merge};

/// Bytes compared per read with `--download`.
const COMPARE_CHUNK: u64 = 8 << 20;

/// What to compare.
#[derive(Clone, Debug)]
pub struct CheckRequest {
    /// The source location.
    pub source: Location,
    /// The destination location.
    pub destination: Location,
    /// Access to the source (AWS profile, endpoint).
    pub source_access: Access,
    /// Access to the destination.
    pub dest_access: Access,
    /// Only names matching one of these globs (all when empty), on both sides.
    pub include: Vec<String>,
    /// Names matching one of these are left out, on both sides.
    pub exclude: Vec<String>,
    /// Read and compare every byte of objects the listings call identical or cannot tell.
    pub download: bool,
    /// Objects compared at once with `--download`.
    pub checkers: usize,
}

/// The verdict on one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The same at both ends.
    Identical,
    /// At the source, not at the destination.
    Missing,
    /// At the destination, not at the source.
    Extra,
    /// At both, not the same.
    Differ,
    /// Could not be compared.
    Error,
}

impl Outcome {
    /// The mark `rclone check --combined` uses.
    pub fn mark(self) -> char {
        match self {
            Outcome::Identical => '=',
            Outcome::Missing => '-',
            Outcome::Extra => '+',
            Outcome::Differ => '*',
            Outcome::Error => '!',
        }
    }
}

/// One object's line in the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// The object's path under the compared locations.
    pub path: String,
    /// The verdict.
    pub result: Outcome,
    /// How an identical object was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verified>,
    /// Why it differs, or what failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Verdict {
    /// As a line of `rclone check --combined`, with the verification or the reason.
    pub fn line(&self) -> String {
        let mut line = format!("{} {}", self.result.mark(), self.path);
        if let Some(verified) = self.verified {
            line.push_str(&format!("  ({})", verified.label()));
        }
        if let Some(detail) = &self.detail {
            line.push_str(&format!("  {detail}"));
        }
        line
    }
}

/// Counts by verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckSummary {
    /// Identical, every byte compared.
    pub identical_bytes: u64,
    /// Identical by size and recorded source version.
    pub identical_version: u64,
    /// Identical by size only.
    pub identical_size: u64,
    /// At the source only.
    pub missing: u64,
    /// At the destination only.
    pub extra: u64,
    /// Different.
    pub differ: u64,
    /// Not compared.
    pub errors: u64,
}

impl CheckSummary {
    fn count(&mut self, verdict: &Verdict) {
        match (verdict.result, verdict.verified) {
            (Outcome::Identical, Some(Verified::Bytes)) => self.identical_bytes += 1,
            (Outcome::Identical, Some(Verified::SizeAndVersion)) => self.identical_version += 1,
            (Outcome::Identical, _) => self.identical_size += 1,
            (Outcome::Missing, _) => self.missing += 1,
            (Outcome::Extra, _) => self.extra += 1,
            (Outcome::Differ, _) => self.differ += 1,
            (Outcome::Error, _) => self.errors += 1,
        }
    }

    /// Objects identical by any verification.
    pub fn identical(&self) -> u64 {
        self.identical_bytes + self.identical_version + self.identical_size
    }

    /// True when both ends hold the same objects.
    pub fn all_match(&self) -> bool {
        self.missing + self.extra + self.differ + self.errors == 0
    }

    /// One sentence.
    pub fn sentence(&self) -> String {
        format!(
            "{} identical ({} by bytes, {} by size+version, {} by size only), {} missing at the \
             destination, {} extra at the destination, {} differ, {} could not be compared",
            self.identical(),
            self.identical_bytes,
            self.identical_version,
            self.identical_size,
            self.missing,
            self.extra,
            self.differ,
            self.errors
        )
    }
}

/// One source object as the check pairs it: its path, and the object.
struct Listing {
    path: String,
    object: ObjectInfo,
}

/// Compares the two locations; `on_verdict` is called for each object, in name order. The
/// error is for what stops the whole check (a location that cannot be listed, bad filters).
pub async fn check(
    stores: &dyn StoreFactory,
    req: &CheckRequest,
    mut on_verdict: impl FnMut(&Verdict),
) -> anyhow::Result<CheckSummary> {
    let (src, dst) = (&req.source, &req.destination);
    let filter = Filter::new(&req.include, &req.exclude)?;
    let source = stores.source(src, &req.source_access).await?;
    let sink = stores.sink(dst, &req.dest_access).await?;
    let retry = RetryPolicy::default();
    let listing = retry
        .run(|| source.list(&src.key, !src.is_prefix()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the source {src}: {e}"))?;
    let mut existing = list_destination(sink.as_ref(), dst, &retry).await?;
    let naming = sink.naming();

    let mut summary = CheckSummary::default();
    let mut emit = |verdict: Verdict, summary: &mut CheckSummary| {
        summary.count(&verdict);
        on_verdict(&verdict);
    };
    // Source objects by the name they have at the destination.
    let mut by_name: BTreeMap<String, Listing> = BTreeMap::new();
    for object in listing {
        if !filter.admits(src, &object.key) {
            continue;
        }
        let path = src.path_of(&object.key).to_string();
        match naming.destination_name(&dst.destination_key(src, &object.key), object.size) {
            DestName::Object(name) => {
                if let Some(first) = by_name.get(&name) {
                    let detail = format!(
                        "has the same name at the destination as {}; only one can be there",
                        first.path
                    );
                    emit(error(path, detail), &mut summary);
                    continue;
                }
                by_name.insert(name, Listing { path, object });
            }
            DestName::FolderMarker => {}
            DestName::Refused(why) => {
                let detail = format!("the destination cannot hold this name: {why}");
                emit(error(path, detail), &mut summary);
            }
        }
    }
    if !sink.listing_has_metadata() {
        // The recorded source version is read only where the sizes already agree (S3
        // listings carry no metadata).
        let same_size: Vec<String> = by_name
            .iter()
            .filter(|(name, s)| existing.get(*name).is_some_and(|d| d.size == s.object.size))
            .map(|(name, _)| name.clone())
            .collect();
        super::plan::fill_metadata(sink.as_ref(), &retry, same_size, &mut existing).await;
    }
    let existing: Vec<(String, DestObject)> = existing
        .into_iter()
        .filter(|(key, _)| filter.admits(dst, key))
        .collect();
    let to_read = if req.download {
        Some(open_destination_reader(stores, req).await?)
    } else {
        None
    };

    let pairs = merge(by_name, existing);
    let mut judged = futures::stream::iter(pairs)
        .map(|pair| {
            let (source, to_read) = (source.clone(), to_read.clone());
            async move {
                let (name, pair) = pair?;
                anyhow::Ok(decide(source.as_ref(), to_read.as_deref(), dst, name, pair).await)
            }
        })
        .buffered(req.checkers.max(1));
    while let Some(verdict) = judged.next().await {
        emit(verdict?, &mut summary);
    }
    Ok(summary)
}

/// What the destination holds under its location.
async fn list_destination(
    sink: &dyn ObjectSink,
    dst: &Location,
    retry: &RetryPolicy,
) -> anyhow::Result<BTreeMap<String, DestObject>> {
    let listed = if dst.is_prefix() {
        retry.run(|| sink.list_existing(&dst.key)).await
    } else {
        retry
            .run(|| sink.head(&dst.key))
            .await
            .map(|d| d.map(|d| (dst.key.clone(), d)).into_iter().collect())
    };
    listed.map_err(|e| anyhow::anyhow!("cannot list the destination {dst}: {e}"))
}

/// The destination opened for reading, for `--download`.
async fn open_destination_reader(
    stores: &dyn StoreFactory,
    req: &CheckRequest,
) -> anyhow::Result<Arc<dyn ObjectSource>> {
    stores
        .source(&req.destination, &req.dest_access)
        .await
        .map_err(|e| {
            anyhow::anyhow!("--download reads the destination, which cannot be read: {e:#}")
        })
}

fn error(path: String, detail: String) -> Verdict {
    Verdict {
        path,
        result: Outcome::Error,
        verified: None,
        detail: Some(detail),
    }
}

/// The verdict on one pair: from the listings, and with `to_read` from the bytes of every
/// pair of the same size.
async fn decide(
    source: &dyn ObjectSource,
    to_read: Option<&dyn ObjectSource>,
    dst: &Location,
    name: String,
    pair: Pair<Listing, DestObject>,
) -> Verdict {
    let (path, listed) = match &pair {
        Pair::SourceOnly(s) => (s.path.clone(), judge(Some(&s.object), None)),
        Pair::DestOnly(d) => (dst.path_of(&name).to_string(), judge(None, Some(d))),
        Pair::Both(s, d) => (s.path.clone(), judge(Some(&s.object), Some(d))),
    };
    let verdict = |result, verified, detail: Option<String>| Verdict {
        path: path.clone(),
        result,
        verified,
        detail,
    };
    let same_size = matches!(listed, Listed::Same(_) | Listed::VersionDiffers { .. });
    if let (Some(reader), Pair::Both(s, _), true) = (to_read, &pair, same_size) {
        return match same_bytes(source, reader, &s.object, &name).await {
            Ok(None) => verdict(Outcome::Identical, Some(Verified::Bytes), None),
            Ok(Some(offset)) => verdict(
                Outcome::Differ,
                None,
                Some(format!("the bytes differ from offset {offset}")),
            ),
            Err(e) => verdict(
                Outcome::Error,
                None,
                Some(format!("cannot compare the bytes: {e}")),
            ),
        };
    }
    match listed {
        Listed::Missing => verdict(Outcome::Missing, None, None),
        Listed::Extra => verdict(Outcome::Extra, None, None),
        Listed::SizeDiffers {
            source,
            destination,
        } => verdict(
            Outcome::Differ,
            None,
            Some(format!(
                "{source} bytes at the source, {destination} at the destination"
            )),
        ),
        Listed::VersionDiffers { recorded, source } => verdict(
            Outcome::Differ,
            None,
            Some(format!(
                "copied from source version {recorded}; the source is now {source} \
                 (--download compares the bytes)"
            )),
        ),
        Listed::Same(verified) => verdict(Outcome::Identical, Some(verified), None),
    }
}

/// Reads both objects in step and returns the first offset where they differ (`None`: the
/// same bytes). Memory: two chunks of [`COMPARE_CHUNK`].
async fn same_bytes(
    source: &dyn ObjectSource,
    destination: &dyn ObjectSource,
    object: &ObjectInfo,
    name: &str,
) -> anyhow::Result<Option<u64>> {
    let found = destination
        .list(name, true)
        .await
        .map_err(|e| anyhow::anyhow!("at the destination: {e}"))?;
    let Some(there) = found.into_iter().next() else {
        anyhow::bail!("the destination object is gone");
    };
    let retry = RetryPolicy::default();
    let mut offset = 0;
    while offset < object.size {
        let range = offset..(offset + COMPARE_CHUNK).min(object.size);
        let (a, b) = tokio::try_join!(
            retry.run(|| source.read_range(
                &object.key,
                &object.etag,
                range.clone(),
                BytesMut::new()
            )),
            retry.run(|| destination.read_range(name, &there.etag, range.clone(), BytesMut::new())),
        )?;
        if let Some(at) = a.data.iter().zip(b.data.iter()).position(|(x, y)| x != y) {
            return Ok(Some(offset + at as u64));
        }
        if a.data.len() != b.data.len() {
            return Ok(Some(offset + a.data.len().min(b.data.len()) as u64));
        }
        offset = range.end;
    }
    Ok(None)
}
