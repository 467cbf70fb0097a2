//! What planning reads of metadata: the destination objects that may be identical (an S3
//! listing has none), and, for a dry run, what each object's metadata will become.

use super::*;

/// How many destination objects are looked at (HEAD) at once while planning.
pub(super) const HEAD_CONCURRENCY: usize = 16;

/// Fetches the metadata of the destination objects in `keys` (those whose size matches their
/// source) into `existing`. One that cannot be looked at (no permission, a key blobway lacks)
/// keeps no metadata, so it counts as different and is copied.
pub(crate) async fn fill_metadata(
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

/// For a dry run: reads the metadata of every object to copy (one metadata read each, 16 at a
/// time — listings carry none), and its tags with `--copy-tags`, and says what the
/// destination will hold of them, as the copy will decide it ([`map_metadata`],
/// [`crate::store::tags::TagRules::check`]).
pub(super) async fn preview_metadata(
    source: &dyn ObjectSource,
    sink: &dyn ObjectSink,
    options: &JobOptions,
    objects: &mut [PlannedObject],
    to_preview: &[(usize, String)],
    summary: &mut PlanSummary,
) {
    use futures::StreamExt;
    let (policy, copy_tags) = (options.invalid_metadata, options.copy_tags);
    let rules = sink.meta_rules();
    let wanted: Vec<(usize, String, String)> = to_preview
        .iter()
        .map(|(at, etag)| (*at, objects[*at].key.clone(), etag.clone()))
        .collect();
    type Found = (
        usize,
        StoreResult<crate::store::Chunk>,
        Option<StoreResult<crate::store::tags::Tags>>,
    );
    let found: Vec<Found> = futures::stream::iter(wanted)
        .map(|(at, key, etag)| async move {
            let read = source
                .read_range(&key, &etag, 0..0, bytes::BytesMut::new())
                .await;
            let tags = match copy_tags {
                true => Some(source.tags(&key).await),
                false => None,
            };
            (at, read, tags)
        })
        .buffer_unordered(HEAD_CONCURRENCY)
        .collect()
        .await;
    for (at, read, tags) in found {
        let object = &mut objects[at];
        let refused_tags = match (tags, sink.tag_rules()) {
            (Some(Ok(tags)), Some(rules)) => rules.check(&tags).err(),
            (Some(Err(e)), _) => {
                tracing::warn!(key = %object.key, "cannot read the object's tags: {e}");
                None
            }
            _ => None,
        };
        if let Some(why) = refused_tags {
            summary.tags_refused += 1;
            object.action = format!("cannot copy: {why} (--copy-tags)");
            continue;
        }
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
