//! The data plane, one unit of work at a time, stateless: a chunk is one ranged read pinned to
//! the planned version, checksummed (CRC-64/NVME for the end-to-end record and, by default, as
//! the transactional checksum the store verifies on arrival; MD5 on request), and one block
//! upload — or one whole-object put for an object that fits in a chunk. A commit checks the staged block list against the plan before the one atomic
//! commit. Bytes live in memory only between the read and the upload.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use crc_fast::CrcAlgorithm;

use super::buffers::BufferPool;
use crate::store::{
    BlockRef, Checksum, ChecksumKind, ObjectMeta, ObjectSink, ObjectSource, StoreError,
    StoreResult, meta_keys,
};

/// One chunk to move.
#[derive(Clone)]
pub struct ChunkWork {
    /// Where from.
    pub source: Arc<dyn ObjectSource>,
    /// Where to.
    pub sink: Arc<dyn ObjectSink>,
    /// Source key.
    pub key: String,
    /// Destination key.
    pub dest_key: String,
    /// The planned source version.
    pub etag: String,
    /// Bytes of the source object this chunk covers.
    pub range: Range<u64>,
    /// Chunk index.
    pub index: u32,
    /// Deterministic block ID.
    pub block_id: String,
    /// For an object that is a single chunk: the metadata to put it with (as a whole).
    pub whole: Option<ObjectMeta>,
    /// The transactional checksum the upload carries.
    pub checksum: ChecksumKind,
    /// Where the chunk's buffer comes from and goes back to.
    pub buffers: Arc<BufferPool>,
}

/// What a moved chunk reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkMoved {
    /// Bytes moved.
    pub bytes: u64,
    /// CRC-64/NVME of those bytes.
    pub crc64: u64,
}

/// Reads, checksums and writes one chunk.
pub async fn move_chunk(work: &ChunkWork) -> StoreResult<ChunkMoved> {
    let expected = work.range.end - work.range.start;
    let buffer = work.buffers.take(expected as usize);
    let data = work
        .source
        .read_range(&work.key, &work.etag, work.range.clone(), buffer)
        .await?;
    let moved = send_chunk(work, data.clone(), expected).await;
    work.buffers.give_back(data, expected as usize);
    moved
}

/// Checks, checksums and uploads the bytes of one chunk.
async fn send_chunk(work: &ChunkWork, data: Bytes, expected: u64) -> StoreResult<ChunkMoved> {
    if data.len() as u64 != expected {
        return Err(StoreError::transient(format!(
            "read {} bytes of `{}` where {expected} were planned",
            data.len(),
            work.key
        )));
    }
    let (checksum, crc64) = checksums(data.clone(), work.checksum).await?;
    match &work.whole {
        Some(meta) => {
            let mut meta = meta.clone();
            meta.pairs
                .insert(meta_keys::CRC64NVME.into(), format!("{crc64:016x}"));
            work.sink
                .put_whole(&work.dest_key, data, checksum, &meta)
                .await?;
        }
        None => {
            let block = BlockRef {
                index: work.index,
                id: &work.block_id,
                checksum,
            };
            work.sink.put_block(&work.dest_key, block, data).await?;
        }
    }
    Ok(ChunkMoved {
        bytes: expected,
        crc64,
    })
}

/// The transactional checksum of `kind` and the CRC-64/NVME of `data` (one pass when they are
/// the same), computed off the async threads.
async fn checksums(data: Bytes, kind: ChecksumKind) -> StoreResult<(Checksum, u64)> {
    tokio::task::spawn_blocking(move || {
        let crc = crate::store::crc64(&data);
        let transactional = match kind {
            ChecksumKind::Crc64 => Checksum::Crc64(crc),
            ChecksumKind::Md5 => Checksum::of(ChecksumKind::Md5, &data),
        };
        (transactional, crc)
    })
    .await
    .map_err(|e| StoreError::transient(format!("checksum task failed: {e}")))
}

