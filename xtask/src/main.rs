//! Developer tasks cargo cannot do alone: set-up, running the whole system on this host, the
//! test suite including privileged tests and the kernel matrix in VMs, and benchmarks.
//!
//! `cargo xtask run` and `cargo xtask test` are the README's two commands.

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
    /// Run the probe suite on Debian kernels in qemu VMs and print the kernel x backend matrix.
    VmTest {
        /// Kernel labels to run (default: all of 5.10, 6.1, 6.12).
        kernels: Vec<String>,
    },
    /// The web viewer: rebuild its bundle, check it, run its browser test.
    Viewer {
        #[command(subcommand)]
        cmd: viewer::Cmd,
    },
    /// Run a benchmark and record its results in BENCHMARKS.md.
    Bench {
        #[arg(value_enum)]
        target: BenchTarget,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum BenchTarget {
    /// The viewer against a d3-force + SVG baseline at 5,000 nodes / 50,000 links.
    Viewer,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup { level } => setup::setup(level),
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
        Cmd::Bench { target } => {
            setup::setup(setup::Level::Bench)?;
            match target {
                BenchTarget::Viewer => viewer::bench(),
            }
        }
    }
}
