//! Maps of a view for a range: the one path used by the HTTP API, the daily files, the CLI and
//! the golden tests.
//!
//! Every map is built the same way: the store's data of the range ([`RangeData`], observation
//! keys summed over the range; for several days, the sum of the days' data, see
//! [`RangeData::merge`]), resolved with the enrichment sources of the range's last day, then
//! rendered. A multi-day map is never made by adding up rendered daily maps: per-direction
//! maxima and carried-in connections do not add up across days.
//!
//! One shortcut: a single whole day whose daily file exists is served from that file. The file
//! was written by [`write_day`] through this same path, so it holds the map that building the
//! day would give (its `generated_at` is when it was written); a test checks that they agree.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use trafficmap_model::map::{Map, View};

use crate::{
    cost::CostRates,
    enrich::{Directory, Sources, refresh::Enricher},
    range::RangeData,
    render::{Prepared, prepare, render, unnamed_addresses},
    store::{Result, Store, StoreError, day_start},
};

/// The range a map is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Span {
    /// One UTC day (may be served from its daily file).
    Day(NaiveDate),
    /// `[from, to)`.
    Range(DateTime<Utc>, DateTime<Utc>),
}

impl Span {
    /// The UTC day this span covers exactly: a `Day`, or a range from one midnight to the
    /// next (the same question, so the same answer, its daily file included).
    pub fn whole_day(self) -> Option<NaiveDate> {
        match self {
            Span::Day(d) => Some(d),
            Span::Range(f, t) => (day_range(f.date_naive()) == (f, t)).then(|| f.date_naive()),
        }
    }

    pub fn range(self) -> (DateTime<Utc>, DateTime<Utc>) {
        match self {
            Span::Day(d) => day_range(d),
            Span::Range(f, t) => (f, t),
        }
    }
}

/// A map as answered: a daily file's bytes as stored, or a map built from the store.
pub enum Served {
    File(Vec<u8>),
    Built(Box<Map>),
}

/// Why a map could not be had.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// A single day was asked for and nothing reported in it.
    #[error("no data for {0}")]
    NoData(NaiveDate),
    #[error("store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("{}: {source}", .path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where maps come from: the store, the enricher and the daily files' directory.
pub struct MapSource<'a> {
    pub store: &'a Store,
    pub enricher: &'a Enricher,
    pub rates: &'a CostRates,
    pub dir: &'a Path,
}

impl MapSource<'_> {
    /// The map of `view` for `span`: a single whole day (asked as a day or as the range from
    /// its midnight to the next) from its daily file if there is one, else
    /// built from the store (see the module doc).
    pub async fn map(
        &self,
        view: View,
        span: Span,
        now: DateTime<Utc>,
    ) -> std::result::Result<Served, MapError> {
        if let Some(day) = span.whole_day() {
            let path = self.dir.join(view.file_name(day));
            if path.is_file() {
                return std::fs::read(&path)
                    .map(Served::File)
                    .map_err(|source| MapError::File { path, source });
            }
        }
        let (from, to) = span.range();
        let built = build(self.store, self.enricher, self.rates, from, to, now).await?;
        if let Span::Day(d) = span
            && built.prepared.identities.is_empty()
        {
            return Err(MapError::NoData(d));
        }
        Ok(Served::Built(Box::new(built.render(
            self.enricher,
            view,
            now,
        ))))
    }

    /// Days with data: those with a daily file or with reports in the store.
    pub async fn days(&self) -> Result<BTreeSet<NaiveDate>> {
        let mut days = file_days(self.dir);
        days.extend(self.store.days().await?);
        Ok(days)
    }
}

/// Days with a daily file in `dir`.
pub fn file_days(dir: &Path) -> BTreeSet<NaiveDate> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeSet::new();
    };
    entries
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.strip_suffix(".json")?;
            let (view, day) = stem.rsplit_once('-')?;
            view.parse::<View>().ok()?;
            NaiveDate::parse_from_str(day, "%Y%m%d").ok()
        })
        .collect()
}

/// A range's conversations, resolved with the sources of its time.
pub struct Built {
    pub prepared: Prepared,
    pub sources: Sources,
}

