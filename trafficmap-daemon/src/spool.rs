//! The on-disk spool: every report is written here before it is sent, and removed only once the
//! collector accepted it, so no report is lost across collector outages or agent restarts, and
//! reports are replayed in order. Bounded: `max_bytes` covers the waiting reports and the ones
//! the collector refused for good (`rejected/`); when over, the oldest rejected report goes
//! first, then the oldest waiting one, each counted.
//!
//! Layout: `<seq, 20 digits>.json` per report, `state.json` with the next sequence number and
//! the drop counts, `rejected/<seq>.json`, `quarantine/` for files found corrupt. Writes go
//! through `atomic-write-file`: a hidden temporary file (`.<name>.*`), fsynced, renamed over the
//! name, then the directory fsynced so the rename survives a crash. Temporary files left by a
//! crash (or by a write that failed on a full disk) are removed at start.
//!
//! A corrupt `state.json` is quarantined and the state rebuilt: the next sequence number is the
//! larger of (the highest sequence number found in the spool or `rejected/`) + 1 and the wall
//! clock in microseconds since 1970. Sequence numbers of a healthy spool count reports (a few per
//! minute), so they stay far below the clock's microseconds, and a rebuilt spool never reuses a
//! number its lost state may have handed out; after a rebuild numbers count up from the clock,
//! which is still far ahead of the reports written since (one per microsecond at most).

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use atomic_write_file::AtomicWriteFile;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// Files kept in `quarantine/` (newest first): enough to look into, bounded on disk.
pub const QUARANTINE_KEEP: usize = 8;

#[derive(Serialize, Deserialize, Default, Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    next_seq: u64,
    dropped_total: u64,
    /// Rejected reports removed to make room (older spools lack it).
    #[serde(default)]
    rejected_dropped_total: u64,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// seq -> size in bytes.
    entries: BTreeMap<u64, u64>,
    bytes: u64,
    /// Reports set aside in `rejected/`: seq -> size in bytes.
    rejected: BTreeMap<u64, u64>,
    rejected_bytes: u64,
    quarantined_total: u64,
    state: State,
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let mut f =
        AtomicWriteFile::open(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    f.commit()
        .with_context(|| format!("writing {}", path.display()))
}

/// `<20 digits>.json` -> seq.
fn seq_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")
        .filter(|s| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
}

/// Reports in `dir` (seq -> size); removes leftovers of interrupted writes (hidden temporary
/// files of atomic-write-file, `*.tmp`).
fn scan(dir: &Path) -> Result<BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    let list = match std::fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for e in list {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type()?.is_file() {
            continue;
        }
        if name.starts_with('.') || name.ends_with(".tmp") {
            if let Err(err) = std::fs::remove_file(e.path()) {
                warn!(path = %e.path().display(), error = %err, "cannot remove a leftover temporary file");
            }
            continue;
        }
        if let Some(seq) = seq_of(&name) {
            out.insert(seq, e.metadata()?.len());
        }
    }
    Ok(out)
}

fn micros_since_epoch() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

