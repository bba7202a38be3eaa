//! The agent: drains the probe on wall-clock-aligned windows, turns deltas into pairs, exports
//! metrics, writes reports (spool, JSON lines) and ships them; handles SIGTERM/SIGINT (drain
//! once more, flush, detach) and SIGHUP (reload what can be reloaded).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
};
use tracing::{error, info, warn};
use trafficmap_common::Conn;
use trafficmap_model::report::{self, Agent, Health, Host, Pair, Report, Window};

use crate::{
    config::{Cli, Config, ContainersConfig},
    conn::{ConnExt as _, ConnId, Role, RoleSource},
    delta::{Snapshot, Tracker},
    identity,
    metrics::{self, InfoLabels, Metrics},
    output::JsonLines,
    pairs::{Accumulator, Attributed, Clock},
    probe::{Probe, ProbeOptions},
    roles::{self, ListenerCache},
    sanitize,
    ship::{self, Collector},
    spool::Spool,
};

/// Pairs per report: bigger windows are split so each POST stays a few megabytes.
pub const PAIRS_PER_REPORT: usize = 20_000;
/// How long shutdown waits for the collector before leaving reports spooled.
const FLUSH_DEADLINE: Duration = Duration::from_secs(5);

/// State that survives between drains: the tracker of live connections, roles resolved for
/// connections that predate the probe, and the pairs of the current window.
#[derive(Default)]
pub struct Drainer {
    tracker: Tracker,
    roles: HashMap<ConnId, (Role, RoleSource)>,
    listeners: ListenerCache,
    acc: Accumulator,
    last_drops: std::collections::BTreeMap<&'static str, u64>,
    vanished_seen: u64,
    /// Container of each pair's process (issue 11); `None` with `[containers] enable = false`.
    containers: Option<crate::containers::Resolver>,
    // Issue 11, NAT undone (k11-nat): the conntrack table, client connections closed between
    // drains that wait for the drain's dump, and whether a drain (fresh dump) is under way.
    nat: Option<crate::conntrack::Nat>,
    waiting: Vec<(crate::delta::ConnDelta, Role, RoleSource)>,
}

/// Closed client connections that may wait for the next drain's conntrack dump; beyond this,
/// they are looked up in the previous dump (counted as `parking_full` when not found there).
const MAX_WAITING: usize = 65_536;

/// What one drain produced.
pub struct Drained {
    pub pairs: Vec<Pair>,
    pub health: Health,
    pub tracked: usize,
    pub vanished_new: u64,
}

impl Drainer {
    /// Names each pair's container with `resolver` from now on.
    pub fn set_containers(&mut self, resolver: crate::containers::Resolver) {
        self.containers = Some(resolver);
    }

    /// `at_drain`: the conntrack table was dumped just now, so a closed client connection need
    /// not wait for the next dump.
    fn accumulate(&mut self, d: &crate::delta::ConnDelta, clock: &Clock, at_drain: bool) {
        let id = d.conn.id();
        let (role, role_source) = match self.roles.get(&id) {
            Some(&r) => r,
            None if d.conn.role() == Role::Unknown => {
                let r = roles::resolve(&d.conn, self.listeners.for_conn(&d.conn));
                self.roles.insert(id, r);
                r
            }
            None => (d.conn.role(), RoleSource::Observed),
        };
        if d.finished {
            self.roles.remove(&id);
        }
        let nat = match (&self.nat, role) {
            (Some(nat), Role::Client) if d.established => {
                let (local, peer, opened) = (d.conn.local(), d.conn.remote(), d.conn.opened_ns);
                match nat.resolve(local, peer, opened, !at_drain) {
                    crate::conntrack::Lookup::Real(r) => Some(r),
                    crate::conntrack::Lookup::Wait if self.waiting.len() < MAX_WAITING => {
                        self.waiting.push((d.clone(), role, role_source));
                        return;
                    }
                    crate::conntrack::Lookup::Wait => match nat.resolve(local, peer, opened, false)
                    {
                        crate::conntrack::Lookup::Real(r) => Some(r),
                        _ => {
                            nat.could_not_wait();
                            None
                        }
                    },
                    crate::conntrack::Lookup::AsIs => None,
                }
            }
            _ => None,
        };
        self.acc.add(
            &Attributed {
                delta: d,
                role,
                role_source,
                nat,
            },
            clock,
        );
    }

    /// Issue 11, NAT undone: reads the namespace's conntrack table at each drain from now on.
    pub fn enable_nat(&mut self, nat: crate::conntrack::Nat) {
        self.nat = Some(nat);
    }

    /// At a drain: a fresh conntrack dump, then the connections that waited for it.
    fn nat_dump(&mut self) {
        if let Some(nat) = &mut self.nat {
            nat.refresh(crate::pairs::monotonic_ns());
        }
    }

    fn nat_release_waiting(&mut self, clock: &Clock) {
        let waiting = std::mem::take(&mut self.waiting);
        for (d, role, role_source) in &waiting {
            let nat = self.nat.as_ref().and_then(|n| {
                match n.resolve(d.conn.local(), d.conn.remote(), d.conn.opened_ns, false) {
                    crate::conntrack::Lookup::Real(r) => Some(r),
                    _ => None,
                }
            });
            self.acc.add(
                &Attributed {
                    delta: d,
                    role: *role,
                    role_source: *role_source,
                    nat,
                },
                clock,
            );
        }
    }

    /// Applies a snapshot to the tracker and folds every delta into the current window.
    fn fold(&mut self, snap: &Snapshot, clock: &Clock, at_drain: bool) {
        let mut tracker = std::mem::take(&mut self.tracker);
        tracker.apply_with(snap, |d| self.accumulate(&d, clock, at_drain));
        self.tracker = tracker;
    }

