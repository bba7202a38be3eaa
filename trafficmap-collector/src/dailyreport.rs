//! The daily report: the archdomain compliance of a day (`query::compliance`, the same answer
//! as `query archdomains`) plus the cross-env edges new that day, rendered as text, HTML and
//! JSON; mailed by the service every day at `[reports] schedule` (UTC) for the previous day,
//! and printed by `report compliance` / `report send --dry-run`.
//!
//! "Cross-env edges new on day D": the (client cluster, server cluster) pairs between two
//! different envs that `query cross-env` lists for D and not for D-1, both days built from the
//! store through `mapservice::build` like every map.
//!
//! The days mailed are recorded in `<data_dir>/reports-sent.json` (written atomically, after
//! the server accepted the message): a restart neither sends a day again nor skips one. After
//! downtime the days missed are sent once each, oldest first, at most [`MAX_DAYS_BACK`] back;
//! older ones are logged, not sent. A failed send is retried with a capped backoff.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    config::{self, Config},
    enrich::refresh::Enricher,
    export::grouped,
    mail::{MailError, Mailer},
    mapservice::{self, Built},
    metrics::Metrics,
    query::{self, Compliance},
    store::Store,
};

/// After downtime, missed days are mailed at most this many days back (the latest included).
pub const MAX_DAYS_BACK: u64 = 7;
/// The record of mailed days, in `data_dir`.
pub const SENT_FILE: &str = "reports-sent.json";
const SENT_FORMAT: &str = "trafficmap-reports-sent";
const SENT_VERSION: u32 = 1;
/// Days kept in the record (only the newest matters; a few more help whoever reads it).
const SENT_KEPT: usize = 60;
/// Lines listed per section of a mail; the rest is counted (the CLI's JSON has everything).
pub const MAX_LINES: usize = 200;
/// Hosts named per archdomain line of a mail; the rest is counted.
pub const MAX_HOSTS_PER_LINE: usize = 20;
/// An allowed-archdomains file larger than this is refused.
const MAX_ALLOWED_FILE_BYTES: u64 = 4 << 20;
/// How often the service looks whether a report is due.
const CHECK_EVERY: Duration = Duration::from_secs(60);
/// At start, how long the first report waits for the EC2 data to load (then it goes anyway).
const CLOUD_WAIT: Duration = Duration::from_secs(600);
/// Retry after a failed send: doubling from the first, capped.
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(
        "the compliance report needs reports.allowed_archdomains_file (the allowed archdomains, one per line)"
    )]
    NoAllowedFile,
    #[error("reports.allowed_archdomains_file {}: {why}", .path.display())]
    AllowedFile { path: PathBuf, why: String },
    #[error("reports.to is empty: nobody to mail the report to")]
    NoRecipients,
    #[error("{0}")]
    Mail(#[from] MailError),
    #[error("record of mailed days {}: {why}", .path.display())]
    Record { path: PathBuf, why: String },
}

pub type Result<T> = std::result::Result<T, ReportError>;

/// A cross-env edge: client cluster to server cluster, `archdomain (env)` as `query cross-env`
/// names them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrossEnvEdge {
    pub client_env: String,
    pub server_env: String,
    pub client: String,
    pub server: String,
    pub ports: Vec<u16>,
    pub bytes: u64,
}

/// The compliance section.
#[derive(Serialize)]
pub struct ComplianceReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(flatten)]
    pub tags: Compliance,
    /// Cross-env edges of the day that the day before did not have, largest first.
    pub new_cross_env: Vec<CrossEnvEdge>,
}

/// One day's report.
#[derive(Serialize)]
pub struct DailyReport {
    pub day: NaiveDate,
    pub generated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compliance: Option<ComplianceReport>,
    /// The cost report (`report costs`, costreport.rs) of the day's instances map.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub costs: Option<crate::costreport::CostReport>,
}