impl Spool {
    /// Opens (creating) the spool. Leftovers of an interrupted write are removed; a corrupt
    /// `state.json` is quarantined and the state rebuilt (see the module comment).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating spool directory {}", dir.display()))?;
        let state_path = dir.join("state.json");
        let mut quarantined_total = 0;
        let (state, rebuilt) = match std::fs::read(&state_path) {
            Ok(b) => match serde_json::from_slice::<State>(&b) {
                Ok(s) => (s, false),
                Err(e) => {
                    let to = quarantine_file(dir, &state_path, "state");
                    quarantined_total += 1;
                    warn!(error = %e, quarantined = ?to.as_ref().map(|p| p.display().to_string()).map_err(|e| format!("{e:#}")), "spool state.json is corrupt; rebuilding it from the spooled files and the clock");
                    (State::default(), true)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (State::default(), false),
            Err(e) => return Err(e).context("reading spool state"),
        };
        let entries = scan(dir)?;
        let rejected = scan(&dir.join("rejected"))?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            max_bytes,
            bytes: entries.values().fold(0u64, |a, &b| a.saturating_add(b)),
            entries,
            rejected_bytes: rejected.values().fold(0u64, |a, &b| a.saturating_add(b)),
            rejected,
            quarantined_total,
            state,
        };
        // Never reuse a sequence number still on disk (state written before a crash, or lost).
        let on_disk = [
            spool.entries.last_key_value(),
            spool.rejected.last_key_value(),
        ]
        .into_iter()
        .flatten()
        .map(|(&s, _)| s.saturating_add(1))
        .max()
        .unwrap_or(0);
        let mut floor = on_disk;
        if rebuilt {
            floor = floor.max(micros_since_epoch());
        }
        let changed = rebuilt || spool.state.next_seq < floor;
        spool.state.next_seq = spool.state.next_seq.max(floor);
        spool.enforce_limit();
        if changed && let Err(e) = spool.save_state() {
            // Not fatal: the next sequence number is saved before it is used.
            warn!(error = %format!("{e:#}"), "cannot save the spool state yet");
        }
        Ok(spool)
    }

    fn save_state(&self) -> Result<()> {
        write_atomic(
            &self.dir.join("state.json"),
            &serde_json::to_vec(&self.state)?,
        )
    }

    /// Allocates the next sequence number (persisted before use, so it never repeats). On a
    /// failed save nothing is allocated.
    pub fn next_seq(&mut self) -> Result<u64> {
        let seq = self.state.next_seq;
        self.state.next_seq = seq.saturating_add(1);
        if let Err(e) = self.save_state() {
            self.state.next_seq = seq;
            return Err(e);
        }
        Ok(seq)
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.json"))
    }

    /// Stores a report; drops the oldest rejected, then the oldest waiting reports while over
    /// the limit (never the one just added). Returns how many waiting reports were dropped.
    pub fn push(&mut self, seq: u64, data: &[u8]) -> Result<u64> {
        write_atomic(&self.path(seq), data)?;
        let size = data.len() as u64;
        if let Some(old) = self.entries.insert(seq, size) {
            self.bytes = self.bytes.saturating_sub(old);
        }
        self.bytes = self.bytes.saturating_add(size);
        let (dropped, rejected_dropped) = self.enforce_limit();
        if dropped + rejected_dropped > 0
            && let Err(e) = self.save_state()
        {
            // The counts are also in memory (metrics, reports); a later save catches up.
            warn!(error = %format!("{e:#}"), "cannot save the spool's drop counts");
        }
        Ok(dropped)
    }