    /// Folds final records read between drains into the current window, so they need no
    /// memory beyond their pair's running sums.
    pub fn fold_closed(&mut self, closed: Vec<Conn>) {
        if closed.is_empty() {
            return;
        }
        // A container whose connection just closed may exit before the window's drain, and its
        // cgroup directory goes with it: look its cgroup up now, while it exists, so the
        // resolver's cache still knows it when the pair is named at the drain (a Job's pod that
        // lives for seconds is the common case).
        if let Some(resolver) = &mut self.containers {
            let now = std::time::Instant::now();
            for c in &closed {
                if c.cgroup_id != 0 {
                    let _ = resolver.cgroup(c.cgroup_id, now);
                }
            }
        }
        let clock = Clock::now();
        self.fold(
            &Snapshot {
                live: Vec::new(),
                closed,
            },
            &clock,
            false,
        );
    }

    /// Reads the probe and closes the window `[start, end)`.
    pub fn drain(
        &mut self,
        probe: &mut Probe,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Drained> {
        let mut snap = Snapshot::default();
        probe.read_live(&mut snap.live)?;
        probe.read_closed(&mut snap.closed);
        let cumulative = probe.drops()?;
        // Entries the kernel kept because the ring buffer was full: read now, free them.
        let destroyed: Vec<Conn> = snap
            .live
            .iter()
            .filter(|c| c.is_destroyed())
            .copied()
            .collect();
        if !destroyed.is_empty() {
            probe.forget_destroyed(&destroyed)?;
        }
        let map_entries = snap.live.len() as u64;
        // Issue 11: the conntrack dump before anything is paired, so every client connection
        // of the window (live, closed now, or waiting since it closed) meets a fresh table.
        self.nat_dump();
        let clock = Clock::now();
        self.fold(&snap, &clock, true);
        self.nat_release_waiting(&clock);
        let big = snap.live.len() > 10_000;
        drop(snap);
        if big {
            // Give the snapshot's megabytes back rather than keep them as the new floor.
            // SAFETY: malloc_trim only releases free heap memory.
            unsafe { libc::malloc_trim(0) };
        }
        self.tracker.end_drain();
        self.listeners.clear();
        let now = std::time::Instant::now();
        let pairs = match &mut self.containers {
            Some(r) => self.acc.finish(start, end, &mut |id| r.resolve(id, now)),
            None => self.acc.finish(start, end, &mut |_| None),
        };

        let drops = cumulative
            .iter()
            .map(|(&k, &v)| {
                let prev = self.last_drops.get(k).copied().unwrap_or(0);
                (k.to_owned(), v.saturating_sub(prev))
            })
            .collect();
        self.last_drops = cumulative;
        let stats = self.tracker.stats();
        let vanished_new = stats.vanished_total.saturating_sub(self.vanished_seen);
        self.vanished_seen = stats.vanished_total;
        Ok(Drained {
            pairs,
            health: Health {
                drops,
                map_entries,
                map_capacity: u64::from(probe.max_connections()),
                spool_dropped: 0,
            },
            tracked: stats.tracked,
            vanished_new,
        })
    }
}

/// Builds the reports of one window (several if it has many pairs).
pub fn build_reports(
    pairs: Vec<Pair>,
    agent: &Agent,
    host: &Host,
    window: Window,
    health: &Health,
    mut next_seq: impl FnMut() -> Result<u64>,
) -> Result<Vec<Report>> {
    let mut out = Vec::new();
    let mut chunks: Vec<Vec<Pair>> = pairs
        .chunks(PAIRS_PER_REPORT)
        .map(<[Pair]>::to_vec)
        .collect();
    if chunks.is_empty() {
        // An empty window still says the host is alive and healthy.
        chunks.push(Vec::new());
    }
    for chunk in chunks {
        out.push(Report {
            schema: report::REPORT_SCHEMA.to_owned(),
            report_id: uuid::Uuid::new_v4().simple().to_string(),
            seq: next_seq()?,
            agent: agent.clone(),
            host: host.clone(),
            window,
            health: health.clone(),
            pairs: chunk,
        });
    }
    Ok(out)
}

/// The next multiple of `interval` after `now` (wall clock), so windows line up across hosts.
pub fn next_boundary(now: DateTime<Utc>, interval: Duration) -> DateTime<Utc> {
    let iv = interval.as_millis().max(1) as i64;
    let ms = now.timestamp_millis();
    let next = (ms.div_euclid(iv) + 1) * iv;
    DateTime::from_timestamp_millis(next).unwrap_or(now)
}

type LogReload = Box<dyn Fn(&str) -> Result<()> + Send + Sync>;

struct Sinks {
    spool: Option<Arc<Mutex<Spool>>>,
    output: Option<JsonLines>,
    wake: Arc<Notify>,
    local_seq: u64,
    /// Reports not yet written to every sink, oldest first (see [`Pending`]).
    pending: Pending,
}

/// Reports held in memory while writing them fails (disk full, I/O error): retried in order at
/// every window, so a window survives a full disk. Bounded: past [`MAX_PENDING_REPORTS`] or
/// [`MAX_PENDING_BYTES`] (estimated size), the oldest are dropped and counted.
#[derive(Default)]
struct Pending {
    queue: std::collections::VecDeque<PendingReport>,
    bytes: u64,
}

/// At most this many reports wait in memory (two hours of one-minute windows).
pub const MAX_PENDING_REPORTS: usize = 120;
/// At most this many bytes of reports wait in memory (estimated as below).
pub const MAX_PENDING_BYTES: u64 = 64 << 20;
/// A pair held in memory, with its process name, counted generously.
const PAIR_BYTES_ESTIMATE: u64 = 400;
/// A report's fixed part (agent, host, health).
const REPORT_BYTES_ESTIMATE: u64 = 4096;

struct PendingReport {
    report: Report,
    /// The sequence number is taken when the report is first written, so numbers stay in
    /// order and none is spent on a report that is then dropped from memory.
    seq: Option<u64>,
    output_done: bool,
    size: u64,
}

impl Pending {
    /// Queues reports; returns how many old ones were dropped to stay within the bounds.
    fn push(&mut self, reports: Vec<Report>) -> u64 {
        let mut dropped = 0u64;
        for report in reports {
            // Estimated, not serialized: a window's reports are serialized once, when written.
            let size = (report.pairs.len() as u64)
                .saturating_mul(PAIR_BYTES_ESTIMATE)
                .saturating_add(REPORT_BYTES_ESTIMATE);
            self.bytes = self.bytes.saturating_add(size);
            self.queue.push_back(PendingReport {
                report,
                seq: None,
                output_done: false,
                size,
            });
            while self.queue.len() > 1
                && (self.queue.len() > MAX_PENDING_REPORTS || self.bytes > MAX_PENDING_BYTES)
            {
                if let Some(old) = self.queue.pop_front() {
                    self.bytes = self.bytes.saturating_sub(old.size);
                    dropped = dropped.saturating_add(1);
                }
            }
        }
        dropped
    }

