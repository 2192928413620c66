//! The `tandem` binary: parse configuration, set up logging, bind, and run until SIGTERM/ctrl-c;
//! or run one of the one-shot commands of `command.rs` (`tandem user ...`, `tandem token mint`).

use anyhow::Context;
use clap::Parser;
use tandem_server::config::{Cli, Command, Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc with background threads returns freed pages to the OS after its decay time, so the
/// server's memory comes back down after documents unload. Measured with `hubload memory`
/// (300 docs, 600 connections, three load/unload cycles): glibc malloc kept the first cycle's
/// high-water mark (3.6x the start-up RSS), jemalloc comes back to 1.7x; mimalloc kept 2.6x.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> anyhow::Result<()> {
    match Cli::parse().into_command() {
        Command::Serve(args) => {
            let config = tandem_server::config::load(args)?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads)
                .on_thread_park(tandem_server::alloc::on_worker_park)
                .enable_all()
                .build()
                .context("starting the async runtime")?
                .block_on(serve(config))
        }
        Command::User(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            finish(runtime.block_on(tandem_server::command::run_user(command)))
        }
        Command::Token(command) => finish(tandem_server::command::run_token(command)),
        Command::Webhook(command) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            finish(runtime.block_on(tandem_server::command::run_webhook(command)))
        }
    }
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
    let addr = listener.local_addr().context("reading bound address")?;
    // One line on stdout for people and scripts; everything else is logged on stderr.
    let scheme = if config.listener.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("tandem listening on {scheme}://{addr}");
    let summary = tandem_server::run(config, listener, tandem_server::signal()).await?;
    if !summary.clean {
        anyhow::bail!("shutdown timed out before every document was flushed");
    }
    Ok(())
}

fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter =
        EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
