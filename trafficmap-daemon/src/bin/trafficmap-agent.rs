//! `trafficmap-agent`: the per-host daemon (systemd unit or Kubernetes DaemonSet).

use std::process::ExitCode;

use clap::Parser as _;
use tracing_subscriber::{EnvFilter, prelude::*, reload};
use trafficmap_daemon::{
    agent,
    config::{Cli, Config, EXIT_CONFIG},
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Bad configuration: one clear line, exit 64, before anything is loaded or bound.
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trafficmap-agent: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_level));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let log_reload = Box::new(move |level: &str| -> anyhow::Result<()> {
        handle.modify(|f| *f = EnvFilter::new(level))?;
        Ok(())
    });

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trafficmap-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(agent::run(cli, config, log_reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("trafficmap-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
