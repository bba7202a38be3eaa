//! The on-disk spool: every report is written here before it is sent, and removed only once the
//! collector accepted it, so no report is lost across collector outages or agent restarts, and
//! reports are replayed in order. Bounded: when full, the oldest report is dropped and counted.
//!
//! Layout: `<seq, 20 digits>.json` per report, `state.json` with the next sequence number and
//! the drop count. Writes go through `atomic-write-file`: a hidden temporary file (`.<name>.*`),
//! fsynced, renamed over the name, then the directory fsynced so the rename survives a crash.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use atomic_write_file::AtomicWriteFile;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    next_seq: u64,
    dropped_total: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// seq -> size in bytes.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    state: State,
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut f =
        AtomicWriteFile::open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.commit()
        .with_context(|| format!("writing {}", path.display()))
}

impl Spool {
    /// Opens (creating) the spool; leftovers of an interrupted write (hidden temporary files)
    /// are removed.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating spool directory {}", dir.display()))?;
        let state = match std::fs::read(dir.join("state.json")) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("spool state {}", dir.join("state.json").display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(e).context("reading spool state"),
        };
        let mut entries = BTreeMap::new();
        let mut bytes = 0;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && e.file_type()?.is_file() {
                std::fs::remove_file(e.path())?;
                continue;
            }
            if let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let size = e.metadata()?.len();
                entries.insert(seq, size);
                bytes += size;
            }
        }
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            entries,
            bytes,
            state,
        };
        // Never reuse a sequence number still in the spool (state written before a crash).
        if let Some((&last, _)) = spool.entries.last_key_value()
            && spool.state.next_seq <= last
        {
            spool.state.next_seq = last + 1;
            spool.save_state()?;
        }
        Ok(spool)
    }

    fn save_state(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec(&self.state)?,
        )
    }

    /// Allocates the next sequence number (persisted before use, so it never repeats).
    pub fn next_seq(&mut self) -> Result<u64> {
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        self.save_state()?;
        Ok(seq)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Stores a report; drops the oldest ones while over the limit (never the one just added).
    /// Returns how many were dropped.
    pub fn push(&mut self, seq: u64, data: &[u8]) -> Result<u64> {
        write_atomic(&self.path(seq), data)?;
        self.entries.insert(seq, data.len() as u64);
        self.bytes += data.len() as u64;
        let mut dropped = 0;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let (&oldest, _) = self.entries.first_key_value().expect("non-empty");
            self.remove(oldest)?;
            dropped += 1;
        }
        if dropped > 0 {
            self.state.dropped_total += dropped;
            self.save_state()?;
        }
        Ok(dropped)
    }

    /// The oldest report waiting.
    pub fn front(&self) -> Option<u64> {
        self.entries.first_key_value().map(|(&s, _)| s)
    }

    pub fn read(&self, seq: u64) -> Result<Vec<u8>> {
        std::fs::read(self.path(seq)).with_context(|| format!("reading spooled report {seq}"))
    }

    /// Removes a report (accepted by the collector, or dropped).
    pub fn remove(&mut self, seq: u64) -> Result<()> {
        if let Some(size) = self.entries.remove(&seq) {
            self.bytes -= size;
            match std::fs::remove_file(self.path(seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing spooled report"),
            }
        }
        Ok(())
    }

    /// Moves a report the collector refused as invalid aside, for inspection.
    pub fn reject(&mut self, seq: u64) -> Result<PathBuf> {
        let dir = self.dir.join("rejected");
        std::fs::create_dir_all(&dir)?;
        let dst = dir.join(format!("{seq:020}.json"));
        std::fs::rename(self.path(seq), &dst)?;
        if let Some(size) = self.entries.remove(&seq) {
            self.bytes -= size;
        }
        Ok(dst)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn dropped_total(&self) -> u64 {
        self.state.dropped_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tm-spool-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn survives_reopen_in_order() {
        let dir = tmp("reopen");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..3 {
            let seq = s.next_seq().unwrap();
            assert_eq!(seq, i);
            s.push(seq, format!("report {i}").as_bytes()).unwrap();
        }
        s.remove(0).unwrap();
        drop(s);
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.front(), Some(1));
        assert_eq!(s.read(1).unwrap(), b"report 1");
        assert_eq!(s.next_seq().unwrap(), 3, "sequence numbers never repeat");
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let dir = tmp("full");
        let mut s = Spool::open(&dir, 25).unwrap();
        for i in 0..4 {
            let seq = s.next_seq().unwrap();
            s.push(seq, &[b'x'; 10]).unwrap();
            let _ = i;
        }
        // 4 x 10 bytes into 25: the two oldest went.
        assert_eq!(s.len(), 2);
        assert_eq!(s.front(), Some(2));
        assert_eq!(s.dropped_total(), 2);
        assert_eq!(s.bytes(), 20);
        drop(s);
        assert_eq!(Spool::open(&dir, 25).unwrap().dropped_total(), 2);
    }

    #[test]
    fn interrupted_write_is_cleaned_and_seq_not_reused() {
        let dir = tmp("crash");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".00000000000000000009.json.tmp"), b"half").unwrap();
        std::fs::write(dir.join("00000000000000000007.json"), b"r7").unwrap();
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        assert!(!dir.join(".00000000000000000009.json.tmp").exists());
        assert_eq!(s.next_seq().unwrap(), 8);
        let rejected = s.reject(7).unwrap();
        assert!(rejected.exists());
        assert!(s.is_empty());
    }
}