    /// Brings the spool under `max_bytes`: rejected reports first (oldest first), then waiting
    /// ones, never the newest waiting one. Returns (waiting dropped, rejected dropped).
    fn enforce_limit(&mut self) -> (u64, u64) {
        let mut rejected_dropped = 0u64;
        while self.bytes.saturating_add(self.rejected_bytes) > self.max_bytes
            && let Some((&oldest, &size)) = self.rejected.first_key_value()
        {
            self.rejected.remove(&oldest);
            self.rejected_bytes = self.rejected_bytes.saturating_sub(size);
            let path = self.dir.join("rejected").join(format!("{oldest:020}.json"));
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                warn!(path = %path.display(), error = %e, "cannot remove a rejected report");
            }
            rejected_dropped += 1;
        }
        let mut dropped = 0u64;
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let Some((&oldest, _)) = self.entries.first_key_value() else {
                break;
            };
            if let Err(e) = self.remove(oldest) {
                warn!(seq = oldest, error = %format!("{e:#}"), "cannot remove a dropped report");
            }
            dropped += 1;
        }
        self.state.dropped_total = self.state.dropped_total.saturating_add(dropped);
        self.state.rejected_dropped_total = self
            .state
            .rejected_dropped_total
            .saturating_add(rejected_dropped);
        (dropped, rejected_dropped)
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
            self.bytes = self.bytes.saturating_sub(size);
            match std::fs::remove_file(self.path(seq)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).context("removing spooled report"),
            }
        }
        Ok(())
    }

    /// Moves a report the collector refused as invalid aside, for inspection; it keeps counting
    /// against `max_bytes` until newer reports need the room.
    pub fn reject(&mut self, seq: u64) -> Result<PathBuf> {
        let dir = self.dir.join("rejected");
        let size = self.entries.remove(&seq).unwrap_or(0);
        self.bytes = self.bytes.saturating_sub(size);
        let dst = dir.join(format!("{seq:020}.json"));
        let moved = std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::rename(self.path(seq), &dst))
            .with_context(|| format!("moving report {seq} to {}", dir.display()));
        if let Err(e) = moved {
            // Out of the queue either way: a report that cannot be moved is not retried forever.
            let _ = std::fs::remove_file(self.path(seq));
            return Err(e);
        }
        self.rejected.insert(seq, size);
        self.rejected_bytes = self.rejected_bytes.saturating_add(size);
        let (_, rejected_dropped) = self.enforce_limit();
        if rejected_dropped > 0 {
            let _ = self.save_state();
        }
        Ok(dst)
    }

    /// Moves a spooled report that is not readable or not a report to `quarantine/`; it leaves
    /// the queue even if the move fails (then the file is deleted).
    pub fn quarantine(&mut self, seq: u64) -> Result<PathBuf> {
        let size = self.entries.remove(&seq).unwrap_or(0);
        self.bytes = self.bytes.saturating_sub(size);
        self.quarantined_total = self.quarantined_total.saturating_add(1);
        let src = self.path(seq);
        let moved = quarantine_file(&self.dir, &src, &format!("{seq:020}"));
        if moved.is_err() {
            let _ = std::fs::remove_file(&src);
        }
        moved
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

    /// Size of `rejected/`.
    pub fn rejected_bytes(&self) -> u64 {
        self.rejected_bytes
    }

    pub fn rejected_len(&self) -> usize {
        self.rejected.len()
    }

    pub fn rejected_dropped_total(&self) -> u64 {
        self.state.rejected_dropped_total
    }

    /// Files moved to `quarantine/` since this process started.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined_total
    }
}

