//! The transactional checksums uploads carry for the store to check on arrival, and the
//! CRC-64/NVME blobway records for every chunk.

use serde::{Deserialize, Serialize};

/// Which transactional checksum uploads carry, for the store to check on arrival.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumKind {
    /// CRC-64/NVME (`x-ms-content-crc64`): cheap (tens of GB/s); Azure checks it.
    #[default]
    Crc64,
    /// MD5 (`Content-MD5`): ~0.5 GB/s per core; Azure and Azurite check it.
    Md5,
}

/// The transactional checksum of one upload's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// CRC-64/NVME.
    Crc64(u64),
    /// MD5.
    Md5([u8; 16]),
}

impl Checksum {
    /// The checksum of `kind` over `data`.
    pub fn of(kind: ChecksumKind, data: &[u8]) -> Self {
        match kind {
            ChecksumKind::Crc64 => Checksum::Crc64(crc64(data)),
            ChecksumKind::Md5 => {
                use md5::Digest;
                Checksum::Md5(md5::Md5::digest(data).into())
            }
        }
    }

    /// True when `data` has this checksum.
    pub fn matches(&self, data: &[u8]) -> bool {
        match self {
            Checksum::Crc64(crc) => crc64(data) == *crc,
            Checksum::Md5(_) => Checksum::of(ChecksumKind::Md5, data) == *self,
        }
    }
}

/// CRC-64/NVME of `data`, the CRC Azure (`x-ms-content-crc64`, little-endian) and S3
/// (`x-amz-checksum-crc64nvme`) use.
pub fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, data)
}