    fn pop_front(&mut self) {
        if let Some(old) = self.queue.pop_front() {
            self.bytes = self.bytes.saturating_sub(old.size);
        }
    }
}

impl Sinks {
    /// Queues a window's reports behind any earlier ones still in memory and writes as many as
    /// possible, in order. A write failure keeps the rest in memory for the next window.
    fn emit(&mut self, reports: Vec<Report>, metrics: &Metrics) {
        let dropped = self.pending.push(reports);
        if dropped > 0 {
            metrics::inc_saturating(&metrics.emit_dropped, dropped);
            error!(
                dropped,
                "reports waiting in memory exceeded the limit: dropped the oldest"
            );
        }
        if let Err(e) = self.write_pending(metrics) {
            metrics.emit_failures.inc();
            error!(
                error = %format!("{e:#}"),
                waiting = self.pending.queue.len(),
                "writing reports failed; they stay in memory and are retried at the next window"
            );
        }
        metrics
            .emit_pending
            .set(metrics::gauge(self.pending.queue.len() as u64));
        self.wake.notify_one();
    }

    fn write_pending(&mut self, metrics: &Metrics) -> Result<()> {
        let now = Utc::now();
        while let Some(p) = self.pending.queue.front_mut() {
            let seq = match p.seq {
                Some(s) => s,
                None => {
                    let s = match &self.spool {
                        Some(spool) => spool
                            .lock()
                            .unwrap()
                            .next_seq()
                            .context("saving the spool state")?,
                        None => {
                            self.local_seq = self.local_seq.saturating_add(1);
                            self.local_seq
                        }
                    };
                    p.seq = Some(s);
                    s
                }
            };
            p.report.seq = seq;
            let json = p.report.to_json();
            if let Some(out) = &mut self.output
                && !p.output_done
            {
                out.write(now, &json).context("writing the output file")?;
                p.output_done = true;
            }
            if let Some(spool) = &self.spool {
                let mut s = spool.lock().unwrap();
                let dropped = s.push(seq, &json).context("writing the spool")?;
                if dropped > 0 {
                    warn!(dropped, "spool full: dropped the oldest reports");
                }
                metrics.record_spool(&s);
            }
            self.pending.pop_front();
        }
        Ok(())
    }

    fn spool_dropped(&self) -> u64 {
        self.spool
            .as_ref()
            .map_or(0, |s| s.lock().unwrap().dropped_total())
    }
}

/// Runs the agent until SIGTERM/SIGINT. `log_reload` changes the log filter on SIGHUP.
pub async fn run(cli: Cli, mut config: Config, log_reload: LogReload) -> Result<()> {
    let started = Instant::now();
    // Registered before anything else, so a SIGTERM that arrives while the probe loads or just
    // after `/metrics` answers is queued for the drain loop (drain once more, then stop) instead
    // of killing the process with the default action.
    let mut signals = Signals::register()?;
    let Setup {
        spool,
        collector,
        output,
        metrics,
        listener,
        probe,
        agent,
        host,
        counting_since,
    } = setup(&config).await?;
    drop_privileges(&probe, config.nat.enable);

    let probe = Arc::new(Mutex::new(probe));
    let drainer: Arc<Mutex<Drainer>> = Arc::default();
    if config.nat.enable {
        // Opened here, in the agent's own network namespace: the one whose NAT it undoes.
        drainer
            .lock()
            .unwrap()
            .enable_nat(crate::conntrack::Nat::new(
                config.nat.max_entries,
                metrics.conntrack.clone(),
            ));
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    // Issue 11: container names. Runtime API sources first; the Kubernetes source is pushed
    // after them, before the resolver takes the list.
    let mut name_sources: Vec<Arc<dyn crate::names::NameSource>> = Vec::new();
    if config.containers.enable {
        name_sources.extend(crate::runtimeapi::sources(&config.containers, &stop_rx));
        // Kubernetes after the runtime APIs; optional like them: without any source the
        // agent reports container ids without names.
        if let Some(k8s) = crate::k8s::K8sSource::start(
            config.kubernetes.clone(),
            metrics.k8s.clone(),
            stop_rx.clone(),
        ) {
            name_sources.push(k8s);
        }
    }
    if config.containers.enable {
        let c = &config.containers;
        let mut resolver = crate::containers::Resolver::new(
            crate::containers::ResolverOptions {
                cgroup_root: c.cgroup_root.clone(),
                cache_size: c.cache_size,
                rescan_interval: c.rescan_interval,
                negative_ttl: crate::containers::NEGATIVE_TTL,
            },
            name_sources,
        );
        resolver.set_metrics(metrics.container_names.clone());
        metrics.set_max_workloads(c.metrics_max_workloads);
        drainer.lock().unwrap().set_containers(resolver);
    }
    let ring_task = spawn_ring_reader(&probe, &drainer, stop_rx.clone())?;
    let metrics_task = listener.map(|l| spawn_metrics_server(l, metrics.clone(), stop_rx.clone()));
    let wake = Arc::new(Notify::new());
    let ship_task = match (&collector, &spool) {
        (Some(c), Some(s)) => Some(tokio::spawn(ship::run(
            c.clone(),
            s.clone(),
            metrics.clone(),
            wake.clone(),
            stop_rx.clone(),
        ))),
        _ => None,
    };
    let mut sinks = Sinks {
        spool: spool.clone(),
        output,
        wake: wake.clone(),
        local_seq: 0,
        pending: Pending::default(),
    };

    let window = WindowDrain {
        probe: &probe,
        drainer: &drainer,
        metrics: &metrics,
        agent: &agent,
        host: &host,
        host_stats: &Mutex::new(crate::hoststats::HostStatsReader::default()),
        started,
    };
    let window_start = drain_loop(
        counting_since,
        &cli,
        &mut config,
        &collector,
        &mut sinks,
        &log_reload,
        &window,
        &mut signals,
    )
    .await?;

    // Shutdown: last window, flush, detach.
    let end = Utc::now();
    if let Err(e) = window.drain(window_start, end, &mut sinks) {
        error!(error = %format!("{e:#}"), "final drain failed");
    }
    if !sinks.pending.queue.is_empty() {
        error!(
            reports = sinks.pending.queue.len(),
            "reports could not be written (disk full?) before stopping: they are lost"
        );
    }
    if let Some(out) = &mut sinks.output {
        let _ = out.sync();
    }
    let _ = stop_tx.send(true);
    if let Some(t) = ship_task {
        let _ = t.await;
    }
    if let (Some(c), Some(s)) = (&collector, &spool) {
        ship::flush(c, s, &metrics, FLUSH_DEADLINE).await;
        let left = s.lock().unwrap().len();
        if left > 0 {
            info!(
                reports = left,
                "reports stay in the spool for the next start"
            );
        }
    }
    let _ = ring_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    drop(probe);
    info!("probe detached; stopped");
    Ok(())
}

/// Once the probe is attached and the identity resolved: keeps only the capabilities the
/// drains still need (see `privileges` and docs/agent.md, "Privileges").
fn drop_privileges(probe: &Probe, nat: bool) {
    use crate::privileges;
    let held = std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| privileges::parse_status(&s))
        .map_or(0, |s| s.permitted);
    let map_ops_need_cap = match privileges::map_ops_work_without_caps(|| probe.drops().is_ok()) {
        Ok(works) => !works,
        Err(e) => {
            warn!(error = %e, "cannot test map reads without capabilities; keeping CAP_BPF");
            true
        }
    };
    let keep = privileges::needed(
        held,
        map_ops_need_cap,
        probe.backend() == crate::backend::Backend::Kprobe,
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() },
        nat,
    );
    privileges::report(&privileges::drop_all_but(keep), keep);
}