/// The whole-object CRC-64/NVME from per-chunk CRCs and lengths, in order.
pub fn combine_crc64(parts: impl IntoIterator<Item = (u64, u64)>) -> u64 {
    let mut parts = parts.into_iter();
    let Some((mut crc, _)) = parts.next() else {
        return crc_fast::checksum(CrcAlgorithm::Crc64Nvme, b"");
    };
    for (next, len) in parts {
        crc = crc_fast::checksum_combine(CrcAlgorithm::Crc64Nvme, crc, next, len);
    }
    crc
}

/// One object whose chunks are all staged, ready for verify-then-commit.
#[derive(Clone)]
pub struct CommitWork {
    /// Where to.
    pub sink: Arc<dyn ObjectSink>,
    /// Destination key.
    pub dest_key: String,
    /// Every block in order: ID and size.
    pub blocks: Vec<(String, u64)>,
    /// Metadata to commit with.
    pub meta: ObjectMeta,
}

/// How a commit ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The object is visible and complete.
    Committed,
    /// These chunks are not (or no longer) staged as planned; they must be sent again.
    Missing(Vec<u32>),
}

/// Lists the staged blocks, compares them with the plan (IDs and sizes), and commits only when
/// every block is there.
pub async fn verify_and_commit(work: &CommitWork) -> StoreResult<CommitOutcome> {
    let staged: std::collections::HashMap<String, u64> = work
        .sink
        .staged_blocks(&work.dest_key)
        .await?
        .into_iter()
        .map(|b| (b.id, b.size))
        .collect();
    let missing: Vec<u32> = work
        .blocks
        .iter()
        .enumerate()
        .filter(|(_, (id, size))| staged.get(id) != Some(size))
        .map(|(i, _)| i as u32)
        .collect();
    if !missing.is_empty() {
        // A crash between the commit and its record leaves nothing staged: if the destination
        // already holds this very version, committed by blobway, the commit happened.
        let total: u64 = work.blocks.iter().map(|(_, size)| size).sum();
        let committed = work.sink.head(&work.dest_key).await?.is_some_and(|d| {
            d.size == total
                && d.meta.get(meta_keys::SOURCE_ETAG) == work.meta.pairs.get(meta_keys::SOURCE_ETAG)
        });
        if committed {
            return Ok(CommitOutcome::Committed);
        }
        return Ok(CommitOutcome::Missing(missing));
    }
    let ids: Vec<String> = work.blocks.iter().map(|(id, _)| id.clone()).collect();
    work.sink.commit(&work.dest_key, &ids, &work.meta).await?;
    Ok(CommitOutcome::Committed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    #[test]
    fn combined_chunk_crcs_equal_the_whole_object_crc() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let whole = crc_fast::checksum(CrcAlgorithm::Crc64Nvme, &data);
        let parts = data.chunks(7_777).map(|c| {
            (
                crc_fast::checksum(CrcAlgorithm::Crc64Nvme, c),
                c.len() as u64,
            )
        });
        assert_eq!(combine_crc64(parts), whole);
        assert_eq!(
            crc_fast::checksum(CrcAlgorithm::Crc64Nvme, b"123456789"),
            0xae8b_1486_0a79_9888,
            "the CRC-64/NVME check value"
        );
    }

    #[tokio::test]
    async fn moves_chunks_then_commits_only_when_all_are_staged() {
        let src = tempfile::tempdir().expect("src");
        let dst = tempfile::tempdir().expect("dst");
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(src.path().join("f.bin"), &data).expect("write");
        let source: Arc<dyn ObjectSource> = Arc::new(LocalStore::new(src.path()));
        let sink: Arc<dyn ObjectSink> = Arc::new(LocalStore::new(dst.path()));
        sink.prepare().await.expect("prepare");
        let etag = source.list("", false).await.expect("list")[0].etag.clone();
        let chunk = 4_000u64;
        let ids: Vec<String> = (0..3)
            .map(|i| crate::engine::plan::block_id(&etag, 10_000, chunk, i))
            .collect();
        let commit = CommitWork {
            sink: sink.clone(),
            dest_key: "out/f.bin".into(),
            blocks: ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.clone(), (chunk).min(10_000 - i as u64 * chunk)))
                .collect(),
            meta: ObjectMeta::default(),
        };
        for i in [0u32, 2] {
            let work = ChunkWork {
                source: source.clone(),
                sink: sink.clone(),
                key: "f.bin".into(),
                dest_key: "out/f.bin".into(),
                etag: etag.clone(),
                range: u64::from(i) * chunk..(u64::from(i + 1) * chunk).min(10_000),
                index: i,
                block_id: ids[i as usize].clone(),
                whole: None,
                checksum: ChecksumKind::Md5,
                buffers: Arc::new(BufferPool::new(1 << 20)),
            };
            move_chunk(&work).await.expect("moved");
        }
        assert_eq!(
            verify_and_commit(&commit).await,
            Ok(CommitOutcome::Missing(vec![1]))
        );
        assert!(
            !dst.path().join("out/f.bin").exists(),
            "nothing visible before the commit"
        );
        let work = ChunkWork {
            source: source.clone(),
            sink: sink.clone(),
            key: "f.bin".into(),
            dest_key: "out/f.bin".into(),
            etag: etag.clone(),
            range: chunk..2 * chunk,
            index: 1,
            block_id: ids[1].clone(),
            whole: None,
            checksum: ChecksumKind::Md5,
            buffers: Arc::new(BufferPool::new(1 << 20)),
        };
        move_chunk(&work).await.expect("moved");
        assert_eq!(
            verify_and_commit(&commit).await,
            Ok(CommitOutcome::Committed)
        );
        assert_eq!(
            std::fs::read(dst.path().join("out/f.bin")).expect("read"),
            data
        );

        // A crash right after that commit, before it was recorded: the next attempt finds
        // nothing staged but recognises its own commit, and sends nothing again.
        let mut recorded = commit.clone();
        recorded
            .meta
            .pairs
            .insert(meta_keys::SOURCE_ETAG.into(), etag.clone());
        assert_eq!(
            verify_and_commit(&recorded).await,
            Ok(CommitOutcome::Missing(vec![0, 1, 2])),
            "the first commit carried no version, so it is not recognised"
        );
        move_chunks_and_commit(&source, &sink, &etag, &ids, chunk, &recorded).await;
        assert_eq!(
            verify_and_commit(&recorded).await,
            Ok(CommitOutcome::Committed)
        );
        let mut other_version = recorded.clone();
        other_version
            .meta
            .pairs
            .insert(meta_keys::SOURCE_ETAG.into(), "\"other\"".into());
        assert_eq!(
            verify_and_commit(&other_version).await,
            Ok(CommitOutcome::Missing(vec![0, 1, 2])),
            "another version's commit does not count"
        );
    }

    async fn move_chunks_and_commit(
        source: &Arc<dyn ObjectSource>,
        sink: &Arc<dyn ObjectSink>,
        etag: &str,
        ids: &[String],
        chunk: u64,
        commit: &CommitWork,
    ) {
        for (i, id) in ids.iter().enumerate() {
            let i = i as u32;
            let work = ChunkWork {
                source: source.clone(),
                sink: sink.clone(),
                key: "f.bin".into(),
                dest_key: commit.dest_key.clone(),
                etag: etag.to_string(),
                range: u64::from(i) * chunk..(u64::from(i + 1) * chunk).min(10_000),
                index: i,
                block_id: id.clone(),
                whole: None,
                checksum: ChecksumKind::Md5,
                buffers: Arc::new(BufferPool::new(1 << 20)),
            };
            move_chunk(&work).await.expect("moved");
        }
        assert_eq!(
            verify_and_commit(commit).await,
            Ok(CommitOutcome::Committed)
        );
    }
}
