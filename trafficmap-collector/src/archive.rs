//! The archive: every finished day's map files (all views, as the daily writer left them in
//! `output_dir`) and the day's store extract, copied to object storage (S3, S3-compatible, or a
//! local directory) through `object_store`, kept for `archive.retention`, and restorable.
//!
//! Layout under the target's prefix, one folder per day:
//!
//! ```text
//! <prefix>/2026-11-23/instances-20261123.json        the daily maps, byte for byte
//! <prefix>/2026-11-23/clusters-20261123.json
//! <prefix>/2026-11-23/security-groups-20261123.json
//! <prefix>/2026-11-23/store-20261123.jsonl.gz         the store extract ([`extract`])
//! <prefix>/2026-11-23/manifest.json                   names, sizes and SHA-256 of the above
//! ```
//!
//! The manifest is written last: a day counts as archived only once its manifest is there, so a
//! crash or a failed upload half-way leaves a day that the next pass uploads again. A day is
//! compared with its manifest by content hash, so a pass over unchanged days uploads nothing and
//! a day whose map changed (late reports) uploads only the files that differ.

pub mod extract;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path as FsPath, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, NaiveDate, Utc};
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload, path::Path};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use trafficmap_model::map::View;

use crate::{config, metrics::Metrics, store::Store};

/// Format name and version of `manifest.json`.
pub const MANIFEST_FORMAT: &str = "trafficmap-archive-manifest";
pub const MANIFEST_VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// A manifest or map larger than this is not ours (maps of large fleets are tens of MB).
const MAX_OBJECT_BYTES: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("target: {0}")]
    Target(String),
    #[error("object storage: {0}")]
    Object(#[from] object_store::Error),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("credentials file {path}: {why}")]
    Credentials { path: PathBuf, why: String },
    #[error("{day}: the map file {file} is missing (the daily writer has not written it yet)")]
    MapMissing { day: NaiveDate, file: String },
    #[error("{day} is not in the archive")]
    NotArchived { day: NaiveDate },
    #[error("{day}: manifest: {why}")]
    Manifest { day: NaiveDate, why: String },
    #[error("{day}: {file} does not match its manifest ({why})")]
    Corrupt {
        day: NaiveDate,
        file: String,
        why: String,
    },
    #[error("{day}: store extract: {0}", day = .1)]
    Extract(extract::ExtractError, NaiveDate),
    #[error("{day}: the store already has data for this day; restore into an empty store")]
    DayInStore { day: NaiveDate },
}

pub type Result<T> = std::result::Result<T, ArchiveError>;

/// Where the archive lives, from `archive.target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    S3 { bucket: String, prefix: String },
    Dir(PathBuf),
}

impl Target {
    pub fn parse(s: &str) -> std::result::Result<Target, String> {
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err("s3://BUCKET[/PREFIX]: no bucket".into());
            }
            return Ok(Target::S3 {
                bucket: bucket.into(),
                prefix: prefix.trim_matches('/').into(),
            });
        }
        if let Some(path) = s.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err("file:///ABSOLUTE/PATH: the path must be absolute".into());
            }
            return Ok(Target::Dir(PathBuf::from(path)));
        }
        Err("expected s3://BUCKET[/PREFIX] or file:///ABSOLUTE/PATH".into())
    }
}

/// One file of an archived day, as its manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `manifest.json` of a day.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub day: NaiveDate,
    pub archived_at: DateTime<Utc>,
    pub files: Vec<FileEntry>,
}

/// What archiving one day did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DayOutcome {
    /// Every file already archived with the same content: nothing sent.
    Unchanged,
    /// These files (and then the manifest) were uploaded.
    Uploaded(Vec<String>),
}