/// What the agent sets up before its first window.
struct Setup {
    spool: Option<Arc<Mutex<Spool>>>,
    collector: Option<Collector>,
    output: Option<JsonLines>,
    metrics: Arc<Metrics>,
    /// The `/metrics` socket, bound before the probe loads so a taken port fails fast.
    listener: Option<tokio::net::TcpListener>,
    probe: Probe,
    agent: Agent,
    host: Host,
    /// When the probe started counting (just before it loaded): the start of the first
    /// window, so that the window spans every byte it carries (a window that started later,
    /// after the identity look-up, could be far shorter than its bytes' span and have them
    /// clamped to its per-window bound).
    counting_since: DateTime<Utc>,
}

/// Opens the sinks, binds the metrics endpoint, loads the probe and resolves the host identity.
async fn setup(config: &Config) -> Result<Setup> {
    let spool = match &config.collector {
        Some(_) => Some(Arc::new(Mutex::new(
            Spool::open(&config.spool_dir, config.spool_max_bytes)
                .with_context(|| format!("spool {}", config.spool_dir.display()))?,
        ))),
        None => None,
    };
    let collector = Collector::new(config)?;
    let output = match &config.output {
        Some(p) => Some(JsonLines::open(p, config.output_keep_days, Utc::now())?),
        None => None,
    };
    let mut metrics = Metrics::new(config.metrics_top_k, config.metrics_idle_expiry);

    let listener = match config.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint on {addr}"))?,
        ),
        None => None,
    };

    let opts = ProbeOptions {
        attach: config.attach,
        netns: config.netns.clone(),
        max_connections: config.max_connections,
        closed_buffer_bytes: config.closed_buffer_bytes,
        // The agent's own connections (to the collector) are not counted.
        ignore_tgid: std::process::id(),
        classic_tracepoints: false,
    };
    let counting_since = Utc::now();
    let probe = tokio::task::spawn_blocking(move || Probe::load(&opts))
        .await
        .context("probe loader panicked")??;
    // Loading parsed the kernel's BTF (megabytes, freed now); hand that memory back to the
    // system instead of keeping it in the allocator's free lists for the agent's lifetime.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };
    let agent = Agent {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend: probe.backend().as_str().to_owned(),
        kernel: probe.kernel().release.clone(),
    };
    metrics.set_info(InfoLabels {
        version: agent.version.clone(),
        backend: agent.backend.clone(),
        kernel: agent.kernel.clone(),
    });
    let metrics = Arc::new(metrics);
    metrics.map_capacity.set(i64::from(probe.max_connections()));
    let mut host = identity::host(config, probe.netns_inum()).await?;
    // The system's name, id, addresses and EC2 metadata are whatever the machine says: brought
    // within the report bounds once, here, and said once (the configured ones were checked at
    // load). Reports carry this host as is.
    let fixed = sanitize::host(&mut host);
    if fixed.strings > 0 {
        warn!(
            fixed = fixed.strings,
            "host identity: names with control characters or over the report bounds were replaced or cut (see docs/agent.md, \"Report bounds\")"
        );
        inc_fix(&metrics, "string", fixed.strings);
    }
    if fixed.addresses_omitted > 0 {
        warn!(
            omitted = fixed.addresses_omitted,
            kept = host.addresses.len(),
            "host identity: more than {} interface addresses (or duplicates): reports carry the lowest {}",
            trafficmap_model::bounds::MAX_ADDRESSES,
            trafficmap_model::bounds::MAX_ADDRESSES,
        );
        inc_fix(&metrics, "address_omitted", fixed.addresses_omitted);
    }
    metrics
        .host_addresses_omitted
        .set(metrics::gauge(fixed.addresses_omitted));
    info!(
        hostname = %host.hostname,
        host_id = %host.machine_id,
        addresses = ?host.addresses,
        ec2 = ?host.ec2.as_ref().map(|e| &e.instance_id),
        "host identity"
    );
    Ok(Setup {
        spool,
        collector,
        output,
        metrics,
        listener,
        probe,
        agent,
        host,
        counting_since,
    })
}