/// Cross-env cluster pairs of `today` absent from `before`, largest first.
pub fn new_cross_env(today: &Built, before: &Built) -> Vec<CrossEnvEdge> {
    let seen: BTreeSet<(String, String)> = query::cross_env_pairs(before, usize::MAX)
        .into_iter()
        .flat_map(|p| p.top.into_iter().map(|c| (c.client, c.server)))
        .collect();
    let mut out: Vec<CrossEnvEdge> = query::cross_env_pairs(today, usize::MAX)
        .into_iter()
        .flat_map(|p| {
            let (ce, se) = (p.client_env, p.server_env);
            p.top.into_iter().map(move |c| CrossEnvEdge {
                client_env: ce.clone(),
                server_env: se.clone(),
                client: c.client,
                server: c.server,
                ports: c.ports,
                bytes: c.bytes,
            })
        })
        .filter(|e| !seen.contains(&(e.client.clone(), e.server.clone())))
        .collect();
    out.sort_by(|a, b| {
        b.bytes
            .cmp(&a.bytes)
            .then_with(|| (&a.client, &a.server).cmp(&(&b.client, &b.server)))
    });
    out
}

/// The allowed archdomains of `[reports]`.
pub fn allowed(cfg: &config::Reports) -> Result<Vec<String>> {
    use std::io::Read as _;
    let path = cfg
        .allowed_archdomains_file
        .as_ref()
        .ok_or(ReportError::NoAllowedFile)?;
    let bad = |why: String| ReportError::AllowedFile {
        path: path.clone(),
        why,
    };
    let f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let mut text = String::new();
    f.take(MAX_ALLOWED_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    if text.len() as u64 > MAX_ALLOWED_FILE_BYTES {
        return Err(bad(format!("larger than {MAX_ALLOWED_FILE_BYTES} bytes")));
    }
    Ok(query::parse_allowed(&text))
}

/// The report of `day`, whose map `today` is already built (the CLI builds it with DNS names):
/// the day before is built here.
pub async fn complete(
    cfg: &Config,
    store: &Store,
    enricher: &Enricher,
    today: &Built,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<DailyReport> {
    let compliance = if cfg.reports.compliance {
        let allowed = allowed(&cfg.reports)?;
        let prev = day - Days::new(1);
        let (pf, pt) = mapservice::day_range(prev);
        let before = mapservice::build(store, enricher, &cfg.cost, pf, pt, now).await?;
        let (from, to) = mapservice::day_range(day);
        Some(ComplianceReport {
            from,
            to,
            tags: query::compliance(today, &enricher.rules, &allowed),
            new_cross_env: new_cross_env(today, &before),
        })
    } else {
        None
    };
    let costs = cfg.reports.costs.then(|| {
        let map = today.render(enricher, trafficmap_model::map::View::Instances, now);
        crate::costreport::build(&map, &crate::costreport::Dimension::ALL)
    });
    Ok(DailyReport {
        day,
        generated_at: now,
        compliance,
        costs,
    })
}

/// The report of `day`, from the store.
pub async fn build(
    cfg: &Config,
    store: &Store,
    enricher: &Enricher,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<DailyReport> {
    let (from, to) = mapservice::day_range(day);
    let today = mapservice::build(store, enricher, &cfg.cost, from, to, now).await?;
    complete(cfg, store, enricher, &today, day, now).await
}

/// Names come from reports, EC2 tags and DNS: no control characters reach a mail or a terminal.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{} {}", grouped(n as u64), if n == 1 { one } else { many })
}

/// One section: a title, its lines (at most [`MAX_LINES`]) and how many were left out.
struct Section {
    title: String,
    lines: Vec<String>,
    more: usize,
}

impl Section {
    fn new(title: &str, all: Vec<String>) -> Section {
        let n = all.len();
        let mut lines = all;
        lines.truncate(MAX_LINES);
        Section {
            title: format!("{title} ({})", grouped(n as u64)),
            more: n - lines.len(),
            lines,
        }
    }
}

fn edge_line(e: &CrossEnvEdge) -> String {
    let ports: Vec<String> = e.ports.iter().map(ToString::to_string).collect();
    format!(
        "{} -> {}  port(s) {}  {} bytes",
        clean(&e.client),
        clean(&e.server),
        ports.join(" "),
        grouped(e.bytes)
    )
}

impl ComplianceReport {
    fn sections(&self) -> Vec<Section> {
        let t = &self.tags;
        let per_tag = |m: &BTreeMap<String, Vec<String>>| -> Vec<String> {
            m.iter()
                .map(|(a, hosts)| {
                    let mut named: Vec<String> = hosts
                        .iter()
                        .take(MAX_HOSTS_PER_LINE)
                        .map(|h| clean(h))
                        .collect();
                    if hosts.len() > named.len() {
                        named.push(format!(
                            "and {} more",
                            grouped((hosts.len() - named.len()) as u64)
                        ));
                    }
                    format!("{}: {}", clean(a), named.join(", "))
                })
                .collect()
        };
        vec![
            Section::new("Tags seen that are not allowed", per_tag(&t.not_allowed)),
            Section::new(
                "Allowed tags nobody uses",
                t.unused.iter().map(|u| clean(u)).collect(),
            ),
            Section::new(
                "Hosts without tags",
                t.untagged.iter().map(|h| clean(h)).collect(),
            ),
            Section::new(
                "Cross-env edges new today",
                self.new_cross_env.iter().map(edge_line).collect(),
            ),
            Section::new(
                "Allowed tags in use",
                t.allowed
                    .iter()
                    .map(|(a, hosts)| {
                        format!("{}: {}", clean(a), plural(hosts.len(), "host", "hosts"))
                    })
                    .collect(),
            ),
        ]
    }
}

impl DailyReport {
    /// The mail's subject (after `subject_prefix`): the day and the counts that need action.
    pub fn subject(&self, prefix: &str) -> String {
        let mut s = format!("{} daily report {}", clean(prefix), self.day);
        if let Some(c) = &self.compliance {
            let _ = write!(
                s,
                ": {} not allowed, {} untagged, {} new",
                plural(c.tags.not_allowed.len(), "tag", "tags"),
                plural(c.tags.untagged.len(), "host", "hosts"),
                plural(c.new_cross_env.len(), "cross-env edge", "cross-env edges"),
            );
        }
        s.trim_start().to_owned()
    }

    pub fn to_text(&self) -> String {
        let mut out = format!("trafficmap daily report for {} (UTC)\n", self.day);
        if let Some(c) = &self.compliance {
            let _ = write!(out, "\nArchdomain compliance, {} .. {}\n", c.from, c.to);
            for s in c.sections() {
                let _ = write!(out, "\n{}:\n", s.title);
                for l in &s.lines {
                    let _ = writeln!(out, "  {l}");
                }
                if s.more > 0 {
                    let _ = writeln!(
                        out,
                        "  ... and {} more (trafficmap-collector report compliance --day {} --format json lists all)",
                        grouped(s.more as u64),
                        self.day
                    );
                }
            }
        }
        if let Some(c) = &self.costs {
            out.push('\n');
            out.push_str(&c.to_text());
        }
        out
    }

    /// HTML: every name escaped; no scripts, no external resources.
    pub fn to_html(&self) -> String {
        use html_escape::encode_text as esc;
        let mut out = String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>");
        let title = format!("trafficmap daily report for {} (UTC)", self.day);
        let _ = write!(
            out,
            "{}</title></head><body>\n<h1>{}</h1>\n",
            esc(&title),
            esc(&title)
        );
        if let Some(c) = &self.compliance {
            let _ = writeln!(
                out,
                "<h2>Archdomain compliance, {} .. {}</h2>",
                esc(&c.from.to_string()),
                esc(&c.to.to_string())
            );
            for s in c.sections() {
                let _ = write!(out, "<h3>{}</h3>\n<ul>\n", esc(&s.title));
                for l in &s.lines {
                    let _ = writeln!(out, "<li>{}</li>", esc(l));
                }
                if s.more > 0 {
                    let _ = writeln!(
                        out,
                        "<li>... and {} more (<code>trafficmap-collector report compliance --day {} --format json</code> lists all)</li>",
                        grouped(s.more as u64),
                        self.day
                    );
                }
                out.push_str("</ul>\n");
            }
        }
        if let Some(c) = &self.costs {
            out.push_str(&c.to_html());
        }
        out.push_str("</body></html>\n");
        out
    }

    /// The message `[reports]` describes.
    pub fn message(&self, cfg: &config::Reports) -> Result<lettre::Message> {
        if cfg.to.is_empty() {
            return Err(ReportError::NoRecipients);
        }
        Ok(crate::mail::message(
            &cfg.from,
            &cfg.to,
            &self.subject(&cfg.subject_prefix),
            self.to_text(),
            self.to_html(),
        )?)
    }
}

/// Builds `day`'s report and mails it.
pub async fn send_day(
    cfg: &Config,
    store: &Store,
    enricher: &Enricher,
    day: NaiveDate,
    now: DateTime<Utc>,
) -> Result<()> {
    let report = build(cfg, store, enricher, day, now).await?;
    let msg = report.message(&cfg.reports)?;
    Mailer::new(&cfg.reports.smtp)?.send(msg).await?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct SentRecord {
    format: String,
    version: u32,
    days: Vec<NaiveDate>,
}

/// The days already mailed (`<data_dir>/reports-sent.json`).
pub struct SentDays {
    path: PathBuf,
    days: BTreeSet<NaiveDate>,
}

impl SentDays {
    /// Reads the record; no file: nothing mailed yet. A damaged file is an error (mailing
    /// every day again would be worse than waiting for someone to look).
    pub fn open(data_dir: &Path) -> Result<SentDays> {
        let path = data_dir.join(SENT_FILE);
        let bad = |why: String| ReportError::Record {
            path: path.clone(),
            why,
        };
        let days = match std::fs::read(&path) {
            Ok(b) => {
                let r: SentRecord = serde_json::from_slice(&b)
                    .map_err(|e| bad(format!("{e}; fix or delete it")))?;
                if r.format != SENT_FORMAT || r.version != SENT_VERSION {
                    return Err(bad(format!(
                        "{} version {}: expected {SENT_FORMAT} version {SENT_VERSION}",
                        r.format, r.version
                    )));
                }
                r.days.into_iter().collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(SentDays { path, days })
    }

    pub fn days(&self) -> Vec<NaiveDate> {
        self.days.iter().copied().collect()
    }

    pub fn last(&self) -> Option<NaiveDate> {
        self.days.last().copied()
    }

    /// Adds `day` and writes the record (temporary file, fsync, rename).
    pub fn record(&mut self, day: NaiveDate) -> Result<()> {
        self.days.insert(day);
        while self.days.len() > SENT_KEPT {
            self.days.pop_first();
        }
        let r = SentRecord {
            format: SENT_FORMAT.into(),
            version: SENT_VERSION,
            days: self.days(),
        };
        let bad = |why: String| ReportError::Record {
            path: self.path.clone(),
            why,
        };
        let body = serde_json::to_vec_pretty(&r).map_err(|e| bad(e.to_string()))?;
        mapservice::write_atomic(&self.path, &body).map_err(|e| bad(e.to_string()))
    }
}

/// What a pass should do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Days to mail, oldest first.
    pub send: Vec<NaiveDate>,
    /// Days missed that are too old to mail (first, last).
    pub too_old: Option<(NaiveDate, NaiveDate)>,
}

/// The days due at `now`: yesterday once `schedule` has passed today (else the day before),
/// and every day after the last one mailed up to it, at most [`MAX_DAYS_BACK`] back. With
/// nothing mailed yet (a new installation), only the latest.
pub fn due(schedule: NaiveTime, last_sent: Option<NaiveDate>, now: DateTime<Utc>) -> Due {
    let today = now.date_naive();
    let latest = today - Days::new(if now.time() >= schedule { 1 } else { 2 });
    let Some(last) = last_sent else {
        return Due {
            send: vec![latest],
            too_old: None,
        };
    };
    if last >= latest {
        return Due::default();
    }
    let oldest = latest - Days::new(MAX_DAYS_BACK - 1);
    let first = last + Days::new(1);
    let too_old = (first < oldest).then(|| (first, oldest - Days::new(1)));
    let send = first
        .max(oldest)
        .iter_days()
        .take_while(|d| *d <= latest)
        .collect();
    Due { send, too_old }
}

/// Counts of one pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub sent: u32,
    pub failed: u32,
}

fn count(metrics: &Metrics, result: &'static str) {
    metrics
        .report_mails
        .get_or_create(&crate::metrics::MailResult { result })
        .inc();
}

/// One pass of the service: mails the days due, oldest first, recording each; stops at the
/// first failure (the next pass, after the backoff, starts again from that day).
pub async fn pass(
    cfg: &Config,
    store: &Store,
    enricher: &Enricher,
    sent: &mut SentDays,
    metrics: &Metrics,
    now: DateTime<Utc>,
) -> PassSummary {
    let mut s = PassSummary::default();
    let d = due(cfg.reports.schedule, sent.last(), now);
    if let Some((first, last)) = d.too_old {
        tracing::warn!(%first, %last, "reports: days missed more than {MAX_DAYS_BACK} days back are not mailed");
    }
    for day in d.send {
        match send_day(cfg, store, enricher, day, now).await {
            Ok(()) => {
                count(metrics, "sent");
                s.sent += 1;
                metrics.report_last_sent.set(now.timestamp());
                tracing::info!(%day, to = ?cfg.reports.to, "reports: daily report mailed");
                if let Err(e) = sent.record(day) {
                    // Mailed but not recorded: the next pass mails it again rather than never.
                    tracing::error!(%day, error = %e, "reports: recording the mailed day failed");
                    s.failed += 1;
                    return s;
                }
            }
            Err(e) => {
                count(metrics, "failed");
                s.failed += 1;
                tracing::error!(%day, error = %e, "reports: mailing the daily report failed; retrying with backoff");
                return s;
            }
        }
    }
    s
}

/// The next wait after a failed pass: doubling from [`RETRY_FIRST`] up to [`RETRY_MAX`].
pub fn backoff(previous: Option<Duration>) -> Duration {
    previous.map_or(RETRY_FIRST, |p| (p * 2).min(RETRY_MAX))
}

/// The service's report task (started by `run::periodic`): a look every minute, a pass when a
/// day is due, retries with backoff. Stops at shutdown, after a send in progress (bounded by
/// `reports.smtp.timeout`). `None` when `reports.to` is empty.
pub fn spawn(
    app: Arc<crate::server::App>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    if !app.cfg.reports.mailing() {
        return None;
    }
    Some(tokio::spawn(async move {
        // A report made before the EC2 data is loaded would list no instance: wait for it,
        // for a while (a service started at the schedule mails yesterday at once).
        let start = tokio::time::Instant::now();
        while !app.enricher.cloud_ready() {
            if start.elapsed() >= CLOUD_WAIT {
                tracing::warn!("reports: EC2 data still not loaded; mailing without it");
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
        let mut sent = None;
        let mut retry: Option<Duration> = None;
        // The first look comes at once: a day missed while the service was down goes out now.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            if sent.is_none() {
                match SentDays::open(&app.cfg.data_dir) {
                    Ok(s) => {
                        tracing::info!(
                            schedule = %app.cfg.reports.schedule,
                            last_mailed = ?s.last(),
                            "reports: daily mail scheduled (UTC)"
                        );
                        sent = Some(s);
                    }
                    Err(e) => {
                        count(&app.metrics, "failed");
                        tracing::error!(error = %e, "reports: cannot read the record of mailed days; nothing is mailed until it can be");
                        retry = Some(backoff(retry));
                        wait = retry.unwrap_or(RETRY_MAX);
                        continue;
                    }
                }
            }
            let Some(s) = sent.as_mut() else { continue };

            let r = pass(
                &app.cfg,
                &app.store,
                &app.enricher,
                s,
                &app.metrics,
                Utc::now(),
            )
            .await;
            if r.failed > 0 {
                retry = Some(backoff(retry));
                wait = retry.unwrap_or(RETRY_MAX);
            } else {
                retry = None;
                wait = CHECK_EVERY;
            }
        }
    }))
}

/// `trafficmap-collector report compliance|send`.
pub async fn command(
    settings: &crate::cli::Settings,
    cmd: &crate::cli::ReportCommand,
) -> anyhow::Result<i32> {
    use crate::cli::{ReportCommand as C, ReportFormat};
    let now = Utc::now();
    let (day, progress) = match cmd {
        C::Compliance(a) => (a.day, a.progress),
        C::Send(a) => (a.day, a.progress),
        C::Costs(a) => return crate::costreport::command(settings, a).await.map(|()| 0),
    };
    let day = day.unwrap_or(now.date_naive() - Days::new(1));
    let p = query::Progress::new(progress);
    let range = crate::cli::RangeArgs {
        day: Some(day),
        ..Default::default()
    };
    let mut l = query::load(settings, &range, &p).await?;
    if let C::Compliance(_) = cmd {
        // This command prints the compliance section, whatever `[reports]` says (`report
        // costs` prints the other).
        l.cfg.reports.compliance = true;
        l.cfg.reports.costs = false;
    }
    let report = complete(&l.cfg, &l.store, &l.enricher, &l.built, day, now).await?;
    let mut out = std::io::stdout().lock();
    use std::io::Write as _;
    match cmd {
        C::Compliance(a) => match a.format {
            ReportFormat::Text => out.write_all(report.to_text().as_bytes())?,
            ReportFormat::Html => out.write_all(report.to_html().as_bytes())?,
            ReportFormat::Json => {
                serde_json::to_writer_pretty(&mut out, &report)?;
                writeln!(out)?;
            }
        },
        C::Costs(_) => {}
        C::Send(a) => {
            let msg = report.message(&l.cfg.reports)?;
            if a.dry_run {
                out.write_all(&msg.formatted())?;
            } else {
                Mailer::new(&l.cfg.reports.smtp)?.send(msg).await?;
                p.step(format!(
                    "mailed the report of {day} to {}",
                    l.cfg.reports.to.join(", ")
                ));
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn schedule_parses_hours_and_minutes() {
        let c = Config::from_toml("[reports]\nschedule = \"06:30\"\n", "c.toml").unwrap();
        assert_eq!(
            c.reports.schedule,
            NaiveTime::from_hms_opt(6, 30, 0).unwrap()
        );
    }

    #[test]
    fn due_days() {
        let six = NaiveTime::from_hms_opt(6, 0, 0).unwrap();
        // New installation: only yesterday, once the schedule has passed.
        assert_eq!(
            due(six, None, at("2026-11-24T06:00:00Z")).send,
            [d("2026-11-23")]
        );
        assert_eq!(
            due(six, None, at("2026-11-24T05:59:59Z")).send,
            [d("2026-11-22")]
        );
        // Already mailed: nothing (a restart sends nothing again).
        assert_eq!(
            due(six, Some(d("2026-11-23")), at("2026-11-24T07:00:00Z")),
            Due::default()
        );
        assert_eq!(
            due(six, Some(d("2026-11-22")), at("2026-11-24T05:00:00Z")),
            Due::default()
        );
        // Down for three days: each missed day once, oldest first.
        assert_eq!(
            due(six, Some(d("2026-11-20")), at("2026-11-24T06:00:00Z")).send,
            [d("2026-11-21"), d("2026-11-22"), d("2026-11-23")]
        );
        // Down for a month: the last 7 days; the rest is reported as too old.
        let long = due(six, Some(d("2026-10-20")), at("2026-11-24T06:00:00Z"));
        assert_eq!(
            long.send,
            (17..=23)
                .map(|n| d(&format!("2026-11-{n}")))
                .collect::<Vec<_>>()
        );
        assert_eq!(long.too_old, Some((d("2026-10-21"), d("2026-11-16"))));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = None;
        let mut seen = Vec::new();
        for _ in 0..9 {
            b = Some(backoff(b));
            seen.push(b.unwrap().as_secs());
        }
        assert_eq!(seen, [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]);
    }

    #[test]
    fn sent_days_survive_a_reopen_and_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SentDays::open(dir.path()).unwrap();
        assert_eq!(s.last(), None);
        s.record(d("2026-11-23")).unwrap();
        s.record(d("2026-11-22")).unwrap();
        let again = SentDays::open(dir.path()).unwrap();
        assert_eq!(again.days(), [d("2026-11-22"), d("2026-11-23")]);
        let mut s = again;
        for n in 0..100 {
            s.record(d("2026-01-01") + Days::new(n)).unwrap();
        }
        let again = SentDays::open(dir.path()).unwrap();
        assert_eq!(again.days().len(), SENT_KEPT);
        assert_eq!(again.last(), Some(d("2026-11-23")));
        std::fs::write(dir.path().join(SENT_FILE), b"{not json").unwrap();
        let e = SentDays::open(dir.path()).err().unwrap().to_string();
        assert!(e.starts_with(&format!(
            "record of mailed days {}: ",
            dir.path().join(SENT_FILE).display()
        )));
        assert!(e.ends_with("; fix or delete it"), "{e}");
    }

    fn sample() -> DailyReport {
        let mut tags = Compliance::default();
        tags.not_allowed
            .insert("<b>bad</b>".into(), vec!["web-1 & co".into()]);
        tags.unused.push("online/search".into());
        tags.untagged.push("i-0\u{1b}[31mred".into());
        tags.allowed
            .insert("online/api".into(), vec!["a".into(), "b".into()]);
        DailyReport {
            day: d("2026-11-23"),
            generated_at: at("2026-11-24T06:00:00Z"),
            compliance: Some(ComplianceReport {
                from: at("2026-11-23T00:00:00Z"),
                to: at("2026-11-24T00:00:00Z"),
                tags,
                new_cross_env: vec![CrossEnvEdge {
                    client_env: "stage".into(),
                    server_env: "prod".into(),
                    client: "offline/batch (stage)".into(),
                    server: "online/api (prod)".into(),
                    ports: vec![443, 8443],
                    bytes: 1_234_567,
                }],
            }),
            costs: None,
        }
    }

    #[test]
    fn text_lists_every_section() {
        assert_eq!(
            sample().to_text(),
            "trafficmap daily report for 2026-11-23 (UTC)\n\
             \n\
             Archdomain compliance, 2026-11-23 00:00:00 UTC .. 2026-11-24 00:00:00 UTC\n\
             \n\
             Tags seen that are not allowed (1):\n  <b>bad</b>: web-1 & co\n\
             \n\
             Allowed tags nobody uses (1):\n  online/search\n\
             \n\
             Hosts without tags (1):\n  i-0\u{fffd}[31mred\n\
             \n\
             Cross-env edges new today (1):\n  offline/batch (stage) -> online/api (prod)  port(s) 443 8443  1,234,567 bytes\n\
             \n\
             Allowed tags in use (1):\n  online/api: 2 hosts\n"
        );
        assert_eq!(
            sample().subject("[trafficmap]"),
            "[trafficmap] daily report 2026-11-23: 1 tag not allowed, 1 host untagged, 1 cross-env edge new"
        );
    }

    #[test]
    fn html_escapes_every_name() {
        let h = sample().to_html();
        assert!(
            h.contains("<li>&lt;b&gt;bad&lt;/b&gt;: web-1 &amp; co</li>\n"),
            "{h}"
        );
        assert!(!h.contains("<b>bad"), "{h}");
        assert!(h.contains("<li>offline/batch (stage) -&gt; online/api (prod)  port(s) 443 8443  1,234,567 bytes</li>\n"), "{h}");
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        let mut r = sample();
        if let Some(c) = r.compliance.as_mut() {
            c.tags.untagged = (0..MAX_LINES + 5).map(|i| format!("h{i}")).collect();
        }
        let t = r.to_text();
        assert!(t.contains("Hosts without tags (205):\n"), "{t}");
        assert!(t.contains("  h199\n  ... and 5 more (trafficmap-collector report compliance --day 2026-11-23 --format json lists all)\n"), "{t}");
        assert!(!t.contains("h200"), "{t}");
        if let Some(c) = r.compliance.as_mut() {
            c.tags.not_allowed.insert(
                "wide".into(),
                (0..MAX_HOSTS_PER_LINE + 3)
                    .map(|i| format!("w{i}"))
                    .collect(),
            );
        }
        let t = r.to_text();
        let want = (0..MAX_HOSTS_PER_LINE)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        assert!(t.contains(&format!("  wide: {want}, and 3 more\n")), "{t}");
    }
}