/// An opened archive: the object store and the prefix of the days' folders.
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl Archive {
    /// Opens `cfg.target`. S3 credentials come from the standard chain (environment, web
    /// identity, ECS, instance profile) unless `credentials_file` names a shared-credentials file.
    pub fn open(cfg: &config::Archive) -> Result<Archive> {
        let target = Target::parse(&cfg.target).map_err(ArchiveError::Target)?;
        match target {
            Target::Dir(dir) => {
                std::fs::create_dir_all(&dir).map_err(|source| ArchiveError::Io {
                    path: dir.clone(),
                    source,
                })?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)?;
                Ok(Archive::new(Arc::new(fs), ""))
            }
            Target::S3 { bucket, prefix } => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(cfg.allow_http)
                    // A few quick retries per request; what still fails is retried at the next
                    // pass (the day has no new manifest yet).
                    .with_retry(object_store::RetryConfig {
                        max_retries: 4,
                        retry_timeout: Duration::from_secs(60),
                        ..Default::default()
                    });
                if let Some(e) = &cfg.endpoint_url {
                    // Path-style URLs: S3-compatible servers rarely have per-bucket host names.
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                let region = cfg
                    .region
                    .clone()
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
                    .unwrap_or_else(|| "us-east-1".into());
                b = b.with_region(region);
                if let Some(path) = &cfg.credentials_file {
                    let c = shared_credentials(path, &cfg.credentials_profile)?;
                    b = b
                        .with_access_key_id(c.key_id)
                        .with_secret_access_key(c.secret);
                    if let Some(t) = c.token {
                        b = b.with_token(t);
                    }
                }
                Ok(Archive::new(Arc::new(b.build()?), &prefix))
            }
        }
    }

    /// An archive on any object store (tests use this to count requests).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Archive {
        Archive {
            store,
            prefix: prefix.trim_matches('/').to_owned(),
        }
    }

    fn day_dir(&self, day: NaiveDate) -> String {
        let d = day.format("%Y-%m-%d");
        if self.prefix.is_empty() {
            d.to_string()
        } else {
            format!("{}/{d}", self.prefix)
        }
    }

    fn object(&self, day: NaiveDate, name: &str) -> Path {
        Path::from(format!("{}/{name}", self.day_dir(day)))
    }

    /// The archived days (those with a manifest), oldest first.
    pub async fn days(&self) -> Result<Vec<NaiveDate>> {
        let prefix = (!self.prefix.is_empty()).then(|| Path::from(self.prefix.as_str()));
        let listed = self.store.list_with_delimiter(prefix.as_ref()).await?;
        let mut days = BTreeSet::new();
        for p in listed.common_prefixes {
            let Some(last) = p.filename() else { continue };
            let Ok(day) = NaiveDate::parse_from_str(last, "%Y-%m-%d") else {
                continue;
            };
            // A folder without a manifest is an interrupted upload, not an archived day.
            if self.manifest(day).await?.is_some() {
                days.insert(day);
            }
        }
        Ok(days.into_iter().collect())
    }

    /// The day's manifest, if it was archived.
    pub async fn manifest(&self, day: NaiveDate) -> Result<Option<Manifest>> {
        let bytes = match self.get(&self.object(day, MANIFEST)).await {
            Ok(b) => b,
            Err(ArchiveError::Object(object_store::Error::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ArchiveError::Manifest {
            day,
            why: e.to_string(),
        })?;
        if m.format != MANIFEST_FORMAT || m.version != MANIFEST_VERSION || m.day != day {
            return Err(ArchiveError::Manifest {
                day,
                why: format!(
                    "{} version {} of {}: expected {MANIFEST_FORMAT} version {MANIFEST_VERSION} of {day}",
                    m.format, m.version, m.day
                ),
            });
        }
        Ok(Some(m))
    }

    async fn get(&self, path: &Path) -> Result<Vec<u8>> {
        let r = self.store.get(path).await?;
        if r.meta.size > MAX_OBJECT_BYTES as u64 {
            return Err(ArchiveError::Target(format!(
                "{path}: {} bytes, more than the {MAX_OBJECT_BYTES} an archived file may have",
                r.meta.size
            )));
        }
        Ok(r.bytes().await?.to_vec())
    }

    /// Archives `day`: its map files from `output_dir` and its store extract. Uploads only the
    /// files whose content differs from the manifest, then the manifest.
    pub async fn archive_day(
        &self,
        store: &Store,
        output_dir: &FsPath,
        day: NaiveDate,
        now: DateTime<Utc>,
    ) -> Result<DayOutcome> {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for v in View::ALL {
            let name = v.file_name(day);
            let path = output_dir.join(&name);
            match std::fs::read(&path) {
                Ok(b) => files.push((name, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(ArchiveError::MapMissing { day, file: name });
                }
                Err(source) => return Err(ArchiveError::Io { path, source }),
            }
        }
        let ex = extract::write(store, day)
            .await
            .map_err(|e| ArchiveError::Extract(e, day))?;
        files.push((extract::file_name(day), ex));
        let old: BTreeMap<String, String> = self
            .manifest(day)
            .await?
            .map(|m| m.files.into_iter().map(|f| (f.name, f.sha256)).collect())
            .unwrap_or_default();
        let entries: Vec<FileEntry> = files
            .iter()
            .map(|(name, b)| FileEntry {
                name: name.clone(),
                bytes: b.len() as u64,
                sha256: sha256(b),
            })
            .collect();
        let mut sent = Vec::new();
        for ((name, bytes), e) in files.into_iter().zip(&entries) {
            if old.get(&name) == Some(&e.sha256) {
                continue;
            }
            self.store
                .put(&self.object(day, &name), PutPayload::from(bytes))
                .await?;
            tracing::debug!(%day, file = %name, bytes = e.bytes, "archived");
            sent.push(name);
        }
        // Same files, same content: the manifest stays as it is (and nothing was sent).
        if sent.is_empty() && old.len() == entries.len() {
            return Ok(DayOutcome::Unchanged);
        }
        let m = Manifest {
            format: MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            day,
            archived_at: now,
            files: entries,
        };
        let body = serde_json::to_vec_pretty(&m).map_err(|e| ArchiveError::Manifest {
            day,
            why: e.to_string(),
        })?;
        self.store
            .put(&self.object(day, MANIFEST), PutPayload::from(body))
            .await?;
        Ok(DayOutcome::Uploaded(sent))
    }

    /// Deletes archived days before `oldest_kept`; returns them. The manifest goes first, so a
    /// day half-deleted is no longer listed as archived.
    pub async fn expire(&self, oldest_kept: NaiveDate) -> Result<Vec<NaiveDate>> {
        let mut gone = Vec::new();
        for day in self.days().await? {
            if day >= oldest_kept {
                continue;
            }
            self.store.delete(&self.object(day, MANIFEST)).await?;
            let dir = Path::from(self.day_dir(day));
            for o in self.store.list_with_delimiter(Some(&dir)).await?.objects {
                self.store.delete(&o.location).await?;
            }
            gone.push(day);
        }
        Ok(gone)
    }

    /// Restores `day`: its map files into `output_dir` and its extract into `store` (which must
    /// not have the day yet: the extract's rows would add to what is there). Every file is checked
    /// against the manifest's hash before anything is written.
    pub async fn restore(
        &self,
        day: NaiveDate,
        store: &Store,
        output_dir: &FsPath,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let m = self
            .manifest(day)
            .await?
            .ok_or(ArchiveError::NotArchived { day })?;
        if store.day_changed_at(day).await?.is_some() {
            return Err(ArchiveError::DayInStore { day });
        }
        let mut got = Vec::new();
        for f in &m.files {
            // The names come from the archive: only the names this module writes are accepted,
            // so a forged manifest cannot write outside `output_dir`.
            let known = View::ALL.iter().any(|v| v.file_name(day) == f.name)
                || f.name == extract::file_name(day);
            if !known {
                return Err(ArchiveError::Corrupt {
                    day,
                    file: f.name.clone(),
                    why: "not a file the archive writes".into(),
                });
            }
            let b = self.get(&self.object(day, &f.name)).await?;
            if b.len() as u64 != f.bytes || sha256(&b) != f.sha256 {
                return Err(ArchiveError::Corrupt {
                    day,
                    file: f.name.clone(),
                    why: format!("{} bytes, sha256 {}", b.len(), sha256(&b)),
                });
            }
            got.push((f.name.clone(), b));
        }
        std::fs::create_dir_all(output_dir).map_err(|source| ArchiveError::Io {
            path: output_dir.to_owned(),
            source,
        })?;
        let mut written = Vec::new();
        for (name, b) in got {
            if name == extract::file_name(day) {
                extract::restore(store, day, &b, now)
                    .await
                    .map_err(|e| ArchiveError::Extract(e, day))?;
            } else {
                let path = output_dir.join(&name);
                crate::mapservice::write_atomic(&path, &b)
                    .map_err(|source| ArchiveError::Io { path, source })?;
            }
            written.push(name);
        }
        Ok(written)
    }

    /// One pass of the service: archives the finished days that are not archived yet and
    /// compares again the last `lookback_days`, then applies retention. Never fails: what
    /// failed is logged, counted and tried again at the next pass.
    pub async fn pass(
        &self,
        cfg: &config::Archive,
        store: &Store,
        output_dir: &FsPath,
        metrics: &Metrics,
        now: DateTime<Utc>,
    ) -> PassSummary {
        let mut s = PassSummary::default();
        let todo = match self.due(cfg, store, now).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "archive: listing days failed; retrying at the next pass");
                metrics.archive_days.get_or_create(&result("failed")).inc();
                s.failed += 1;
                return s;
            }
        };
        for day in todo {
            let r = match self.archive_day(store, output_dir, day, now).await {
                Ok(DayOutcome::Unchanged) => "unchanged",
                Ok(DayOutcome::Uploaded(files)) => {
                    tracing::info!(%day, files = ?files, "archive: day uploaded");
                    "uploaded"
                }
                Err(ArchiveError::MapMissing { file, .. }) => {
                    // The daily writer has not produced the day yet: not a failure.
                    tracing::debug!(%day, %file, "archive: waiting for the daily maps");
                    continue;
                }
                Err(e) => {
                    tracing::error!(%day, error = %e, "archive: day failed; retrying at the next pass");
                    "failed"
                }
            };
            metrics.archive_days.get_or_create(&result(r)).inc();
            match r {
                "uploaded" => s.uploaded += 1,
                "unchanged" => s.unchanged += 1,
                _ => s.failed += 1,
            }
        }
        if let Some(oldest) = oldest_kept(cfg, now) {
            match self.expire(oldest).await {
                Ok(gone) if !gone.is_empty() => {
                    tracing::info!(days = ?gone, "archive: days past retention deleted")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "archive: retention failed; retrying at the next pass");
                    s.failed += 1;
                }
            }
        }
        if s.failed == 0 {
            metrics.archive_last_success.set(now.timestamp());
        }
        s
    }

    /// Finished days the store has that are not archived, plus the recent ones (compared
    /// again), within retention; oldest first.
    pub async fn due(
        &self,
        cfg: &config::Archive,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Vec<NaiveDate>> {
        let today = now.date_naive();
        let archived: BTreeSet<NaiveDate> = self.days().await?.into_iter().collect();
        let recent = today - chrono::Days::new(u64::from(cfg.lookback_days.max(1)));
        let oldest = oldest_kept(cfg, now);
        let mut days: Vec<NaiveDate> = store
            .days()
            .await?
            .into_iter()
            .filter(|&d| finished(cfg, d, now))
            .filter(|&d| oldest.is_none_or(|o| d >= o))
            .filter(|d| !archived.contains(d) || *d >= recent)
            .collect();
        days.sort();
        Ok(days)
    }
}

