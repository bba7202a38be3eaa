//! `trafficmap-collector`: see `trafficmap_collector::cli` and `docs/collector.md`.

use clap::Parser as _;
use trafficmap_collector::{
    cli::{Cli, Command, Query, ReportCommand, TokenCommand},
    query, run,
};

// Maps of a large fleet are millions of small allocations; mimalloc makes them markedly cheaper
// than glibc's allocator (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit status for a configuration error, before anything binds (the project's convention,
/// sysexits' EX_USAGE).
const EXIT_CONFIG: i32 = 64;

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// The listening socket, with a backlog for a fleet reconnecting at once (after a restart,
/// thousands of agents connect within a second; the default backlog of 128 resets them).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

fn main() {
    trafficmap_collector::tune_allocator();
    let cli = Cli::parse();
    // Issuing a token needs no configuration: nothing is read, only a line printed.
    if let Some(Command::Token(TokenCommand::Issue(a))) = &cli.command {
        match trafficmap_collector::auth::issue(&a.label, &a.identities()) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("trafficmap-collector: token issue: {e}");
                std::process::exit(EXIT_CONFIG);
            }
        }
        return;
    }
    // Every command needs a valid configuration; check it before anything binds or opens.
    let cfg = match cli.settings.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("trafficmap-collector: configuration: {e}");
            std::process::exit(EXIT_CONFIG);
        }
    };
    if matches!(cli.command, Some(Command::CheckConfig)) {
        // Old traffic-map files are read as they are; what changed meaning is said here.
        for w in trafficmap_collector::enrich::files::old_format_warnings(&cfg) {
            println!("warning: {w}");
        }
        println!("configuration ok");
        return;
    }
    init_logging(&cfg.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("trafficmap-collector: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        let result = match &cli.command {
            None | Some(Command::Serve) => match listen(cfg.listen) {
                Ok(l) => run::serve(cfg, l).await.map(|()| 0),
                Err(e) => {
                    eprintln!("trafficmap-collector: listening on {}: {e}", cfg.listen);
                    return EXIT_CONFIG;
                }
            },
            Some(Command::Query(Query::Top(a))) => query::top(&cli.settings, a).await.map(|()| 0),
            Some(Command::Query(Query::WhoCalls(a))) => {
                query::who_calls(&cli.settings, a).await.map(|()| 0)
            }
            Some(Command::Query(Query::CrossEnv(a))) => {
                query::cross_env(&cli.settings, a).await.map(|()| 0)
            }
            Some(Command::Query(Query::Archdomains(a))) => {
                query::archdomains(&cli.settings, a).await
            }
            Some(Command::Query(Query::Hosts(a))) => {
                query::hosts(&cli.settings, a).await.map(|()| 0)
            }
            Some(Command::Export(a)) => query::export_map(&cli.settings, a).await.map(|()| 0),
            Some(Command::Rollup) => {
                async {
                    let store =
                        trafficmap_collector::store::Store::open(cfg.store_options()).await?;
                    let m = store
                        .maintain(chrono::Utc::now(), cfg.retention.retention())
                        .await?;
                    println!(
                        "rolled up {} rows, removed {} by retention",
                        m.rolled_up, m.deleted_rows
                    );
                    Ok(0)
                }
                .await
            }
            Some(Command::CheckConfig | Command::Token(_)) => Ok(0),
            Some(Command::Archive(a)) => trafficmap_collector::archive::command(&cfg, a).await,
            Some(Command::Report(ReportCommand::Costs(a))) => {
                trafficmap_collector::costreport::command(&cli.settings, a)
                    .await
                    .map(|()| 0)
            }
            Some(Command::Report(r)) => {
                trafficmap_collector::dailyreport::command(&cli.settings, r).await
            }
        };
        match result {
            Ok(code) => code,
            Err(e) => {
                eprintln!("trafficmap-collector: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
