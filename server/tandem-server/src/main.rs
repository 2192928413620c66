//! The `tandem` binary: parse configuration, set up logging, bind, and run until SIGTERM/ctrl-c;
//! or run one of the one-shot commands of `command/` (`tandem user ...`, `tandem webhook ...`,
//! `tandem token mint`).

use anyhow::Context;
use tandem_server::Config;
use tandem_server::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc with background threads returns freed pages to the OS after its decay time, so the
/// server's memory comes back down after documents unload, which glibc malloc did not do
/// (`hubload memory`; the figures are in `benches/RESULTS.md`, "Figures behind design choices").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    install_panic_hook();
    // The help of `tandem serve` shows the same defaults the configuration falls back to.
    match Cli::parse_with_defaults(&tandem_server::config::defaults()).into_command() {
        Command::Serve(args) => {
            let res = tandem_server::config::load(args).and_then(|config| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(config.worker_threads)
                    .on_thread_park(tandem_server::alloc::on_worker_park)
                    .enable_all()
                    .build()
                    .context("starting the async runtime")?
                    .block_on(serve(config))
            });
            if let Err(error) = res {
                eprintln!("error: {}", one_line(&error));
                std::process::exit(1);
            }
            Ok(())
        }
        Command::User(command) => {
            // One worker, but multi-threaded: in cluster mode the shared tables block on their
            // queries (`PgMeta::block`), which a current-thread runtime cannot.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            finish(runtime.block_on(tandem_server::command::run_user(command)))
        }
        Command::Token(command) => finish(tandem_server::command::run_token(command)),
        Command::Webhook(command) => {
            // One worker, but multi-threaded: in cluster mode the shared tables block on their
            // queries (`PgMeta::block`), which a current-thread runtime cannot.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            finish(runtime.block_on(tandem_server::command::run_webhook(command)))
        }
    }
}

/// The error and its causes joined by ": " on one line, for the person or supervisor reading
/// it; a cause whose text the line already holds (errors that print their source) is left out.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

/// A command's result on stdout, or its error as one line on stderr and exit status 1.
fn finish(result: Result<String, tandem_server::command::CommandError>) -> anyhow::Result<()> {
    match result {
        Ok(line) => {
            println!("{line}");
            Ok(())
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1)
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing(&config.log, config.log_format)?;
    tracing::info!(
        addr = %config.addr,
        data_dir = %config.data_dir.display(),
        web_dir = ?config.web_dir,
        max_frame_bytes = config.hub.limits.max_frame_bytes,
        doc_unload_grace = ?config.hub.doc_unload_grace,
        fsync = config.persist.fsync,
        worker_threads = config.worker_threads,
        tls = config.listener.tls.is_some(),
        max_connections = config.listener.max_connections,
        max_connections_per_address = config.listener.max_connections_per_address,
        upgrade_timeout = ?config.listener.upgrade_timeout,
        "configuration"
    );
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    // One line on stdout for people, scripts and supervisors, printed only once the store is
    // open and the start-up checks passed; everything else is logged on stderr.
    let summary =
        tandem_server::run_with_ready(config, listener, tandem_server::signal(), |ready| {
            println!("tandem listening on {ready}");
        })
        .await?;
    if !summary.clean {
        anyhow::bail!("shutdown timed out before every document was flushed");
    }
    Ok(())
}

/// Reports a panic as one log line (one line on stderr before logging is set up) instead of
/// the default message and backtrace: panics inside yrs and the store are caught and fail only
/// their document or request, and the line says where. With `RUST_BACKTRACE` set (not `0`), the
/// default report with its backtrace is kept, for debugging.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::env::var_os("RUST_BACKTRACE").is_some_and(|value| value != "0") {
            default_hook(info);
            return;
        }
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("panic without a message");
        let location = info
            .location()
            .map(|at| format!("{}:{}", at.file(), at.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        if tracing::dispatcher::has_been_set() {
            tracing::error!(panic = message, location, thread, "panic");
        } else {
            let message = message.replace('\n', " ");
            eprintln!("error: panic in thread {thread} at {location}: {message}");
        }
    }));
}

fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let output = match format {
        LogFormat::Pretty => output.boxed(),
        LogFormat::Json => output.json().boxed(),
    };
    // The filter applies to the output only: the admin view keeps the newest warnings and
    // errors whatever the log level (`ErrorLayer`).
    tracing_subscriber::registry()
        .with(output.with_filter(filter))
        .with(tandem_server::ErrorLayer.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .try_init()
        .context("installing the log subscriber")?;
    Ok(())
}
