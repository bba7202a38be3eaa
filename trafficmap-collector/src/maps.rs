//! Building maps from the store: the one path used by the HTTP API, the daily files, the CLI and
//! the golden tests.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use trafficmap_model::map::{Map, View};

use crate::{
    cost::CostRates,
    enrich::{Directory, Sources, refresh::Enricher},
    mapbuild::{Prepared, prepare, render, unnamed_addresses},
    store::{Result, Store, day_start},
};

/// A range's conversations, resolved with the sources of its time.
pub struct Built {
    pub prepared: Prepared,
    pub sources: Sources,
}

/// Reads `[from, to)` from the store and resolves it. A range in the past is enriched with the
/// EC2 snapshot of its last day. Addresses nothing names are queued for reverse DNS.
pub async fn build(
    store: &Store,
    enricher: &Enricher,
    rates: &CostRates,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Built> {
    let data = store.range(from, to).await?;
    let last_day = (to - Duration::seconds(1)).date_naive();
    let sources = enricher
        .sources_for_day(store, last_day, now.date_naive())
        .await;
    let prepared = {
        let dir = Directory {
            sources: &sources,
            rules: &enricher.rules,
        };
        prepare(&data, &dir, rates)
    };
    enricher.request_dns(unnamed_addresses(&prepared));
    Ok(Built { prepared, sources })
}

impl Built {
    pub fn render(&self, enricher: &Enricher, view: View, generated_at: DateTime<Utc>) -> Map {
        let dir = Directory {
            sources: &self.sources,
            rules: &enricher.rules,
        };
        render(&self.prepared, view, &dir, generated_at)
    }
}

pub fn day_range(day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
    let s = day_start(day);
    (
        crate::obs::from_secs(s),
        crate::obs::from_secs(s + crate::obs::DAY),
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
    for view in View::ALL {
        let map = built.render(enricher, view, now);
        let path = dir.join(view.file_name(day));
        write_atomic(&path, &map.to_json_pretty())
            .map_err(|e| crate::store::StoreError::Other(format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    Ok(written)
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