/// Moves `src` to `<dir>/quarantine/<stem>-<micros>.bad` and keeps only the newest
/// [`QUARANTINE_KEEP`] files there.
fn quarantine_file(dir: &Path, src: &Path, stem: &str) -> Result<PathBuf> {
    let qdir = dir.join("quarantine");
    std::fs::create_dir_all(&qdir).with_context(|| format!("creating {}", qdir.display()))?;
    let dst = qdir.join(format!("{stem}-{}.bad", micros_since_epoch()));
    std::fs::rename(src, &dst)
        .with_context(|| format!("moving {} to {}", src.display(), dst.display()))?;
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&qdir)?
        .filter_map(Result::ok)
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(QUARANTINE_KEEP);
    for (_, p) in files.into_iter().take(excess) {
        let _ = std::fs::remove_file(p);
    }
    Ok(dst)
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

    #[test]
    fn rejected_reports_count_against_the_limit_oldest_dropped_first() {
        let dir = tmp("rejected");
        let mut s = Spool::open(&dir, 25).unwrap();
        for _ in 0..2 {
            let seq = s.next_seq().unwrap();
            s.push(seq, &[b'x'; 10]).unwrap();
        }
        s.reject(0).unwrap();
        s.reject(1).unwrap();
        assert_eq!((s.len(), s.bytes(), s.rejected_bytes()), (0, 0, 20));
        // 10 waiting + 20 rejected > 25: the oldest rejected report goes, no waiting one.
        s.push(2, &[b'y'; 10]).unwrap();
        assert_eq!((s.len(), s.bytes(), s.rejected_bytes()), (1, 10, 10));
        assert_eq!((s.dropped_total(), s.rejected_dropped_total()), (0, 1));
        assert!(!dir.join("rejected/00000000000000000000.json").exists());
        assert!(dir.join("rejected/00000000000000000001.json").exists());
        // Then the next rejected one, then waiting reports (never the newest).
        s.push(3, &[b'z'; 10]).unwrap();
        assert_eq!((s.len(), s.rejected_len(), s.rejected_bytes()), (2, 0, 0));
        s.push(4, &[b'w'; 10]).unwrap();
        assert_eq!((s.len(), s.front()), (2, Some(3)));
        assert_eq!((s.dropped_total(), s.rejected_dropped_total()), (1, 2));
        drop(s);
        // Counted across restarts, and rejected/ is found again at start.
        let s = Spool::open(&dir, 25).unwrap();
        assert_eq!((s.dropped_total(), s.rejected_dropped_total()), (1, 2));
        assert_eq!((s.bytes(), s.rejected_bytes()), (20, 0));
    }

    #[test]
    fn corrupt_state_is_quarantined_and_seq_keeps_increasing() {
        let dir = tmp("corrupt");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for _ in 0..3 {
            let seq = s.next_seq().unwrap();
            s.push(seq, b"{}").unwrap();
        }
        s.reject(2).unwrap();
        drop(s);
        std::fs::write(dir.join("state.json"), b"{").unwrap();
        std::fs::write(dir.join("rejected/.00000000000000000005.json.x"), b"half").unwrap();
        std::fs::write(dir.join("leftover.tmp"), b"half").unwrap();
        let before = micros_since_epoch();
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        let after = micros_since_epoch();
        let q: Vec<String> = std::fs::read_dir(dir.join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(q.len(), 1, "{q:?}");
        assert!(q[0].starts_with("state-"), "{q:?}");
        assert!(!dir.join("leftover.tmp").exists());
        assert!(!dir.join("rejected/.00000000000000000005.json.x").exists());
        assert_eq!(
            (s.len(), s.rejected_len(), s.quarantined_total()),
            (2, 1, 1)
        );
        let seq = s.next_seq().unwrap();
        assert!(
            (before..=after).contains(&seq),
            "{before} <= {seq} <= {after}"
        );
        drop(s);
        // The rebuilt state was saved: numbers continue from there.
        assert_eq!(
            Spool::open(&dir, 1 << 20).unwrap().next_seq().unwrap(),
            seq + 1
        );
    }

    #[test]
    fn a_corrupt_report_is_quarantined_and_the_quarantine_bounded() {
        let dir = tmp("quarantine");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        for i in 0..(QUARANTINE_KEEP as u64 + 3) {
            s.push(i, b"not json").unwrap();
        }
        for i in 0..(QUARANTINE_KEEP as u64 + 3) {
            let to = s.quarantine(i).unwrap();
            assert!(to.exists());
            // Distinct modification times order the quarantine.
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        let mut q: Vec<String> = std::fs::read_dir(dir.join("quarantine"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy()[..20].to_owned())
            .collect();
        q.sort();
        let newest: Vec<String> = (3..QUARANTINE_KEEP as u64 + 3)
            .map(|i| format!("{i:020}"))
            .collect();
        assert_eq!(q, newest);
    }

    #[test]
    fn a_failed_state_save_allocates_nothing() {
        let dir = tmp("nosave");
        let mut s = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(s.next_seq().unwrap(), 0);
        // A directory where state.json must go: the atomic rename fails.
        std::fs::remove_file(dir.join("state.json")).unwrap();
        std::fs::create_dir(dir.join("state.json")).unwrap();
        std::fs::write(dir.join("state.json/x"), b"").unwrap();
        assert!(s.next_seq().is_err());
        std::fs::remove_dir_all(dir.join("state.json")).unwrap();
        assert_eq!(s.next_seq().unwrap(), 1);
    }
}