/// Counts of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub uploaded: u32,
    pub unchanged: u32,
    pub failed: u32,
}

fn result(r: &'static str) -> crate::metrics::ArchiveResult {
    crate::metrics::ArchiveResult { result: r }
}

/// A day is archived once it is over and, for yesterday, once `schedule` has passed today.
pub fn finished(cfg: &config::Archive, day: NaiveDate, now: DateTime<Utc>) -> bool {
    let today = now.date_naive();
    day < today && (day.succ_opt() != Some(today) || now.time() >= cfg.schedule)
}

/// The oldest day retention keeps (`None`: retention is off).
pub fn oldest_kept(cfg: &config::Archive, now: DateTime<Utc>) -> Option<NaiveDate> {
    let days = cfg.retention.as_secs() / 86_400;
    (days > 0).then(|| now.date_naive() - chrono::Days::new(days))
}

pub fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

struct Creds {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// Reads `[profile]` of an AWS shared-credentials file (`aws_access_key_id`,
/// `aws_secret_access_key`, `aws_session_token`). Hand-written: object_store reads only the
/// environment, and the INI subset AWS writes is a few lines.
fn shared_credentials(path: &FsPath, profile: &str) -> Result<Creds> {
    let bad = |why: String| ArchiveError::Credentials {
        path: path.to_owned(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut section = String::new();
    let mut kv = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = s.trim().to_owned();
            continue;
        }
        if section == profile
            && let Some((k, v)) = line.split_once('=')
        {
            kv.insert(k.trim().to_owned(), v.trim().to_owned());
        }
    }
    let mut take = |k: &str| kv.remove(k).filter(|v| !v.is_empty());
    Ok(Creds {
        key_id: take("aws_access_key_id")
            .ok_or_else(|| bad(format!("[{profile}] has no aws_access_key_id")))?,
        secret: take("aws_secret_access_key")
            .ok_or_else(|| bad(format!("[{profile}] has no aws_secret_access_key")))?,
        token: take("aws_session_token"),
    })
}

/// The service's archive task (one call in `run::periodic`): a pass every `archive.interval`
/// until shutdown. `None` when the archive is off.
pub fn spawn(
    app: Arc<crate::server::App>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !app.cfg.archive.enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let cfg = &app.cfg.archive;
        let mut tick = tokio::time::interval(cfg.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut archive = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // Opened lazily and again after a failure (a credentials file not there yet).
            if archive.is_none() {
                match Archive::open(cfg) {
                    Ok(a) => archive = Some(a),
                    Err(e) => {
                        app.metrics
                            .archive_days
                            .get_or_create(&result("failed"))
                            .inc();
                        tracing::error!(error = %e, "archive: cannot open the target; retrying at the next pass");
                        continue;
                    }
                }
            }
            if let Some(a) = &archive {
                let s = a
                    .pass(cfg, &app.store, &app.output_dir, &app.metrics, Utc::now())
                    .await;
                tracing::info!(
                    uploaded = s.uploaded,
                    unchanged = s.unchanged,
                    failed = s.failed,
                    "archive pass done"
                );
            }
        }
    }))
}