/// Final records of closed connections: read about once a second, or as soon as the probe
/// says the ring is filling, and folded into the window's pairs right away.
fn spawn_ring_reader(
    probe: &Arc<Mutex<Probe>>,
    drainer: &Arc<Mutex<Drainer>>,
    mut stop: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    let ring_fd = probe
        .lock()
        .unwrap()
        .closed_fd()
        .try_clone_to_owned()
        .context("duplicating the ring buffer fd")?;
    let probe = probe.clone();
    let drainer = drainer.clone();
    // SAFETY: `ring_fd` is an OwnedFd moved into the AsyncFd, which owns it from now on; no
    // other handle closes it.
    let afd = unsafe { AsyncFd::register(ring_fd) }
        .map_err(|e| anyhow::anyhow!("watching the ring buffer: {e}"))?;
    Ok(tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                guard = afd.readable() => {
                    let Ok(mut guard) = guard else { break };
                    guard.clear_ready();
                }
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let mut got = Vec::new();
            probe.lock().unwrap().read_closed(&mut got);
            if !got.is_empty() {
                tokio::task::block_in_place(|| drainer.lock().unwrap().fold_closed(got));
            }
        }
    }))
}

/// Serves `/metrics` and `/healthz` until `stop` changes.
fn spawn_metrics_server(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let m = metrics.clone();
                    async move {
                        (
                            [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
                            m.encode(),
                        )
                    }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        crate::metrics_server::serve(listener, app, stop).await;
    })
}

/// Drains one window of the probe into reports and hands them to the sinks.
struct WindowDrain<'a> {
    probe: &'a Mutex<Probe>,
    drainer: &'a Mutex<Drainer>,
    metrics: &'a Metrics,
    agent: &'a Agent,
    host: &'a Host,
    /// Host health, sampled once per window (issue 12 item 5).
    host_stats: &'a Mutex<crate::hoststats::HostStatsReader>,
    started: Instant,
}

impl WindowDrain<'_> {
    fn drain(
        &self,
        window_start: DateTime<Utc>,
        end: DateTime<Utc>,
        sinks: &mut Sinks,
    ) -> Result<()> {
        if end <= window_start {
            return Ok(());
        }
        let metrics = self.metrics;
        let t0 = Instant::now();
        let drained = tokio::task::block_in_place(|| {
            let mut p = self.probe.lock().unwrap();
            self.drainer
                .lock()
                .unwrap()
                .drain(&mut p, window_start, end)
        })?;
        let mut health = drained.health;
        health.spool_dropped = sinks.spool_dropped();
        metrics.record_pairs(self.started.elapsed(), &drained.pairs);
        metrics.record_drops(&health.drops);
        metrics.map_entries.set(health.map_entries as i64);
        metrics.tracked_connections.set(drained.tracked as i64);
        metrics.vanished_connections.inc_by(drained.vanished_new);
        let npairs = drained.pairs.len();
        // Host health once per window, every report of the window carries it; a failure only
        // leaves the field out (issue 12 item 5).
        let mut host = self.host.clone();
        host.stats = self
            .host_stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sample();
        if host.stats.is_none() {
            inc_fix(metrics, "host_stats_omitted", 1);
        }
        let reports = build_reports(
            drained.pairs,
            self.agent,
            &host,
            Window {
                start: window_start,
                end,
            },
            &health,
            // Numbered when written (`Sinks::write_pending`).
            || Ok(0),
        )?;
        let mut reports = reports;
        for r in &mut reports {
            seal(r, metrics);
        }
        let nreports = reports.len();
        sinks.emit(reports, metrics);
        metrics.drains.inc();
        metrics.drain_duration.observe(t0.elapsed().as_secs_f64());
        metrics.last_drain_duration.set(t0.elapsed().as_secs_f64());
        tracing::debug!(pairs = npairs, reports = nreports, took = ?t0.elapsed(), "drained");
        Ok(())
    }
}

fn inc_fix(metrics: &Metrics, reason: &str, n: u64) {
    metrics::inc_saturating(
        &metrics.report_fixes.get_or_create(&metrics::ReasonLabels {
            reason: reason.to_owned(),
        }),
        n,
    );
}

/// Brings a report within the model's bounds (`sanitize::report`), then checks it with
/// `Report::validate`, the function the collector runs, so that what the agent emits is what
/// the collector accepts. A report that still fails is a bug of the agent: logged at error and
/// counted, and emitted anyway: the collector refuses it (400) and the agent keeps it in the
/// spool's rejected/ directory, where an operator can read its data; dropping it here would
/// lose the data without a trace.
///
/// A window that came out longer than `MAX_WINDOW` (a drain failed, the machine slept through
/// boundaries; `interval` may be up to 1 h) keeps its end and all its bytes, and its start moves
/// to `end - MAX_WINDOW`: bounding `interval` could not cover a run of failed drains or a long
/// suspend, this does. See docs/agent.md, "Report bounds".
pub fn seal(report: &mut Report, metrics: &Metrics) {
    let original_start = report.window.start;
    let f = sanitize::report(report);
    if f.window_shortened {
        warn!(
            from = %original_start,
            to = %report.window.start,
            end = %report.window.end,
            "window longer than the 1 h report bound (missed drain or suspend): its start was moved; all its bytes are kept"
        );
        inc_fix(metrics, "window_shortened", 1);
    }
    if f.strings > 0 {
        warn!(
            fixed = f.strings,
            "report strings with control characters or over their bound were replaced or cut"
        );
        inc_fix(metrics, "string", f.strings);
    }
    if f.addresses_omitted > 0 {
        inc_fix(metrics, "address_omitted", f.addresses_omitted);
    }
    if f.pairs_merged > 0 {
        inc_fix(metrics, "pair_merged", f.pairs_merged);
    }
    if f.map_entries_clamped {
        // Expected under churn with the key-by-key map walk (kernels before 5.6).
        tracing::debug!("map_entries counted above map_capacity: clamped");
        inc_fix(metrics, "map_entries_clamped", 1);
    }
    if f.counters > 0 {
        error!(
            clamped = f.counters,
            "counters above what a real host can do in this window (a probe bug): clamped to the report bound"
        );
        inc_fix(metrics, "counter_clamped", f.counters);
    }
    if let Err(e) = report.validate() {
        metrics.report_invalid.inc();
        error!(
            error = %e,
            report_id = %report.report_id,
            "a report breaks the report bounds after sanitising (an agent bug): spooled anyway, the collector will refuse it and it will be kept in rejected/"
        );
    }
}

