//! Calibration activations, one f32 buffer per batch of samples, held in memory or spilled to
//! files in a scratch directory when they would exceed the `--max-memory` budget.

use anyhow::{Context, Result};
use std::path::PathBuf;

pub enum Store {
    Memory(Vec<Vec<f32>>),
    /// One file per batch in `dir`, named `{tag}-{batch}.f32`.
    Disk {
        dir: PathBuf,
        tag: String,
        n: usize,
    },
}

impl Store {
    pub fn memory(batches: usize) -> Store {
        Store::Memory(vec![Vec::new(); batches])
    }

    pub fn disk(dir: PathBuf, tag: &str, batches: usize) -> Store {
        Store::Disk {
            dir,
            tag: tag.to_owned(),
            n: batches,
        }
    }

    fn file(dir: &std::path::Path, tag: &str, b: usize) -> PathBuf {
        dir.join(format!("{tag}-{b}.f32"))
    }

    /// Takes batch `b` out (in memory: moves it, leaving an empty buffer).
    pub fn take(&mut self, b: usize) -> Result<Vec<f32>> {
        match self {
            Store::Memory(v) => Ok(std::mem::take(&mut v[b])),
            Store::Disk { dir, tag, .. } => {
                let path = Self::file(dir, tag, b);
                let bytes = std::fs::read(&path)
                    .with_context(|| format!("reading spilled activations {}", path.display()))?;
                Ok(bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect())
            }
        }
    }

    /// A copy of batch `b`, leaving it in place.
    pub fn get(&mut self, b: usize) -> Result<Vec<f32>> {
        match self {
            Store::Memory(v) => Ok(v[b].clone()),
            Store::Disk { .. } => self.take(b),
        }
    }

    pub fn put(&mut self, b: usize, data: Vec<f32>) -> Result<()> {
        match self {
            Store::Memory(v) => {
                v[b] = data;
                Ok(())
            }
            Store::Disk { dir, tag, .. } => {
                let path = Self::file(dir, tag, b);
                let bytes: Vec<u8> = data.iter().flat_map(|x| x.to_le_bytes()).collect();
                std::fs::write(&path, bytes)
                    .with_context(|| format!("spilling activations to {}", path.display()))
            }
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Store::Memory(v) => v.len(),
            Store::Disk { n, .. } => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_and_disk_hold_the_same_values() {
        let dir = std::env::temp_dir().join(format!("quantize-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for mut s in [Store::memory(2), Store::disk(dir.clone(), "x", 2)] {
            s.put(1, vec![1.5, -2.0, f32::MIN_POSITIVE]).unwrap();
            assert_eq!(s.get(1).unwrap(), [1.5, -2.0, f32::MIN_POSITIVE]);
            assert_eq!(s.take(1).unwrap(), [1.5, -2.0, f32::MIN_POSITIVE]);
            assert_eq!(s.len(), 2);
        }
        let mut s = Store::disk(dir.clone(), "y", 1);
        assert!(s.take(0).unwrap_err().to_string().contains("y-0.f32"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
