//! `blobway demo`: a first run without a cloud account. It writes a handful of sample files
//! (a few MiB to a few hundred MiB, one of several hundred chunks) into a local source folder
//! and copies them through the same engine to a local destination that honours the same
//! stage/commit protocol as Azure (blocks staged as files, one atomic rename on commit), behind
//! a simulated link so the copy moves at a watchable pace (optionally with chaos).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::engine::StoreFactory;
use crate::location::Location;
use crate::store::simulated::{LinkSettings, SimulatedLink};
use crate::store::{Access, ObjectSink, ObjectSource, StoreSettings};

const MIB: u64 = 1 << 20;

/// The sample files: path under the source folder, and size.
pub const SAMPLES: &[(&str, u64)] = &[
    ("logs/gateway-2026-11-21.log", 3 * MIB),
    ("logs/gateway-2026-11-22.log", 5 * MIB + 12_345),
    ("db/orders-backup.sql.gz", 48 * MIB),
    ("media/keynote-4k.mov", 320 * MIB),
    ("media/thumbnails/cover.jpg", 180_000),
    ("media/thumbnails/cover-small.jpg", 24_000),
    ("config/settings.json", 2_048),
    ("config/empty.marker", 0),
];

/// The chunk size the demo copies with: small, so the big sample has hundreds of chunks.
pub const DEMO_CHUNK_SIZE: u64 = MIB;

/// Where a demo lives.
#[derive(Clone, Debug)]
pub struct DemoLayout {
    /// The folder holding everything.
    pub root: PathBuf,
    /// Sample files.
    pub source: PathBuf,
    /// Where they are copied to.
    pub destination: PathBuf,
    /// The demo's own state file.
    pub state: PathBuf,
}

impl DemoLayout {
    /// The layout under `root`.
    pub fn under(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            source: root.join("source"),
            destination: root.join("destination"),
            state: root.join("state.redb"),
        }
    }

    /// The default demo folder: `$XDG_DATA_HOME/blobway/demo`.
    pub fn default_root() -> PathBuf {
        dirs::data_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("blobway")
            .join("demo")
    }

    /// Writes any missing sample file and, when `fresh`, empties the destination and forgets
    /// the previous demo run, so the demo always shows a transfer.
    pub fn prepare(&self, fresh: bool) -> io::Result<()> {
        for (seed, (name, size)) in SAMPLES.iter().enumerate() {
            let path = self.source.join(name);
            let present = fs::metadata(&path).is_ok_and(|m| m.len() == *size);
            if !present {
                write_sample(&path, *size, seed as u64 + 1)?;
            }
        }
        if fresh {
            if self.destination.exists() {
                fs::remove_dir_all(&self.destination)?;
            }
            if self.state.exists() {
                fs::remove_file(&self.state)?;
            }
        }
        fs::create_dir_all(&self.destination)
    }
}

/// Writes `size` pseudo-random bytes (xorshift; incompressible, deterministic per seed).
fn write_sample(path: &Path, size: u64, seed: u64) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut out = io::BufWriter::with_capacity(MIB as usize, fs::File::create(path)?);
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()
}

/// The demo's stores: the real local stores, with every destination behind a simulated link.
pub struct DemoStores {
    /// How the simulated link behaves.
    pub link: LinkSettings,
}

#[async_trait::async_trait]
impl StoreFactory for DemoStores {
    async fn source(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSource>> {
        crate::store::open_source(location, access, StoreSettings::default()).await
    }

    async fn sink(
        &self,
        location: &Location,
        access: &Access,
    ) -> anyhow::Result<Arc<dyn ObjectSink>> {
        let inner = crate::store::open_sink(location, access, StoreSettings::default()).await?;
        Ok(Arc::new(SimulatedLink::new(inner, self.link)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepares_samples_once_and_resets_the_destination() {
        let dir = tempfile::tempdir().expect("tempdir");
        let layout = DemoLayout::under(dir.path());
        layout.prepare(true).expect("prepare");
        for (name, size) in SAMPLES {
            let meta = fs::metadata(layout.source.join(name)).expect("sample");
            assert_eq!(meta.len(), *size, "{name}");
        }
        let big = fs::read(layout.source.join("logs/gateway-2026-11-21.log")).expect("read");
        assert_ne!(
            big[..4096],
            big[4096..8192],
            "content is not a repeating pattern"
        );
        fs::write(layout.destination.join("old"), b"x").expect("write");
        layout.prepare(true).expect("again");
        assert!(!layout.destination.join("old").exists());
    }
}
