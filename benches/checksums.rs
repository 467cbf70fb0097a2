//! Throughput of the two transactional checksums a block upload can carry, on this machine:
//! MD5 (Content-MD5, which Azurite and Azure verify) and CRC-64/NVME (x-ms-content-crc64, and
//! S3's full-object checksum). Prints a table; `cargo bench --bench checksums`.

use std::time::Instant;

use md5::{Digest, Md5};

fn main() {
    let data: Vec<u8> = (0..256u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mib = data.len() as f64 / f64::from(1u32 << 20);
    println!("| checksum | MiB/s (256 MiB buffer, best of 3) |");
    println!("|---|---|");
    let md5 = best_of(3, || {
        std::hint::black_box(Md5::digest(&data));
    });
    println!("| MD5 (md-5) | {:.0} |", mib / md5);
    let crc = best_of(3, || {
        std::hint::black_box(crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, &data));
    });
    println!("| CRC-64/NVME (crc-fast) | {:.0} |", mib / crc);
}

fn best_of(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}
