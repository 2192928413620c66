//! End-to-end load against the real `tandem` binary, reported as ratios from one run.
//!
//! - `durability`: 8 writers × 2,000 updates on one doc, one observer; updates/s with fsync on and
//!   off, interleaved (on, off, on, off, …), medians of three. The ratio is the cost of
//!   fsync-before-broadcast once group commit is in place.
//! - `memory`: RSS of the server at start, with 300 loaded docs (2 peers, 10 KB each), and after
//!   every doc has unloaded; the last figure is reported against the start-up baseline.
//!
//! Usage: `cargo run --release -p tandem-benches --bin hubload -- [path/to/tandem] [durability|memory]`;
//! `HUBLOAD_SERVER_ARGS` adds flags to every server started (e.g. `--db-cache-bytes 1048576`).
//! (default `target/release/tandem`). Traffic goes to 127.0.0.1 only; every loop is bounded.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tandem_tests::{Peer, http_get};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const N_WRITERS: usize = 8;
const N_UPDATES_PER_WRITER: usize = 2000;
const N_REPETITIONS: usize = 3;
const N_DOCS: usize = 300;

struct Server {
    child: Child,
    addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn start(bin: &str, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(bin)
        .arg("serve")
        .args(["--port", "0", "--log", "warn", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .args(
            std::env::var("HUBLOAD_SERVER_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tandem");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("server starts")
        .expect("read stdout")
        .expect("listening line");
    let addr = line
        .rsplit("http://")
        .next()
        .expect("address")
        .parse()
        .expect("socket address");
    Server {
        child,
        addr,
        _dir: dir,
    }
}

impl Server {
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

async fn durability_run(bin: &str, fsync: bool) -> f64 {
    // Writers never read what the others send (up to 14,000 small frames each), so their outboxes
    // are sized to hold it instead of closing them as slow consumers. Each writer sends as fast
    // as it can, far above a person's rate, so the per-connection message limit is off.
    let server = start(
        bin,
        &[
            "--fsync",
            if fsync { "true" } else { "false" },
            "--outbox-capacity",
            "8192",
            "--max-messages-per-second",
            "0",
        ],
    )
    .await;
    let mut observer = Peer::connect(server.addr, "bench").await;
    let mut writers = Vec::new();
    for _ in 0..N_WRITERS {
        writers.push(Peer::connect(server.addr, "bench").await);
    }
    let total = N_WRITERS * N_UPDATES_PER_WRITER;
    let started = Instant::now();
    let sends = writers.into_iter().map(|mut writer| async move {
        for _ in 0..N_UPDATES_PER_WRITER {
            writer.append_text("x").await;
        }
        writer
    });
    let (writers, _) = tokio::join!(
        futures_util::future::join_all(sends),
        observer.wait_text(|t| t.len() == total)
    );
    let elapsed = started.elapsed();
    drop(writers);
    server.stop().await;
    total as f64 / elapsed.as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

async fn durability(bin: &str) {
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..N_REPETITIONS {
        on.push(durability_run(bin, true).await);
        off.push(durability_run(bin, false).await);
    }
    let (on, off) = (median(on), median(off));
    println!(
        "{}",
        serde_json::json!({"scenario": "durability", "updates_per_s_fsync_on": on.round(), "updates_per_s_fsync_off": off.round(), "ratio_on_over_off": on / off})
    );
    println!("\n| scenario | fsync on (updates/s) | fsync off (updates/s) | on / off |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| {N_WRITERS} writers x {N_UPDATES_PER_WRITER} updates, 1 doc | {on:.0} | {off:.0} | {:.2} |\n",
        on / off
    );
}

/// Opens `N_DOCS` docs with two peers each, then closes everything and waits until every doc
/// has unloaded. Returns the RSS with everything loaded.
async fn load_and_unload(server: &Server, cycle: usize) -> u64 {
    let paste = "m".repeat(10 * 1024);
    let mut peers = Vec::new();
    for i in 0..N_DOCS {
        let name = format!("mem/{cycle}/{i}");
        let mut writer = Peer::connect(server.addr, &name).await;
        writer.append_text(&paste).await;
        let mut reader = Peer::connect(server.addr, &name).await;
        reader.wait_text(|t| t.len() == paste.len()).await;
        peers.push(writer);
        peers.push(reader);
    }
    let loaded = server.rss_kib();
    for peer in peers {
        peer.close().await;
    }
    // Bounded wait until every doc reports unloaded.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = http_get(server.addr, "/api/docs", "application/json").await;
        let list: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let n_loaded = list["docs"].as_array().map_or(0, |docs| {
            docs.iter().filter(|d| d["loaded"] == true).count()
        });
        if n_loaded == 0 || Instant::now() > deadline {
            eprintln!("cycle {cycle}: {n_loaded} docs still loaded");
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle blocking-pool threads (used for loads) exit after 10 s and the allocator returns freed pages after its decay time; wait for both.
    tokio::time::sleep(Duration::from_secs(25)).await;
    loaded
}

async fn memory(bin: &str) {
    let server = start(bin, &["--doc-unload-grace", "1s"]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = server.rss_kib();
    println!("| RSS | KiB | / baseline |");
    println!("| --- | ---: | ---: |");
    println!("| start-up baseline | {baseline} | 1.00 |");
    let mut rows = Vec::new();
    // Three cycles: if the figure after unload stays flat, memory is reused, not leaked.
    for cycle in 1..=3 {
        let loaded = load_and_unload(&server, cycle).await;
        let after = server.rss_kib();
        println!(
            "| cycle {cycle}: {N_DOCS} docs loaded (2 peers, 10 KB each) | {loaded} | {:.2} |",
            loaded as f64 / baseline as f64
        );
        println!(
            "| cycle {cycle}: after all docs unloaded | {after} | {:.2} |",
            after as f64 / baseline as f64
        );
        rows.push(
            serde_json::json!({"cycle": cycle, "loaded_kib": loaded, "after_unload_kib": after}),
        );
    }
    server.stop().await;
    println!(
        "{}",
        serde_json::json!({"scenario": "memory", "baseline_kib": baseline, "cycles": rows})
    );
}

#[tokio::main]
async fn main() {
    let bin = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/release/tandem".into());
    let only = std::env::args().nth(2);
    if only.as_deref() != Some("memory") {
        durability(&bin).await;
    }
    if only.as_deref() != Some("durability") {
        memory(&bin).await;
    }
}
