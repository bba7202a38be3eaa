//! The local JSON-lines output for standalone use: one report per line, rotated at each UTC day
//! change to `<file>.<YYYY-MM-DD>`, keeping a configured number of days.

use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, NaiveDate, Utc};

pub struct JsonLines {
    path: PathBuf,
    keep_days: u32,
    file: File,
    day: NaiveDate,
}

fn rotated(path: &Path, day: NaiveDate) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}", day.format("%Y-%m-%d")));
    PathBuf::from(name)
}

impl JsonLines {
    pub fn open(path: &Path, keep_days: u32, now: DateTime<Utc>) -> Result<JsonLines> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating output directory {}", dir.display()))?;
        }
        // A file left from an earlier day belongs to that day.
        let day = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| DateTime::<Utc>::from(t).date_naive())
            .unwrap_or_else(|_| now.date_naive());
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening output file {}", path.display()))?;
        let mut out = JsonLines {
            path: path.to_owned(),
            keep_days,
            file,
            day,
        };
        out.rotate_if_needed(now)?;
        Ok(out)
    }

    fn rotate_if_needed(&mut self, now: DateTime<Utc>) -> Result<()> {
        let today = now.date_naive();
        if today == self.day {
            return Ok(());
        }
        self.file.sync_all()?;
        std::fs::rename(&self.path, rotated(&self.path, self.day))?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.day = today;
        // Prune rotated files older than keep_days.
        if let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name()) {
            let prefix = format!("{}.", base.to_string_lossy());
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            for e in std::fs::read_dir(dir)?.filter_map(Result::ok) {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(d) = name
                    .strip_prefix(&prefix)
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
                    && (today - d).num_days() > i64::from(self.keep_days)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(())
    }

    /// Appends one line (the report, which must not contain a newline).
    pub fn write(&mut self, now: DateTime<Utc>, line: &[u8]) -> Result<()> {
        self.rotate_if_needed(now)?;
        // One write of the whole line; if it fails half way (disk full), the partial line is
        // cut off again so the retry of this report starts on a clean line.
        let before = self.file.metadata()?.len();
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line);
        buf.push(b'\n');
        if let Err(e) = self.file.write_all(&buf) {
            let _ = self.file.set_len(before);
            return Err(e.into());
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        Ok(self.file.sync_all()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_daily_and_prunes() {
        let dir = std::env::temp_dir().join(format!("tm-out-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("reports.jsonl");
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let mut out = JsonLines::open(&path, 2, t("2026-11-20T23:59:00Z")).unwrap();
        out.write(t("2026-11-20T23:59:00Z"), b"{\"a\":1}").unwrap();
        out.write(t("2026-11-21T00:00:30Z"), b"{\"a\":2}").unwrap();
        out.write(t("2026-11-21T12:00:00Z"), b"{\"a\":3}").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("reports.jsonl.2026-11-20")).unwrap(),
            "{\"a\":1}\n"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":2}\n{\"a\":3}\n"
        );
        out.write(t("2026-11-22T00:00:01Z"), b"{\"a\":4}").unwrap();
        out.write(t("2026-11-23T00:00:01Z"), b"{\"a\":5}").unwrap();
        // keep_days = 2 on the 23rd: the 20th is gone, the 21st and 22nd remain.
        assert!(!dir.join("reports.jsonl.2026-11-20").exists());
        assert!(dir.join("reports.jsonl.2026-11-21").exists());
        assert!(dir.join("reports.jsonl.2026-11-22").exists());
    }
}