/// `trafficmap-collector archive ...`.
pub async fn command(
    cfg: &config::Config,
    cmd: &crate::cli::ArchiveCommand,
) -> anyhow::Result<i32> {
    use crate::cli::ArchiveCommand as C;
    let archive = Archive::open(&cfg.archive)?;
    match cmd {
        C::List => {
            for day in archive.days().await? {
                let m = archive.manifest(day).await?;
                let (files, bytes, at) = m.map_or((0, 0, String::new()), |m| {
                    (
                        m.files.len(),
                        m.files.iter().map(|f| f.bytes).sum::<u64>(),
                        m.archived_at.to_rfc3339(),
                    )
                });
                println!("{day}\t{files} files\t{bytes} bytes\tarchived {at}");
            }
            Ok(0)
        }
        C::Run { day } => {
            let store = Store::open(cfg.store_options()).await?;
            let now = Utc::now();
            let days = match day {
                Some(d) => vec![*d],
                None => archive.due(&cfg.archive, &store, now).await?,
            };
            let mut failed = 0;
            for d in days {
                match archive.archive_day(&store, &cfg.output_dir(), d, now).await {
                    Ok(DayOutcome::Unchanged) => println!("{d}\tunchanged"),
                    Ok(DayOutcome::Uploaded(f)) => println!("{d}\tuploaded {}", f.join(" ")),
                    Err(e) => {
                        eprintln!("{d}\tfailed: {e}");
                        failed += 1;
                    }
                }
            }
            if let Some(oldest) = oldest_kept(&cfg.archive, now) {
                for d in archive.expire(oldest).await? {
                    println!("{d}\tdeleted (retention)");
                }
            }
            Ok(i32::from(failed > 0))
        }
        C::Restore { day, into } => {
            let (opts, out) = match into {
                Some(dir) => (
                    crate::store::Options::Sqlite {
                        dir: dir.clone(),
                        sync: cfg.storage.sqlite_sync,
                    },
                    dir.join("maps"),
                ),
                None => (cfg.store_options(), cfg.output_dir()),
            };
            let store = Store::open(opts).await?;
            let files = archive.restore(*day, &store, &out, Utc::now()).await?;
            // Restored rows are minute rows: fold them into the day so the store is as usual.
            store
                .maintain(Utc::now(), cfg.retention.retention())
                .await?;
            println!("{day}\trestored {} into {}", files.join(" "), out.display());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("s3://b/some/prefix/").unwrap(),
            Target::S3 {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Target::parse("s3://b").unwrap(),
            Target::S3 {
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            Target::parse("file:///var/archive").unwrap(),
            Target::Dir("/var/archive".into())
        );
        assert!(Target::parse("file://relative").is_err());
        assert!(Target::parse("s3:///x").is_err());
        assert!(Target::parse("/var/archive").is_err());
    }

    #[test]
    fn yesterday_waits_for_the_schedule() {
        let cfg = config::Archive::default(); // 01:00
        let d = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert!(!finished(&cfg, d, at("2026-11-23T23:00:00Z")));
        assert!(!finished(&cfg, d, at("2026-11-24T00:59:59Z")));
        assert!(finished(&cfg, d, at("2026-11-24T01:00:00Z")));
        assert!(finished(&cfg, d, at("2026-11-25T00:00:00Z")));
        let r = config::Archive {
            retention: Duration::from_secs(2 * 86_400),
            ..cfg
        };
        assert_eq!(
            oldest_kept(&r, at("2026-11-25T05:00:00Z")),
            Some(NaiveDate::from_ymd_opt(2026, 11, 23).unwrap())
        );
    }

    #[test]
    fn credentials_file_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\n[other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n",
        )
        .unwrap();
        let c = shared_credentials(&p, "other").unwrap();
        assert_eq!((c.key_id.as_str(), c.secret.as_str()), ("C", "D"));
        assert_eq!(c.token.as_deref(), Some("E"));
        let c = shared_credentials(&p, "default").unwrap();
        assert_eq!((c.key_id.as_str(), c.token), ("A", None));
        assert!(matches!(
            shared_credentials(&p, "missing"),
            Err(ArchiveError::Credentials { .. })
        ));
    }
}