/// Drains at every interval boundary until SIGTERM or SIGINT; SIGHUP reloads the configuration.
/// Returns the start of the window still open.
/// The signals the agent handles, registered once at start (see [`run`]).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn register() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

#[allow(clippy::too_many_arguments)]
async fn drain_loop(
    mut window_start: DateTime<Utc>,
    cli: &Cli,
    config: &mut Config,
    collector: &Option<Collector>,
    sinks: &mut Sinks,
    log_reload: &LogReload,
    window: &WindowDrain<'_>,
    signals: &mut Signals,
) -> Result<DateTime<Utc>> {
    let Signals {
        term: sigterm,
        int: sigint,
        hup: sighup,
    } = signals;
    info!(
        interval = ?config.interval,
        listen = ?config.listen,
        collector = config.collector.as_ref().map(|u| u.as_str()),
        "agent running"
    );
    loop {
        let next = next_boundary(Utc::now(), config.interval);
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                // Label the window with the boundary even if the timer fired a little late, so
                // windows of all hosts line up; the few late bytes count in this window.
                let end = next;
                if let Err(e) = window.drain(window_start, end, sinks) {
                    error!(error = %format!("{e:#}"), "drain failed; retrying at the next interval");
                    continue;
                }
                window_start = end;
            }
            _ = sigterm.recv() => { info!("SIGTERM: draining once more and stopping"); break; }
            _ = sigint.recv() => { info!("SIGINT: draining once more and stopping"); break; }
            _ = sighup.recv() => {
                reload(cli, config, collector, window.metrics, sinks, log_reload);
            }
        }
    }
    Ok(window_start)
}

