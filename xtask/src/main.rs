//! Developer tasks cargo cannot do alone: set-up, running the whole system on this host, the
//! test suite including privileged tests and the kernel matrix in VMs, and benchmarks.
//!
//! `cargo xtask run` and `cargo xtask test` are the README's two commands.

mod bench;
mod bench_agent;
mod bench_probe;
mod collector;
mod image;
mod run;
mod services;
mod setup;
mod test;
mod util;
mod viewer;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "trafficmap developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building, running and testing need (idempotent; says what it does).
    Setup {
        /// How much to install: build < run < test < bench.
        #[arg(long, value_enum, default_value = "test")]
        level: setup::Level,
    },
    /// Run agent, collector and viewer on this host with embedded defaults; prints the viewer
    /// address. Ctrl-C stops everything cleanly.
    Run {
        /// Address of the collector (API and viewer).
        #[arg(long, default_value = "127.0.0.1:9978")]
        listen: std::net::SocketAddr,
        /// Agent report interval.
        #[arg(long, default_value = "60s")]
        interval: String,
        /// State directory (store, daily maps, spool); default ~/.cache/trafficmap/run.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
        /// Build optimised binaries (slower to build, as deployed).
        #[arg(long)]
        release: bool,
    },
    /// Run every test: lint, unit, privileged probe tests, kernel matrix in VMs, and the rest.
    Test {
        /// Run only these stages.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Skip these stages.
        #[arg(long, value_delimiter = ',')]
        skip: Vec<String>,
        /// Do not install missing pieces first.
        #[arg(long)]
        no_setup: bool,
    },
    /// Benchmarks, each against peers measured in the same run (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
    /// (Internal) one request/response run, for investigating probe overhead by hand.
    #[command(hide = true)]
    Rr {
        #[arg(long, default_value_t = 100_000)]
        count: usize,
    },
    /// (Internal, for `bench agent`) hold N loopback connections open until stdin closes.
    #[command(hide = true)]
    HoldConnections { count: usize },
    /// Run the probe suite on Debian kernels in qemu VMs and print the kernel x backend matrix.
    VmTest {
        /// Kernel labels to run (default: all of 5.10, 6.1, 6.12).
        kernels: Vec<String>,
    },
    /// OCI images of the agent and the collector (buildah, from the built binaries), exported as
    /// `<out>/trafficmap-{agent,collector}-<version>.oci.tar`; prints their sizes.
    Image {
        /// Which binaries: release (as shipped) or dev (the unit stage's debug build, stripped).
        #[arg(long, value_enum, default_value = "release")]
        profile: image::Profile,
        /// Output directory (default target/images).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Regenerate the shipped TCP service-name table from IANA's registry XML (the committed
    /// copy, or first replace that copy with `--xml FILE`, plain or gzipped).
    ServicesUpdate {
        #[arg(long)]
        xml: Option<std::path::PathBuf>,
    },
    /// The web viewer: rebuild its bundle, check it, run its browser test.
    Viewer {
        #[command(subcommand)]
        cmd: viewer::Cmd,
    },
}

/// A case of `bench probe` that can run alone.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ProbeCase {
    Drain,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Probe overhead on loopback request/response, stream and short connections, for the
    /// per-call backend and the counters backend, vs no probe, tcpdump, bpftrace; drain cost.
    Probe {
        #[arg(long, default_value_t = 7)]
        reps: usize,
        #[arg(long, default_value_t = 100_000)]
        rr_count: usize,
        #[arg(long, default_value_t = 8192)]
        stream_mib: usize,
        /// Connections of the short-connection workload (counters backend: lifecycle only).
        #[arg(long, default_value_t = 10_000)]
        short_count: usize,
        /// Connections held open to time one drain (each is two live sockets).
        #[arg(long, default_value_t = 50_000)]
        drain_connections: usize,
        /// Run only this case: `drain` (the drain-cost case alone, about a minute).
        #[arg(long, value_enum)]
        only: Option<ProbeCase>,
    },
    /// Agent CPU and memory idle and at 1k/10k new connections/s; drain time at 100k connections.
    Agent,
    /// The viewer against a d3-force + SVG baseline at 5,000 nodes / 50,000 links, in headless
    /// Chromium; also replaces BENCHMARKS.md § Viewer.
    Viewer,
    #[command(flatten)]
    Other(bench::Bench),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup { level } => setup::setup(level),
        Cmd::Run {
            listen,
            interval,
            data_dir,
            release,
        } => {
            setup::setup(setup::Level::Run)?;
            run::run_all(&run::Options {
                listen,
                interval,
                data_dir,
                release,
            })
        }
        Cmd::Test {
            only,
            skip,
            no_setup,
        } => {
            if !no_setup {
                setup::setup(setup::Level::Test)?;
            }
            test::test(&only, &skip)
        }
        Cmd::Bench { what } => {
            setup::setup(setup::Level::Bench)?;
            let report = match what {
                BenchCmd::Probe {
                    reps,
                    rr_count,
                    stream_mib,
                    short_count,
                    drain_connections,
                    only,
                } => bench_probe::bench(&bench_probe::Options {
                    reps,
                    rr_count,
                    stream_bytes: stream_mib << 20,
                    short_count,
                    drain_connections,
                    only_drain: matches!(only, Some(ProbeCase::Drain)),
                })?,
                BenchCmd::Agent => bench_agent::bench()?,
                BenchCmd::Viewer => viewer::bench()?,
                BenchCmd::Other(b) => return bench::bench(b),
            };
            let path = util::root().join("target/bench-last.md");
            std::fs::write(&path, &report)?;
            println!("{report}");
            eprintln!("(written to {})", path.display());
            Ok(())
        }
        Cmd::Rr { count } => {
            let c = bench_probe::request_response(count, 64)?;
            println!(
                "wall {:.1} ms cpu {:.1} ms",
                c.wall.as_secs_f64() * 1e3,
                c.cpu.as_secs_f64() * 1e3
            );
            Ok(())
        }
        Cmd::HoldConnections { count } => bench_agent::hold_connections(count),
        Cmd::VmTest { kernels } => {
            setup::setup(setup::Level::Test)?;
            let rows = vm::vm_test(&kernels)?;
            let table = vm::render_matrix(&rows);
            std::fs::write(util::artifacts_dir().join("kernel-matrix.md"), &table)?;
            println!("{table}");
            if vm::any_failed(&rows) {
                anyhow::bail!("kernel matrix has failures");
            }
            Ok(())
        }
        Cmd::Viewer { cmd } => viewer::command(cmd),
        Cmd::Image { profile, out } => image::command(profile, out),
        Cmd::ServicesUpdate { xml } => services::update(xml.as_deref()),
    }
}
