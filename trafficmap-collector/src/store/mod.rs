//! Storage: an embedded SQLite database by default, ClickHouse for fleets. Both keep the same
//! data (observation rows per minute with hour and day roll-ups, agents per day, EC2 snapshots
//! per day, report ids) and answer the same questions: `tests/clickhouse.rs` checks that
//! ClickHouse answers what SQLite answers (the golden maps, roll-ups, retention, late reports).

pub mod clickhouse;
pub mod sqlite;

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::{DateTime, NaiveDate, Utc};
use trafficmap_model::cloud::CloudSnapshot;

use crate::{
    ingest::Ingest,
    period::{DAY, HOUR, MINUTE, floor},
    range::RangeData,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("clickhouse: {0}")]
    ClickHouse(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The configured store could not be opened: which one, where, and why (the source).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("opening the database in {}", .dir.display())]
    Sqlite {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("opening ClickHouse at {url}")]
    ClickHouse {
        url: String,
        #[source]
        source: StoreError,
    },
}

/// What became of one report of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Stored,
    /// A report with this id was stored before: nothing was added.
    Duplicate,
}

/// How long each granularity is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub minutes: Duration,
    pub hours: Duration,
    pub days: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            minutes: Duration::from_secs(2 * 86_400),
            hours: Duration::from_secs(35 * 86_400),
            days: Duration::from_secs(400 * 86_400),
        }
    }
}

/// What one maintenance pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Minute rows folded into the hour and day tables (SQLite) or periods recomputed
    /// (ClickHouse).
    pub rolled_up: u64,
    pub deleted_rows: u64,
}

/// The time grain of stored rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    pub const fn secs(self) -> i64 {
        match self {
            Grain::Minute => MINUTE,
            Grain::Hour => HOUR,
            Grain::Day => DAY,
        }
    }

    pub const fn table(self) -> &'static str {
        match self {
            Grain::Minute => "pair_minute",
            Grain::Hour => "pair_hour",
            Grain::Day => "pair_day",
        }
    }
}

/// Covers `[from, to)` (seconds, minute-aligned) with the coarsest periods `usable` allows:
/// whole days, then whole hours, then minutes. Returns `(grain, start, end)` segments.
pub fn plan(from: i64, to: i64, usable: &dyn Fn(Grain, i64) -> bool) -> Vec<(Grain, i64, i64)> {
    fn cover(
        grain: Grain,
        from: i64,
        to: i64,
        usable: &dyn Fn(Grain, i64) -> bool,
        out: &mut Vec<(Grain, i64, i64)>,
    ) {
        if from >= to {
            return;
        }
        let finer = match grain {
            Grain::Day => Grain::Hour,
            Grain::Hour => Grain::Minute,
            Grain::Minute => {
                push(out, Grain::Minute, from, to);
                return;
            }
        };
        let len = grain.secs();
        let first = floor(from + len - 1, len);
        let last = floor(to, len);
        if first >= last {
            cover(finer, from, to, usable, out);
            return;
        }
        cover(finer, from, first, usable, out);
        let mut p = first;
        while p < last {
            if usable(grain, p) {
                push(out, grain, p, p + len);
            } else {
                cover(finer, p, p + len, usable, out);
            }
            p += len;
        }
        cover(finer, last, to, usable, out);
    }
    fn push(out: &mut Vec<(Grain, i64, i64)>, grain: Grain, s: i64, e: i64) {
        if let Some(last) = out.last_mut()
            && last.0 == grain
            && last.2 == s
        {
            last.2 = e;
            return;
        }
        out.push((grain, s, e));
    }
    let mut out = Vec::new();
    cover(Grain::Day, from, to, usable, &mut out);
    out
}

/// Which store to open, and its settings.
#[derive(Clone, Debug)]
pub enum Options {
    Sqlite { dir: PathBuf, sync: sqlite::Sync },
    ClickHouse(clickhouse::ClickHouseOptions),
}

/// Either backend. An enum rather than a trait object: there are two, and async methods stay
/// simple.
#[derive(Clone)]
pub enum Store {
    Sqlite(Arc<sqlite::SqliteStore>),
    ClickHouse(Arc<clickhouse::ClickHouseStore>),
}

impl Store {
    /// Opens the backend `opts` names (the service and the command line share this; the
    /// configuration maps itself into [`Options`], so the store never reads the server's config).
    pub async fn open(opts: Options) -> std::result::Result<Store, OpenError> {
        match opts {
            Options::Sqlite { dir, sync } => {
                // Opening may create and migrate the database: file I/O, off the runtime.
                let at = dir.clone();
                let opened = blocking(move || sqlite::SqliteStore::open(&at, sync)).await;
                opened
                    .map(|s| Store::Sqlite(Arc::new(s)))
                    .map_err(|source| OpenError::Sqlite { dir, source })
            }
            Options::ClickHouse(o) => clickhouse::ClickHouseStore::open(&o)
                .await
                .map(|c| Store::ClickHouse(Arc::new(c)))
                .map_err(|source| OpenError::ClickHouse { url: o.url, source }),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::ClickHouse(_) => "clickhouse",
        }
    }