/// Reads `[from, to)` from the store and resolves it (see [`resolve`]).
pub async fn build(
    store: &Store,
    enricher: &Enricher,
    rates: &CostRates,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Built> {
    let data = store.range(from, to).await?;
    Ok(resolve(store, enricher, rates, &data, now).await)
}

/// Resolves a range's data, whether read at once or merged from pieces: a range in the past is
/// enriched with the EC2 snapshot of its last day. Addresses nothing names are queued for
/// reverse DNS.
pub async fn resolve(
    store: &Store,
    enricher: &Enricher,
    rates: &CostRates,
    data: &RangeData,
    now: DateTime<Utc>,
) -> Built {
    let last_day = (data.to - Duration::seconds(1)).date_naive();
    let sources = enricher
        .sources_for_day(store, last_day, now.date_naive())
        .await;
    let prepared = {
        let dir = Directory {
            sources: &sources,
            rules: &enricher.rules,
        };
        prepare(data, &dir, rates)
    };
    enricher.request_dns(unnamed_addresses(&prepared));
    Built { prepared, sources }
}

impl Built {
    /// The three views, rendered in parallel (they only read the prepared data).
    pub fn render_all(&self, enricher: &Enricher, generated_at: DateTime<Utc>) -> Vec<Map> {
        std::thread::scope(|s| {
            let handles: Vec<_> = View::ALL
                .into_iter()
                .map(|v| s.spawn(move || self.render(enricher, v, generated_at)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("rendering a view does not panic"))
                .collect()
        })
    }

    pub fn render(&self, enricher: &Enricher, view: View, generated_at: DateTime<Utc>) -> Map {
        let dir = Directory {
            sources: &self.sources,
            rules: &enricher.rules,
        };
        let mut map = render(&self.prepared, view, &dir, generated_at);
        // Names for the links' ports (issue 12 item 4), from the collector's merged table.
        enricher.services.annotate(&mut map);
        map
    }
}

pub fn day_range(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let s = day_start(day);
    (
        crate::period::from_secs(s),
        crate::period::from_secs(s + crate::period::DAY),
    )
}

/// Writes the three views of a day to `dir` (each through a temporary file and a rename, so a
/// reader never sees half a file). With `settle`, addresses still unnamed are given that long
/// to get a reverse DNS answer before the maps are built again. Returns the paths written.
pub async fn write_day(
    store: &Store,
    enricher: &Enricher,
    rates: &CostRates,
    dir: &Path,
    day: NaiveDate,
    now: DateTime<Utc>,
    settle: Option<std::time::Duration>,
) -> Result<Vec<PathBuf>> {
    let (from, to) = day_range(day);
    let mut built = build(store, enricher, rates, from, to, now).await?;
    if let (Some(wait), Some(dns)) = (settle, &enricher.dns)
        && !unnamed_addresses(&built.prepared).is_empty()
    {
        let until = tokio::time::Instant::now() + wait;
        while !dns.idle() && tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        built = build(store, enricher, rates, from, to, now).await?;
    }
    let mut written = Vec::new();
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::store::StoreError::Other(format!("{}: {e}", dir.display())))?;
    for map in built.render_all(enricher, now) {
        let path = dir.join(map.view.file_name(day));
        write_atomic(&path, &map.to_json_pretty())
            .map_err(|e| crate::store::StoreError::Other(format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never half of
/// one, and the new one survives a crash once this returns: `atomic-write-file` writes a
/// temporary file in the same directory, syncs it, renames it over `path` and syncs the
/// directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = atomic_write_file::AtomicWriteFile::open(path)?;
    f.write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_from_midnight_to_midnight_is_that_day() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 22).unwrap();
        let (f, t) = day_range(d);
        assert_eq!(Span::Day(d).whole_day(), Some(d));
        assert_eq!(Span::Range(f, t).whole_day(), Some(d));
        let hour = chrono::TimeDelta::hours(1);
        assert_eq!(Span::Range(f, t + hour).whole_day(), None);
        assert_eq!(Span::Range(f + hour, t).whole_day(), None);
        assert_eq!(Span::Range(f, t + (t - f)).whole_day(), None);
    }
}
