//! How a copied object is shown to equal its source before it is committed: its chunks'
//! CRC-64s combined into one whole-object CRC-64/NVME ([`ObjectCrc`]), and the one rule
//! ([`verification`]) that decides from what is known then — that CRC, who computed it, and
//! the source's own full-object checksum — or refuses the commit when they disagree.

use crc_fast::CrcAlgorithm;

use crate::state::Verification;
use crate::store::{ErrorClass, StoreError};

/// An object's whole CRC-64/NVME, from its chunks' CRCs combined in block-list order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ObjectCrc {
    /// The CRC.
    pub value: u64,
    /// True when blobway computed every chunk's CRC over the bytes it read (and the
    /// destination checked each chunk's checksum as it arrived); false when the destination
    /// reported some of them for bytes the stores copied themselves.
    pub read: bool,
}

impl ObjectCrc {
    /// From each chunk's CRC (`None` when unknown), whether the destination reported it, and
    /// its length, in order; none when a chunk's CRC is unknown.
    pub fn of(chunks: impl IntoIterator<Item = (Option<u64>, bool, u64)>) -> Option<Self> {
        let mut read = true;
        let parts: Option<Vec<(u64, u64)>> = chunks
            .into_iter()
            .map(|(crc, reported, len)| {
                read &= !reported;
                crc.map(|crc| (crc, len))
            })
            .collect();
        Some(Self {
            value: combine_crc64(parts?),
            read,
        })
    }
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

/// How `key` is verified when its chunks combine to `crc` (none when a chunk's CRC is
/// unknown) and the source vouches for `source` (its own full-object CRC-64/NVME, when it
/// keeps one): the source's checksum where both are known, else blobway's own CRCs where
/// blobway read the bytes, else only the size and the version — its version ID where every
/// read named one (`by_version_id`), else its ETag. A combined CRC that differs from the
/// source's fails the object before its commit: the bytes staged are not the source's.
pub fn verification(
    key: &str,
    crc: Option<ObjectCrc>,
    source: Option<u64>,
    by_version_id: bool,
) -> Result<Verification, StoreError> {
    match (crc, source) {
        (Some(crc), Some(source)) if crc.value == source => Ok(Verification::SourceChecksum),
        (Some(crc), Some(source)) => Err(StoreError::new(
            ErrorClass::Damaged,
            None,
            format!(
                "`{key}`: the copied chunks combine to CRC-64/NVME {:016x}, but the source's own \
                 checksum is {source:016x}: the copy was damaged, or the source rewritten under \
                 the same version; nothing was committed, and the object is copied again from \
                 the start",
                crc.value
            ),
        )),
        (Some(crc), None) if crc.read => Ok(Verification::BlobwayCrc),
        _ if by_version_id => Ok(Verification::SizeAndVersionId),
        _ => Ok(Verification::SizeAndEtag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn crc(data: &[u8]) -> u64 {
        crc_fast::checksum(CrcAlgorithm::Crc64Nvme, data)
    }

    #[test]
    fn combined_chunk_crcs_equal_the_whole_object_crc() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let parts = data.chunks(7_777).map(|c| (crc(c), c.len() as u64));
        assert_eq!(combine_crc64(parts), crc(&data));
        assert_eq!(
            crc(b"123456789"),
            0xae8b_1486_0a79_9888,
            "the CRC-64/NVME check value"
        );
        assert_eq!(combine_crc64([]), crc(b""), "an empty object");
    }

    #[test]
    fn the_strongest_evidence_known_decides() {
        let read = Some(ObjectCrc {
            value: 7,
            read: true,
        });
        let reported = Some(ObjectCrc {
            value: 7,
            read: false,
        });
        for by_version_id in [false, true] {
            let verdict = |crc, source| verification("k", crc, source, by_version_id).ok();
            assert_eq!(verdict(read, Some(7)), Some(Verification::SourceChecksum));
            assert_eq!(
                verdict(reported, Some(7)),
                Some(Verification::SourceChecksum)
            );
            assert_eq!(verdict(read, None), Some(Verification::BlobwayCrc));
            let version = if by_version_id {
                Verification::SizeAndVersionId
            } else {
                Verification::SizeAndEtag
            };
            assert_eq!(verdict(reported, None), Some(version));
            // A chunk copied by name (S3 → S3) has no CRC: nothing to compare the source's
            // with.
            assert_eq!(verdict(None, Some(7)), Some(version));
        }
        let refused = verification("logs/a b", reported, Some(8), true).expect_err("mismatch");
        assert_eq!(refused.class, ErrorClass::Damaged);
        assert!(
            refused.message.contains("`logs/a b`"),
            "{}",
            refused.message
        );
        assert!(
            refused.message.contains("0000000000000008"),
            "{}",
            refused.message
        );
    }

    #[test]
    fn a_chunk_without_a_crc_leaves_the_object_without_one() {
        assert_eq!(ObjectCrc::of([(Some(1), false, 4), (None, false, 4)]), None);
        let mixed = ObjectCrc::of([(Some(crc(b"ab")), false, 2), (Some(crc(b"cd")), true, 2)]);
        assert_eq!(
            mixed,
            Some(ObjectCrc {
                value: crc(b"abcd"),
                read: false
            })
        );
    }

    proptest! {
        /// However an object is cut into chunks, and whoever computed their CRCs, the
        /// combined CRC matches the source's own checksum exactly when the bytes are the
        /// source's.
        #[test]
        fn a_source_checksum_passes_exactly_the_source_bytes(
            data in proptest::collection::vec(any::<u8>(), 0..2_000),
            cut in 1usize..700,
            reported in any::<bool>(),
            flip in proptest::option::of((any::<proptest::sample::Index>(), 1u8..=255)),
        ) {
            let source = crc(&data);
            let mut copied = data.clone();
            if let Some((at, bits)) = flip.filter(|_| !data.is_empty()) {
                copied[at.index(data.len())] ^= bits;
            }
            let chunks = copied
                .chunks(cut)
                .map(|c| (Some(crc(c)), reported, c.len() as u64));
            let object = ObjectCrc::of(chunks);
            let verdict = verification("k", object, Some(source), reported);
            prop_assert_eq!(verdict.is_ok(), copied == data);
            if copied == data {
                prop_assert_eq!(verdict.ok(), Some(Verification::SourceChecksum));
            }
        }
    }
}
