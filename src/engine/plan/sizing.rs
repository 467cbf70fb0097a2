//! Sizing: chunk sizes within a destination's limits and the memory budget, chunk counts, and
//! the deterministic, version-bound block IDs.

use super::*;

pub(super) const MIB: u64 = 1 << 20;

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
        shared_blocks: true,
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