    /// Stores a batch of reports atomically (SQLite) or idempotently (ClickHouse: a batch
    /// that failed half-way is safe to send again). Reports whose id is already stored are
    /// `Duplicate` and add nothing.
    pub async fn ingest(
        &self,
        batch: Vec<Arc<Ingest>>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.ingest(&batch, now)).await
            }
            Store::ClickHouse(c) => c.ingest(&batch, now).await,
        }
    }

    /// Every observation key summed over `[from, to)` (minute-aligned), with the agents that
    /// reported in it.
    pub async fn range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<RangeData> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.range(from, to)).await
            }
            Store::ClickHouse(c) => c.range(from, to).await,
        }
    }

    /// Days (UTC) with reports, newest first.
    pub async fn days(&self) -> Result<Vec<NaiveDate>> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.days()).await
            }
            Store::ClickHouse(c) => c.days().await,
        }
    }

    /// When a report for `day` was last received (to know whether a daily file is stale).
    pub async fn day_changed_at(&self, day: NaiveDate) -> Result<Option<DateTime<Utc>>> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.day_changed_at(day)).await
            }
            Store::ClickHouse(c) => c.day_changed_at(day).await,
        }
    }

    /// Keeps the EC2 snapshot as the one of `day` (the last one of a day wins).
    pub async fn save_cloud(&self, day: NaiveDate, snap: &CloudSnapshot) -> Result<()> {
        let body = snap.to_json();
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                let taken = snap.fetched_at;
                blocking(move || s.save_cloud(day, taken, &body)).await
            }
            Store::ClickHouse(c) => c.save_cloud(day, snap.fetched_at, &body).await,
        }
    }

    /// The EC2 snapshot of `day`, or of the latest day before it that has one.
    pub async fn cloud(&self, day: NaiveDate) -> Result<Option<CloudSnapshot>> {
        let body = match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.cloud(day)).await?
            }
            Store::ClickHouse(c) => c.cloud(day).await?,
        };
        body.map(|b| CloudSnapshot::from_json(&b).map_err(StoreError::Other))
            .transpose()
    }

    /// Roll-ups and retention.
    pub async fn maintain(&self, now: DateTime<Utc>, retention: Retention) -> Result<Maintenance> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.maintain(now, retention)).await
            }
            Store::ClickHouse(c) => c.maintain(now, retention).await,
        }
    }

    pub async fn ping(&self) -> Result<()> {
        match self {
            Store::Sqlite(s) => {
                let s = s.clone();
                blocking(move || s.ping()).await
            }
            Store::ClickHouse(c) => c.ping().await,
        }
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("store task failed: {e}")))?
}

pub fn day_start(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc()
        .timestamp()
}

pub fn day_of(secs: i64) -> NaiveDate {
    crate::period::from_secs(floor(secs, DAY)).date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = 1_795_392_000; // 2026-11-23T00:00:00Z

    #[test]
    fn plan_uses_days_hours_minutes() {
        assert_eq!(D % DAY, 0);
        let all = |_: Grain, _: i64| true;
        // 22:30 the day before to 01:15 two days later.
        let p = plan(D - 90 * 60, D + DAY + HOUR + 15 * 60, &all);
        assert_eq!(
            p,
            vec![
                (Grain::Minute, D - 90 * 60, D - HOUR),
                (Grain::Hour, D - HOUR, D),
                (Grain::Day, D, D + DAY),
                (Grain::Hour, D + DAY, D + DAY + HOUR),
                (Grain::Minute, D + DAY + HOUR, D + DAY + HOUR + 15 * 60),
            ]
        );
        // A single whole day.
        assert_eq!(plan(D, D + DAY, &all), vec![(Grain::Day, D, D + DAY)]);
        // Inside one hour.
        assert_eq!(
            plan(D + 60, D + 120, &all),
            vec![(Grain::Minute, D + 60, D + 120)]
        );
        assert!(plan(D, D, &all).is_empty());
    }

    #[test]
    fn plan_falls_back_to_finer_grains() {
        // Day not usable, and its 03:00 hour neither: that hour comes from minutes.
        let usable = |g: Grain, p: i64| g == Grain::Hour && p != D + 3 * HOUR;
        let p = plan(D, D + DAY, &usable);
        assert_eq!(
            p,
            vec![
                (Grain::Hour, D, D + 3 * HOUR),
                (Grain::Minute, D + 3 * HOUR, D + 4 * HOUR),
                (Grain::Hour, D + 4 * HOUR, D + DAY),
            ]
        );
        let none = |_: Grain, _: i64| false;
        assert_eq!(plan(D, D + DAY, &none), vec![(Grain::Minute, D, D + DAY)]);
    }
}