fn reload(
    cli: &Cli,
    config: &mut Config,
    collector: &Option<Collector>,
    metrics: &Metrics,
    sinks: &mut Sinks,
    log_reload: &LogReload,
) {
    let new = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "SIGHUP: configuration invalid, keeping the running one");
            return;
        }
    };
    if let Some(c) = collector {
        match new.token() {
            Ok(t) => c.set_token(t),
            Err(e) => {
                error!(error = %e, "SIGHUP: token unreadable, keeping the current one");
            }
        }
    }
    metrics.set_limits(new.metrics_top_k, new.metrics_idle_expiry);
    metrics.set_max_workloads(new.containers.metrics_max_workloads);
    if new.log_level != config.log_level
        && let Err(e) = log_reload(&new.log_level)
    {
        error!(error = %format!("{e:#}"), "SIGHUP: log level not changed");
    }
    if new.output != config.output || new.output_keep_days != config.output_keep_days {
        sinks.output = match &new.output {
            Some(p) => match JsonLines::open(p, new.output_keep_days, Utc::now()) {
                Ok(o) => Some(o),
                Err(e) => {
                    error!(error = %format!("{e:#}"), "SIGHUP: cannot open the new output file");
                    sinks.output.take()
                }
            },
            None => None,
        };
    }
    let fixed = [
        ("interval", new.interval != config.interval),
        ("attach", new.attach != config.attach),
        ("netns", new.netns != config.netns),
        (
            "max_connections",
            new.max_connections != config.max_connections,
        ),
        (
            "closed_buffer_bytes",
            new.closed_buffer_bytes != config.closed_buffer_bytes,
        ),
        ("collector", new.collector != config.collector),
        ("ca_file", new.ca_file != config.ca_file),
        (
            "client_cert_file",
            new.client_cert_file != config.client_cert_file,
        ),
        ("spool_dir", new.spool_dir != config.spool_dir),
        ("listen", new.listen != config.listen),
        (
            "host identity",
            new.host_name != config.host_name || new.host_id != config.host_id,
        ),
        // Issue 11: the resolver and the API sources are built at start; the label bound
        // (`metrics_max_workloads`) is applied below.
        (
            "containers",
            ContainersConfig {
                metrics_max_workloads: config.containers.metrics_max_workloads,
                ..new.containers.clone()
            } != config.containers,
        ),
        ("kubernetes", new.kubernetes != config.kubernetes),
        // Issue 11: the conntrack socket and the kept CAP_NET_ADMIN are set up at start.
        ("nat", new.nat != config.nat),
    ];
    for (what, changed) in fixed {
        if changed {
            warn!(
                setting = what,
                "SIGHUP: changing this setting needs a restart"
            );
        }
    }
    info!("SIGHUP: reloaded token, metrics limits, log level and output");
    *config = new;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_align_to_the_wall_clock() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            next_boundary(t("2026-11-23T10:00:42.5Z"), Duration::from_secs(60)),
            t("2026-11-23T10:01:00Z")
        );
        assert_eq!(
            next_boundary(t("2026-11-23T10:01:00Z"), Duration::from_secs(60)),
            t("2026-11-23T10:02:00Z")
        );
        assert_eq!(
            next_boundary(t("2026-11-23T10:00:00.1Z"), Duration::from_millis(500)),
            t("2026-11-23T10:00:00.5Z")
        );
    }

    fn empty_report(t: &str) -> Report {
        let start: DateTime<Utc> = t.parse().unwrap();
        build_reports(
            vec![],
            &Agent {
                version: "0".into(),
                backend: "fexit".into(),
                kernel: "6".into(),
            },
            &Host {
                hostname: "h".into(),
                machine_id: "m".into(),
                addresses: vec![],
                netns: None,
                ec2: None,
                stats: None,
            },
            Window {
                start,
                end: start + chrono::Duration::seconds(60),
            },
            &Health::default(),
            || Ok(0),
        )
        .unwrap()
        .remove(0)
    }

    #[test]
    fn a_failed_spool_write_keeps_the_window_in_memory_and_retries_it() {
        let dir = std::env::temp_dir().join(format!("tm-sinks-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Arc::new(Mutex::new(Spool::open(&dir, 1 << 20).unwrap()));
        // The report's file name is taken by a non-empty directory: its write fails.
        let blocker = dir.join(format!("{:020}.json", 0));
        std::fs::create_dir_all(blocker.join("x")).unwrap();
        let metrics = Metrics::new(10, Duration::from_secs(60));
        let mut sinks = Sinks {
            spool: Some(spool.clone()),
            output: None,
            wake: Arc::new(Notify::new()),
            local_seq: 0,
            pending: Pending::default(),
        };
        let first = empty_report("2026-11-23T10:00:00Z");
        sinks.emit(vec![first.clone()], &metrics);
        assert_eq!(metrics.emit_failures.get(), 1);
        assert_eq!(metrics.emit_pending.get(), 1);
        assert!(spool.lock().unwrap().is_empty());
        sinks.emit(vec![empty_report("2026-11-23T10:01:00Z")], &metrics);
        assert_eq!(metrics.emit_failures.get(), 2);
        assert_eq!(metrics.emit_pending.get(), 2);
        // Room again: both windows are written, in order, the first with the number it took.
        std::fs::remove_dir_all(&blocker).unwrap();
        sinks.emit(vec![empty_report("2026-11-23T10:02:00Z")], &metrics);
        assert_eq!(metrics.emit_failures.get(), 2);
        assert_eq!(metrics.emit_pending.get(), 0);
        let s = spool.lock().unwrap();
        assert_eq!(s.len(), 3);
        let back: Vec<Report> = (0..3)
            .map(|seq| Report::from_json(&s.read(seq).unwrap()).unwrap())
            .collect();
        assert_eq!(back[0].report_id, first.report_id);
        assert_eq!(
            back.iter()
                .map(|r| (r.seq, r.window.start.to_rfc3339()))
                .collect::<Vec<_>>(),
            vec![
                (0, "2026-11-23T10:00:00+00:00".to_owned()),
                (1, "2026-11-23T10:01:00+00:00".to_owned()),
                (2, "2026-11-23T10:02:00+00:00".to_owned()),
            ]
        );
    }

    #[test]
    fn reports_waiting_in_memory_are_bounded_oldest_dropped() {
        let mut p = Pending::default();
        let reports: Vec<Report> = (0..MAX_PENDING_REPORTS + 3)
            .map(|_| empty_report("2026-11-23T10:00:00Z"))
            .collect();
        let ids: Vec<String> = reports.iter().map(|r| r.report_id.clone()).collect();
        assert_eq!(p.push(reports), 3);
        assert_eq!(p.queue.len(), MAX_PENDING_REPORTS);
        assert_eq!(p.queue[0].report.report_id, ids[3]);
        let total: u64 = p.queue.iter().map(|r| r.size).sum();
        assert_eq!(p.bytes, total);
    }

    #[test]
    fn reports_waiting_in_memory_are_bounded_in_bytes() {
        let with_pairs = |n: usize| {
            let mut r = empty_report("2026-11-23T10:00:00Z");
            let t = r.window.start;
            r.pairs = vec![
                Pair {
                    local_ip: "10.0.0.1".parse().unwrap(),
                    peer_ip: "10.0.0.2".parse().unwrap(),
                    server_port: 80,
                    role: report::Role::Client,
                    role_source: report::RoleSource::Observed,
                    process: "p".into(),
                    bytes_sent: 1,
                    bytes_received: 1,
                    connections_opened: 0,
                    connections_closed: 0,
                    connections_active: 1,
                    first_seen: t,
                    last_seen: t,
                    container: None,
                    service_ip: None,
                    service_port: None,
                };
                n
            ];
            r
        };
        let mut p = Pending::default();
        // 150,000 pairs: 60 MB + 4 KiB, under 64 MiB; 20,000 more pairs go over: the oldest goes.
        assert_eq!(p.push(vec![with_pairs(150_000)]), 0);
        assert_eq!(p.bytes, 150_000 * 400 + 4096);
        let second = with_pairs(20_000);
        let id = second.report_id.clone();
        assert_eq!(p.push(vec![second]), 1);
        assert_eq!(p.queue.len(), 1);
        assert_eq!(p.queue[0].report.report_id, id);
        assert_eq!(p.bytes, 20_000 * 400 + 4096);
        // A single report over the limit is still kept (the newest is never dropped).
        assert_eq!(p.push(vec![with_pairs(200_000)]), 1);
        assert_eq!(p.queue.len(), 1);
    }

    #[test]
    fn large_windows_are_split_and_empty_ones_still_reported() {
        let t = "2026-11-23T10:00:00Z".parse().unwrap();
        let pair = |i: u32| Pair {
            local_ip: "10.0.0.1".parse().unwrap(),
            peer_ip: std::net::IpAddr::from(i.to_be_bytes()),
            server_port: 80,
            role: report::Role::Client,
            role_source: report::RoleSource::Observed,
            process: "p".into(),
            bytes_sent: 1,
            bytes_received: 1,
            connections_opened: 0,
            connections_closed: 0,
            connections_active: 1,
            first_seen: t,
            last_seen: t,
            container: None,
            service_ip: None,
            service_port: None,
        };
        let agent = Agent {
            version: "0".into(),
            backend: "fexit".into(),
            kernel: "6".into(),
        };
        let host = Host {
            hostname: "h".into(),
            machine_id: "m".into(),
            addresses: vec![],
            netns: None,
            ec2: None,
            stats: None,
        };
        let window = Window {
            start: t,
            end: "2026-11-23T10:01:00Z".parse().unwrap(),
        };
        let mut seq = 10;
        let pairs: Vec<Pair> = (0..(PAIRS_PER_REPORT as u32 * 2 + 5)).map(pair).collect();
        let reports = build_reports(pairs, &agent, &host, window, &Health::default(), || {
            seq += 1;
            Ok(seq)
        })
        .unwrap();
        assert_eq!(
            reports
                .iter()
                .map(|r| (r.seq, r.pairs.len()))
                .collect::<Vec<_>>(),
            vec![(11, PAIRS_PER_REPORT), (12, PAIRS_PER_REPORT), (13, 5)]
        );
        for r in &reports {
            r.validate().unwrap();
        }
        assert_ne!(reports[0].report_id, reports[1].report_id);
        let empty =
            build_reports(vec![], &agent, &host, window, &Health::default(), || Ok(1)).unwrap();
        assert_eq!(empty.len(), 1);
        assert!(empty[0].pairs.is_empty());
    }

    /// Hostile inputs (a process named with ESC and 300 bytes, 300 addresses, a window
    /// stretched to 2 h, churned map_entries, impossible counters): the agent emits exactly the
    /// sanitised values, and the collector's own check accepts them.
    #[test]
    fn hostile_inputs_become_a_report_the_collector_accepts() {
        use std::net::{IpAddr, Ipv4Addr};
        use trafficmap_model::bounds;
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let ip = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let pair = |peer: u32, process: String, sent: u64, received: u64, opened: u64| Pair {
            local_ip: ip(1),
            peer_ip: ip(peer),
            server_port: 443,
            role: report::Role::Client,
            role_source: report::RoleSource::Observed,
            process,
            bytes_sent: sent,
            bytes_received: received,
            connections_opened: opened,
            connections_closed: 0,
            connections_active: 1,
            first_seen: t("2026-11-23T10:00:00Z"),
            last_seen: t("2026-11-23T11:30:00Z"),
            container: None,
            service_ip: None,
            service_port: None,
        };
        let long = "a".repeat(299);
        let pairs = vec![
            pair(0x1_0001, format!("\u{1b}{long}"), u64::MAX, 1000, u64::MAX),
            // Another name that sanitises to the same: one pair after sanitising.
            pair(0x1_0001, format!("\u{7}{long}"), 5, 500, 0),
            Pair {
                first_seen: t("2026-11-23T10:30:00Z"),
                ..pair(0x1_0002, "nginx".into(), 42, 7, 1)
            },
        ];
        let host = Host {
            hostname: "web\u{1b}]0;pwn\u{7}".into(),
            machine_id: "m".into(),
            addresses: (0..300).rev().map(ip).collect(),
            netns: None,
            ec2: None,
            stats: None,
        };
        let agent = Agent {
            version: "0".into(),
            backend: "fexit".into(),
            kernel: "6.1\n".into(),
        };
        let health = Health {
            drops: [("ring_full".to_owned(), u64::MAX)].into(),
            map_entries: 70_000,
            map_capacity: 65_536,
            spool_dropped: 0,
        };
        let window = Window {
            start: t("2026-11-23T10:00:00Z"),
            end: t("2026-11-23T12:00:00Z"),
        };
        let mut reports = build_reports(pairs, &agent, &host, window, &health, || Ok(1)).unwrap();
        assert_eq!(reports.len(), 1);
        let metrics = Metrics::new(10, Duration::from_secs(60));
        let r = &mut reports[0];
        seal(r, &metrics);
        assert_eq!(r.validate(), Ok(()));

        let hour = chrono::TimeDelta::hours(1);
        assert_eq!(
            r.window,
            Window {
                start: t("2026-11-23T11:00:00Z"),
                end: t("2026-11-23T12:00:00Z"),
            }
        );
        assert_eq!(r.agent.kernel, "6.1\u{fffd}");
        assert_eq!(r.host.hostname, "web\u{fffd}]0;pwn\u{fffd}");
        assert_eq!(r.host.addresses, (0..256).map(ip).collect::<Vec<_>>());
        assert_eq!(r.health.map_entries, 65_536);
        assert_eq!(r.health.map_capacity, 65_536);
        assert_eq!(r.health.drops["ring_full"], 3_600_000_000_000);
        assert_eq!(r.pairs.len(), 2);
        let name = format!("\u{fffd}{}", "a".repeat(252));
        assert_eq!(name.len(), bounds::MAX_PROCESS_LEN);
        let bytes = bounds::per_window(bounds::MAX_LINK_BYTES_PER_SEC, hour);
        assert_eq!(bytes, 180_000_000_000_000);
        assert_eq!(
            r.pairs[0],
            Pair {
                process: name,
                bytes_sent: bytes,
                bytes_received: 1500,
                connections_opened: 36_000_000_000,
                connections_active: 2,
                first_seen: t("2026-11-23T11:00:00Z"),
                ..pair(0x1_0001, String::new(), 0, 0, 0)
            }
        );
        assert_eq!(
            r.pairs[1],
            Pair {
                first_seen: t("2026-11-23T11:00:00Z"),
                ..pair(0x1_0002, "nginx".into(), 42, 7, 1)
            }
        );
        let text = metrics.encode();
        for (reason, n) in [
            ("window_shortened", 1),
            ("string", 4),
            ("address_omitted", 44),
            ("pair_merged", 1),
            ("map_entries_clamped", 1),
            ("counter_clamped", 3),
        ] {
            let line = format!("trafficmap_agent_report_fixes_total{{reason=\"{reason}\"}} {n}\n");
            assert!(text.contains(&line), "no `{line}` in\n{text}");
        }
        assert!(
            text.contains("trafficmap_agent_report_invalid_total 0\n"),
            "{text}"
        );

        // Sealing is idempotent: a sealed report is left as it is.
        let again = r.clone();
        assert_eq!(sanitize::report(r), sanitize::Fixes::default());
        assert_eq!(*r, again);
    }

    #[test]
    fn a_report_that_still_breaks_a_bound_is_counted_and_kept() {
        // An empty window cannot be fixed by sanitising (a bug if it ever got here).
        let mut r = empty_report("2026-11-23T10:00:00Z");
        r.window.end = r.window.start;
        let metrics = Metrics::new(10, Duration::from_secs(60));
        seal(&mut r, &metrics);
        assert_eq!(r.window.end, r.window.start);
        assert!(
            metrics
                .encode()
                .contains("trafficmap_agent_report_invalid_total 1\n")
        );
    }
}
