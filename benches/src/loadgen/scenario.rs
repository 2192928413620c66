//! The scenarios. Each run starts a fresh server, connects real yrs peers, drives a bounded
//! load, reads the server's CPU time and memory from `/proc`, and returns its figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;
use yrs::{Doc, GetString, ReadTxn, Text, Transact};

use super::peer::{self, Apply, Command, Framing, PeerHandle, PeerOptions, Report, Shared, TEXT};
use super::report::{Figures, add_latencies, pretty};
use super::target::{Server, own_cpu};

const MB: f64 = 1024.0 * 1024.0;

/// Which node each peer of a doc connects to, on a cluster (a single server is every node).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every peer on node 1.
    Same,
    /// The first peer (the writer) on node 1, the others spread over the other nodes in turn.
    Cross,
    /// Peer `i` on node `i mod nodes`.
    Spread,
}

impl Placement {
    /// The node (from 0) of peer `peer_idx`.
    pub fn node(self, peer_idx: usize, n_nodes: usize) -> usize {
        match self {
            Placement::Same => 0,
            Placement::Cross if n_nodes > 1 && peer_idx > 0 => 1 + (peer_idx - 1) % (n_nodes - 1),
            Placement::Cross => 0,
            Placement::Spread => peer_idx % n_nodes.max(1),
        }
    }

    /// The node of each of `n` peers.
    pub fn nodes(self, n: usize, n_nodes: usize) -> Vec<usize> {
        (0..n)
            .map(|peer_idx| self.node(peer_idx, n_nodes))
            .collect()
    }
}

/// Connects `n` peers to `doc`, at most `concurrency` handshakes at a time.
pub async fn connect_peers(
    server: &Server,
    doc: &str,
    n: usize,
    apply: Apply,
    shared: &Arc<Shared>,
    concurrency: usize,
) -> Result<Vec<PeerHandle>> {
    connect_peers_on(server, doc, &vec![0; n], apply, shared, concurrency).await
}

/// Connects one peer to `doc` on each node of `nodes`, at most `concurrency` handshakes at a
/// time; the peers come back in the order of `nodes`.
pub async fn connect_peers_on(
    server: &Server,
    doc: &str,
    nodes: &[usize],
    apply: Apply,
    shared: &Arc<Shared>,
    concurrency: usize,
) -> Result<Vec<PeerHandle>> {
    let mut peers: Vec<Option<PeerHandle>> = (0..nodes.len()).map(|_| None).collect();
    let mut pending = FuturesUnordered::new();
    for (peer_idx, &node) in nodes.iter().enumerate() {
        if pending.len() >= concurrency {
            let (done_idx, peer): (usize, Result<PeerHandle>) =
                pending.next().await.expect("pending");
            peers[done_idx] = Some(peer?);
        }
        let connect = peer::connect(options_on(server, node, doc, apply), shared.clone());
        pending.push(async move { (peer_idx, connect.await) });
    }
    while let Some((done_idx, peer)) = pending.next().await {
        peers[done_idx] = Some(peer?);
    }
    Ok(peers
        .into_iter()
        .map(|peer| peer.expect("every peer connected"))
        .collect())
}

fn options(server: &Server, doc: &str, apply: Apply) -> PeerOptions {
    options_on(server, 0, doc, apply)
}

fn options_on(server: &Server, node: usize, doc: &str, apply: Apply) -> PeerOptions {
    PeerOptions {
        url: server.ws_url_on(node, doc),
        framing: if server.target.speaks_hocuspocus() {
            Framing::Hocuspocus {
                doc: doc.to_owned(),
            }
        } else {
            Framing::Plain
        },
        apply,
        initial: None,
    }
}

/// Closes every peer and collects their reports.
pub async fn close_all(peers: Vec<PeerHandle>) -> Result<Vec<Report>> {
    for peer in &peers {
        let _ = peer.commands.send(Command::Close).await;
    }
    let mut reports = Vec::with_capacity(peers.len());
    for peer in peers {
        reports.push(peer.task.await??);
    }
    Ok(reports)
}

fn merged(reports: &[Report]) -> Histogram<u64> {
    let mut all = Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for report in reports {
        all.add(&report.latencies).expect("same bounds");
    }
    all
}

/// Every peer's text is the same (the edits converged), and it is not empty.
fn check_converged(reports: &[Report]) -> Result<()> {
    let first = &reports.first().context("no peers")?.text;
    ensure!(!first.is_empty(), "the document is empty");
    for (i, report) in reports.iter().enumerate() {
        ensure!(
            report.text == *first,
            "peer {i} diverged: {} chars ({:?}…) against {} ({:?}…)",
            report.text.len(),
            report.text.chars().take(24).collect::<String>(),
            first.len(),
            first.chars().take(24).collect::<String>()
        );
    }
    Ok(())
}

/// Sends `rate` edits per second for `duration`, round-robin over `writers`. An edit a peer's
/// queue cannot take (its socket is backed up) is not sent; returns how many were sent.
async fn drive_edits(writers: &[&PeerHandle], rate: f64, duration: Duration, len: usize) -> u64 {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut due_total = 0u64;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed().min(duration);
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while due_total < due {
            due_total += 1;
            let writer = writers[next % writers.len()];
            next += 1;
            if writer.commands.try_send(Command::Edit { len }).is_ok() {
                sent += 1;
            }
        }
        if elapsed >= duration {
            return sent;
        }
    }
}

/// Waits until `shared.deliveries` reaches `expected` or `timeout` passes; returns the count.
async fn wait_deliveries(shared: &Shared, expected: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let delivered = shared.deliveries();
        if delivered >= expected || Instant::now() >= deadline {
            return delivered;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn take_latencies(peers: &[PeerHandle]) -> Result<Histogram<u64>> {
    let mut all = Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    for peer in peers {
        let (tx, rx) = oneshot::channel();
        peer.commands.send(Command::TakeLatencies(tx)).await?;
        all.add(&rx.await?)?;
    }
    Ok(all)
}

fn cpu_pct(cpu: Duration, wall: Duration) -> f64 {
    cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
}

/// CPU time of a cluster's Redis and Postgres, read together with the nodes'.
#[derive(Clone, Copy)]
struct EngineCpu {
    redis: Option<Duration>,
    postgres: Option<Duration>,
}

impl EngineCpu {
    fn read(server: &Server) -> EngineCpu {
        EngineCpu {
            redis: server.redis_cpu(),
            postgres: server.postgres_cpu(),
        }
    }

    /// On a cluster, adds Redis's CPU % over `wall`, its CPU microseconds per update, and
    /// Postgres's CPU %, since `before`, under `names` in that order.
    fn add_since(
        self,
        before: EngineCpu,
        wall: Duration,
        updates: u64,
        figures: &mut Figures,
        names: [&'static str; 3],
    ) {
        let (Some(redis), Some(redis0)) = (self.redis, before.redis) else {
            return;
        };
        let redis = redis.saturating_sub(redis0);
        figures.insert(names[0], cpu_pct(redis, wall));
        figures.insert(names[1], redis.as_secs_f64() * 1e6 / updates.max(1) as f64);
        if let (Some(postgres), Some(postgres0)) = (self.postgres, before.postgres) {
            figures.insert(names[2], cpu_pct(postgres.saturating_sub(postgres0), wall));
        }
    }
}

/// Fan-out: one writer typing at `rate` edits/s to `n - 1` readers of one doc, placed on a
/// cluster's nodes by `placement`.
pub async fn fanout(
    server: &Server,
    n: usize,
    rate: f64,
    duration: Duration,
    placement: Placement,
) -> Result<Figures> {
    let shared = Arc::new(Shared::default());
    server.prepare_doc("fanout").await?;
    let nodes = placement.nodes(n, server.n_nodes());
    let peers = connect_peers_on(server, "fanout", &nodes, Apply::Immediate, &shared, 64).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu0 = server.cpu();
    let engines0 = EngineCpu::read(server);
    let started = Instant::now();
    let sent = drive_edits(&[&peers[0]], rate, duration, 1).await;
    let expected = sent * (n as u64 - 1);
    let delivered = wait_deliveries(&shared, expected, Duration::from_secs(10)).await;
    let wall = started.elapsed();
    let cpu = server.cpu() - cpu0;
    let engines = EngineCpu::read(server);
    let reports = close_all(peers).await?;
    check_converged(&reports)?;
    let mut figures = Figures::new();
    add_latencies(&mut figures, &merged(&reports));
    figures.insert(
        "deliveries_per_s",
        delivered as f64 / duration.as_secs_f64(),
    );
    figures.insert("server_cpu_pct", cpu_pct(cpu, wall));
    figures.insert(
        "server_cpu_us_per_update",
        cpu.as_secs_f64() * 1e6 / sent.max(1) as f64,
    );
    engines.add_since(
        engines0,
        wall,
        sent,
        &mut figures,
        [
            "redis_cpu_pct",
            "redis_cpu_us_per_update",
            "postgres_cpu_pct",
        ],
    );
    figures.insert("lost", expected.saturating_sub(delivered) as f64);
    Ok(figures)
}

/// Many documents: `docs` × `per_doc` peers, each doc edited once a second by its peers in turn.
pub async fn many_docs(
    server: &Server,
    docs: usize,
    per_doc: usize,
    duration: Duration,
) -> Result<Figures> {
    let shared = Arc::new(Shared::default());
    let mut rooms = Vec::with_capacity(docs);
    for i in 0..docs {
        let doc = format!("many-{i}");
        server.prepare_doc(&doc).await?;
        rooms.push(connect_peers(server, &doc, per_doc, Apply::Immediate, &shared, per_doc).await?);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = server.cpu();
    let started = Instant::now();
    // One edit per doc per second, spread evenly: a tick every 1/docs seconds.
    let total = (duration.as_secs_f64() * docs as f64) as usize;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / docs as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..total {
        tick.tick().await;
        let room = &rooms[i % docs];
        let writer = &room[(i / docs) % per_doc];
        if writer.commands.try_send(Command::Edit { len: 1 }).is_ok() {
            sent += 1;
        }
    }
    let expected = sent * (per_doc as u64 - 1);
    let delivered = wait_deliveries(&shared, expected, Duration::from_secs(10)).await;
    let wall = started.elapsed();
    let cpu = server.cpu() - cpu0;
    let peak = server.peak_rss();
    let mut reports = Vec::new();
    for room in rooms {
        let room_reports = close_all(room).await?;
        check_converged(&room_reports)?;
        reports.extend(room_reports);
    }
    let mut figures = Figures::new();
    add_latencies(&mut figures, &merged(&reports));
    figures.insert("server_cpu_s", cpu.as_secs_f64());
    figures.insert("server_cpu_pct", cpu_pct(cpu, wall));
    figures.insert("peak_rss_mb", peak as f64 / MB);
    figures.insert("lost", expected.saturating_sub(delivered) as f64);
    Ok(figures)
}

/// Saturation: 20 peers on one doc, every peer writing. First a fixed rate every server keeps
/// up with (CPU per million deliveries), then rates raised in steps until p99 passes 50 ms,
/// an update is lost, or the peers cannot send at the asked rate.
pub async fn saturation(
    server: &Server,
    peers_n: usize,
    fixed_rate: f64,
    fixed_window: Duration,
    steps: &[f64],
    step: Duration,
    placement: Placement,
) -> Result<Figures> {
    let shared = Arc::new(Shared::default());
    server.prepare_doc("saturation").await?;
    let nodes = placement.nodes(peers_n, server.n_nodes());
    let peers =
        connect_peers_on(server, "saturation", &nodes, Apply::Deferred, &shared, 32).await?;
    let writers: Vec<&PeerHandle> = peers.iter().collect();
    let receivers = peers_n as u64 - 1;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut figures = Figures::new();

    // Fixed rate.
    let before = shared.deliveries();
    let cpu0 = server.cpu();
    let node_cpu0 = server.node_cpu();
    // Redis's own account of the window: calls and time per command.
    let _ = server.redis_cli(&["config", "resetstat"]);
    let engines0 = EngineCpu::read(server);
    let started = Instant::now();
    let sent = drive_edits(&writers, fixed_rate, fixed_window, 1).await;
    let delivered =
        wait_deliveries(&shared, before + sent * receivers, Duration::from_secs(10)).await - before;
    let wall = started.elapsed();
    let cpu = server.cpu() - cpu0;
    let node_cpu = server.node_cpu();
    EngineCpu::read(server).add_since(
        engines0,
        wall,
        sent,
        &mut figures,
        [
            "fixed_redis_cpu_pct",
            "fixed_redis_cpu_us_per_update",
            "fixed_postgres_cpu_pct",
        ],
    );
    if let Some(stats) = server.redis_cli(&["info", "commandstats"]) {
        add_command_stats(&stats, sent, &mut figures);
    }
    let fixed = take_latencies(&peers).await?;
    figures.insert("fixed_deliveries", delivered as f64);
    figures.insert(
        "cpu_s_per_m_deliveries",
        cpu.as_secs_f64() / delivered.max(1) as f64 * 1e6,
    );
    if server.is_cluster() {
        // Each node's share: it delivers to its own peers and relays what the others appended.
        const NODE_FIGURES: [&str; 3] = [
            "node1_cpu_s_per_m_deliveries",
            "node2_cpu_s_per_m_deliveries",
            "node3_cpu_s_per_m_deliveries",
        ];
        for (name, (after, before)) in NODE_FIGURES.iter().zip(node_cpu.iter().zip(&node_cpu0)) {
            figures.insert(
                *name,
                after.saturating_sub(*before).as_secs_f64() / delivered.max(1) as f64 * 1e6,
            );
        }
    }
    figures.insert(
        "fixed_p99_ms",
        fixed.value_at_quantile(0.99) as f64 / 1000.0,
    );

    // Steps.
    let mut best = 0.0f64;
    let mut best_cpu_pct = 0.0f64;
    let mut best_own_cpu_pct = 0.0f64;
    let mut best_redis_cpu_pct = None;
    let mut limit = "none (last step passed)".to_owned();
    for &rate in steps {
        let before = shared.deliveries();
        let cpu0 = server.cpu();
        let own0 = own_cpu();
        let redis0 = server.redis_cpu();
        let started = Instant::now();
        let sent = drive_edits(&writers, rate, step, 1).await;
        let expected = sent * receivers;
        let delivered =
            wait_deliveries(&shared, before + expected, Duration::from_secs(3)).await - before;
        let wall = started.elapsed();
        let cpu = server.cpu() - cpu0;
        let own = own_cpu() - own0;
        let redis_pct = server
            .redis_cpu()
            .zip(redis0)
            .map(|(after, before)| cpu_pct(after.saturating_sub(before), wall));
        // A peer the server closed (a slow consumer past its outbox) ends the ramp: that step
        // was not sustained.
        let latencies = match take_latencies(&peers).await {
            Ok(latencies) => latencies,
            Err(error) => {
                limit = format!("a peer was closed at {rate}/s ({error})");
                break;
            }
        };
        let p99_ms = latencies.value_at_quantile(0.99) as f64 / 1000.0;
        let per_s = delivered as f64 / step.as_secs_f64();
        eprintln!(
            "    {} rate {rate}/s: sent {sent}, delivered {delivered}/{expected}, p99 {p99_ms:.1} ms, server CPU {:.0}%, load generator CPU {:.0}%{}",
            server.target.name(),
            cpu_pct(cpu, wall),
            cpu_pct(own, wall),
            redis_pct.map_or(String::new(), |pct| format!(", Redis CPU {pct:.0}%"))
        );
        if (sent as f64) < rate * step.as_secs_f64() * 0.95 {
            limit = format!("peers could not send {rate}/s (sockets backed up)");
            break;
        }
        if delivered < expected {
            limit = format!("{} lost at {rate}/s", expected - delivered);
            break;
        }
        if p99_ms > 50.0 {
            limit = format!("p99 {p99_ms:.0} ms at {rate}/s");
            break;
        }
        best = best.max(per_s);
        best_cpu_pct = cpu_pct(cpu, wall);
        best_own_cpu_pct = cpu_pct(own, wall);
        best_redis_cpu_pct = redis_pct;
    }
    eprintln!("    {}: stopped by {limit}", server.target.name());
    figures.insert("max_deliveries_per_s", best);
    figures.insert("server_cpu_pct_at_max", best_cpu_pct);
    figures.insert("loadgen_cpu_pct_at_max", best_own_cpu_pct);
    if let Some(pct) = best_redis_cpu_pct {
        figures.insert("redis_cpu_pct_at_max", pct);
    }
    // Past the last step a server may have dropped updates or closed peers (slow consumers);
    // that is a result here, not a failed run: how many peers were closed, and how many of the
    // others ended with a different text.
    for peer in &peers {
        let _ = peer.commands.send(Command::Close).await;
    }
    let mut reports = Vec::with_capacity(peers.len());
    let mut closed = 0usize;
    for peer in peers {
        match peer.task.await {
            Ok(Ok(report)) => reports.push(report),
            _ => closed += 1,
        }
    }
    figures.insert("closed_peers", closed as f64);
    let diverged = match check_converged(&reports) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("    {}: {error:#}", server.target.name());
            reports
                .iter()
                .filter(|r| r.text != reports[0].text)
                .count()
                .max(1)
        }
    };
    figures.insert("diverged_peers", diverged as f64);
    Ok(figures)
}

/// From Redis's `INFO commandstats` over a window of `updates` appends: every command's calls
/// and time on stderr, and as figures the `XREAD`s per update and Redis's time in commands per
/// update (its CPU beyond that is the event loop, the replies and the fsync of every turn).
fn add_command_stats(stats: &str, updates: u64, figures: &mut Figures) {
    let mut total_usec = 0.0;
    for line in stats.lines() {
        let Some((command, fields)) = line.trim().split_once(':') else {
            continue;
        };
        let Some(command) = command.strip_prefix("cmdstat_") else {
            continue;
        };
        let field = |name: &str| -> Option<f64> {
            fields
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))?
                .parse()
                .ok()
        };
        let (Some(calls), Some(usec)) = (field("calls"), field("usec")) else {
            continue;
        };
        eprintln!(
            "    redis {command}: {calls} calls, {} per update, {} µs per call",
            pretty(calls / updates.max(1) as f64),
            pretty(usec / calls.max(1.0))
        );
        total_usec += usec;
        if command == "xread" {
            figures.insert(
                "fixed_redis_xread_per_update",
                calls / updates.max(1) as f64,
            );
        }
    }
    figures.insert(
        "fixed_redis_command_us_per_update",
        total_usec / updates.max(1) as f64,
    );
}

/// Idle connections: RSS per connection (spread over 100 docs), then memory after they leave.
pub async fn idle(server: &Server, connections: usize) -> Result<Figures> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = server.rss();
    let baseline_anon = server.rss_anon();
    let shared = Arc::new(Shared::default());
    let docs = 100;
    let mut peers = Vec::with_capacity(connections);
    for i in 0..docs {
        let doc = format!("idle-{i}");
        server.prepare_doc(&doc).await?;
        let n = connections / docs + usize::from(i < connections % docs);
        peers.extend(connect_peers(server, &doc, n, Apply::Immediate, &shared, 64).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = server.rss();
    let cpu0 = server.cpu();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu = server.cpu() - cpu0;
    close_all(peers).await?;
    // Every server here drops an empty doc within a few seconds of its last peer leaving.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = server.rss();
    let after_anon = server.rss_anon();
    let mut figures = Figures::new();
    figures.insert("baseline_mb", baseline as f64 / MB);
    figures.insert("loaded_mb", loaded as f64 / MB);
    figures.insert(
        "kib_per_conn",
        loaded.saturating_sub(baseline) as f64 / 1024.0 / connections as f64,
    );
    figures.insert("idle_cpu_pct", cpu_pct(idle_cpu, Duration::from_secs(5)));
    figures.insert("after_close_mb", after as f64 / MB);
    figures.insert("after_vs_baseline", after as f64 / baseline as f64);
    figures.insert("baseline_anon_mb", baseline_anon as f64 / MB);
    figures.insert("after_close_anon_mb", after_anon as f64 / MB);
    figures.insert(
        "after_vs_baseline_anon",
        after_anon as f64 / baseline_anon.max(1) as f64,
    );
    Ok(figures)
}

/// How long the memory scenarios wait after the last peer left before they read the memory:
/// past Tandem's unload grace (1 s here) and the caches it empties at the last unload.
const UNLOAD_WAIT: Duration = Duration::from_secs(10);

/// One doc of about 1 KB, as `idle_docs` loads a thousand of: one peer joins, types 16 edits
/// of 64 characters, and stays connected until it is closed.
async fn load_small_doc(server: &Server, doc: &str, shared: &Arc<Shared>) -> Result<PeerHandle> {
    server.prepare_doc(doc).await?;
    let mut one = connect_peers(server, doc, 1, Apply::Immediate, shared, 1).await?;
    let peer = one.pop().context("one peer")?;
    for _ in 0..16 {
        peer.commands.send(Command::Edit { len: 64 }).await?;
    }
    Ok(peer)
}

/// Loaded idle documents: `docs` docs of about 1 KB each, one peer on each; RSS per doc (minus
/// the per-connection cost measured with the same peers on one doc), then memory after every
/// peer left and every doc unloaded, against two baselines: the start-up one, and one taken
/// after a single such doc was loaded and unloaded (a server that has served once: code paths
/// run, allocator and page caches made, one-off structures built). The second is the target's
/// (issue 18): anonymous RSS, since the executable's pages touched after start-up are
/// file-backed, shared, and the kernel's to drop.
pub async fn idle_docs(server: &Server, docs: usize) -> Result<Figures> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = server.rss();
    let baseline_anon = server.rss_anon();
    server.dump_memory("start");
    let shared = Arc::new(Shared::default());

    // The peer sends its edits before its close frame, so the server has them all.
    let one = load_small_doc(server, "idle-first", &shared).await?;
    close_all(vec![one]).await?;
    tokio::time::sleep(UNLOAD_WAIT).await;
    let one_doc = server.rss();
    let one_doc_anon = server.rss_anon();
    server.dump_memory("one-doc");

    // Reference: the same number of peers on one doc.
    server.prepare_doc("idle-one").await?;
    let same_doc = connect_peers(server, "idle-one", docs, Apply::Immediate, &shared, 64).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let per_conn = server.rss().saturating_sub(one_doc) as f64 / docs as f64;
    close_all(same_doc).await?;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let base2 = server.rss();

    let mut peers = Vec::with_capacity(docs);
    for i in 0..docs {
        peers.push(load_small_doc(server, &format!("doc-{i}"), &shared).await?);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = server.rss();
    server.dump_memory("loaded");
    close_all(peers).await?;
    tokio::time::sleep(UNLOAD_WAIT).await;
    let after = server.rss();
    let after_anon = server.rss_anon();
    server.dump_memory("after");
    let mut figures = Figures::new();
    figures.insert("baseline_mb", baseline as f64 / MB);
    figures.insert("baseline_anon_mb", baseline_anon as f64 / MB);
    figures.insert("one_doc_mb", one_doc as f64 / MB);
    figures.insert("one_doc_anon_mb", one_doc_anon as f64 / MB);
    figures.insert("after_unload_anon_mb", after_anon as f64 / MB);
    figures.insert(
        "after_vs_one_doc_anon",
        after_anon as f64 / one_doc_anon.max(1) as f64,
    );
    figures.insert(
        "after_vs_baseline_anon",
        after_anon as f64 / baseline_anon.max(1) as f64,
    );
    figures.insert("kib_per_conn_one_doc", per_conn / 1024.0);
    figures.insert(
        "kib_per_loaded_doc",
        (loaded.saturating_sub(base2) as f64 / docs as f64 - per_conn).max(0.0) / 1024.0,
    );
    figures.insert("after_unload_mb", after as f64 / MB);
    figures.insert("after_vs_baseline", after as f64 / baseline as f64);
    Ok(figures)
}

/// Presence: `docs` × `per_doc` peers, each updating its awareness once a second.
pub async fn presence(
    server: &Server,
    docs: usize,
    per_doc: usize,
    duration: Duration,
) -> Result<Figures> {
    let shared = Arc::new(Shared::default());
    let mut peers = Vec::new();
    for i in 0..docs {
        let doc = format!("presence-{i}");
        server.prepare_doc(&doc).await?;
        peers.extend(
            connect_peers(server, &doc, per_doc, Apply::Immediate, &shared, per_doc).await?,
        );
    }
    // Everyone announces itself once, then the measurement starts.
    for peer in &peers {
        peer.commands.send(Command::Awareness).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = shared.awareness_deliveries();
    let cpu0 = server.cpu();
    let started = Instant::now();
    let n = peers.len();
    let total = (duration.as_secs_f64() * n as f64) as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / n as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    for i in 0..total {
        tick.tick().await;
        if peers[i % n].commands.try_send(Command::Awareness).is_ok() {
            sent += 1;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let wall = started.elapsed();
    let cpu = server.cpu() - cpu0;
    let received = shared.awareness_deliveries() - before;
    close_all(peers).await?;
    let mut figures = Figures::new();
    figures.insert("updates_per_s", sent as f64 / duration.as_secs_f64());
    figures.insert("received_per_s", received as f64 / wall.as_secs_f64());
    figures.insert("server_cpu_pct", cpu_pct(cpu, wall));
    Ok(figures)
}

/// A doc with a long editing history: `ops` edits by one client, typed the way people type
/// (runs of `insert_len`-character inserts and backspaces at a cursor that jumps somewhere else
/// every twenty edits or so), returned as updates of `chunk_ops` edits each, and the final
/// text length.
pub fn history_doc(
    ops: usize,
    insert_len: usize,
    chunk_ops: usize,
    seed: u64,
) -> (Vec<Vec<u8>>, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let doc = Doc::with_client_id(7);
    let text = doc.get_or_insert_text(TEXT);
    let mut updates = Vec::new();
    let mut sv = doc.transact().state_vector();
    let mut cursor = 0u32;
    for i in 0..ops {
        {
            let mut txn = doc.transact_mut();
            let len = text.len(&txn);
            if rng.random_ratio(1, 20) {
                cursor = rng.random_range(0..=len);
            }
            cursor = cursor.min(len);
            if cursor > 0 && rng.random_ratio(1, 5) {
                text.remove_range(&mut txn, cursor - 1, 1);
                cursor -= 1;
            } else {
                let chunk: String = (0..insert_len)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect();
                text.insert(&mut txn, cursor, &chunk);
                cursor += insert_len as u32;
            }
        }
        if (i + 1) % chunk_ops == 0 || i + 1 == ops {
            let txn = doc.transact();
            updates.push(txn.encode_diff_v1(&sv));
            sv = txn.state_vector();
        }
    }
    let len = text.get_string(&doc.transact()).len();
    (updates, len)
}

/// Uploads `updates` through a peer that stays connected (so servers without storage keep the
/// doc) and waits until a fresh peer sees `len` characters.
async fn upload(server: &Server, doc: &str, updates: &[Vec<u8>], len: usize) -> Result<PeerHandle> {
    let shared = Arc::new(Shared::default());
    server.prepare_doc(doc).await?;
    let loader = peer::connect(options(server, doc, Apply::Never), shared.clone()).await?;
    for update in updates {
        let mut message = vec![0u8, 2];
        yrs::encoding::write::Write::write_buf(&mut message, update);
        loader.commands.send(Command::Raw(message)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let probe = peer::connect(options(server, doc, Apply::Immediate), shared.clone()).await?;
        let report = close_all(vec![probe]).await?.remove(0);
        if report.text.len() == len {
            return Ok(loader);
        }
        if Instant::now() >= deadline {
            bail!(
                "the server holds {} of {len} characters after 120 s",
                report.text.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Cold join: one fresh peer on a doc built from a long history, while another peer holds it
/// open; then (servers that store docs) after every peer left and the doc was unloaded.
pub async fn cold_join(server: &Server, updates: &[Vec<u8>], len: usize) -> Result<Figures> {
    let loader = upload(server, "history", updates, len).await?;
    let state_bytes: usize = updates.iter().map(Vec::len).sum();
    let shared = Arc::new(Shared::default());
    let mut figures = Figures::new();
    figures.insert("history_kb", state_bytes as f64 / 1024.0);

    let synced = join_once(server, "history", len, &shared).await?;
    figures.insert("join_loaded_ms", synced.as_secs_f64() * 1000.0);

    close_all(vec![loader]).await?;
    if server.target.persists() {
        // Tandem runs with a 1 s unload grace; give y-sweet its own time too.
        tokio::time::sleep(Duration::from_secs(12)).await;
        let synced = join_once(server, "history", len, &shared).await?;
        figures.insert("join_cold_ms", synced.as_secs_f64() * 1000.0);
    }
    Ok(figures)
}

/// One fresh peer joins `doc`, checks it got all `len` characters and leaves; returns the time
/// from its TCP connect to its sync step 2.
async fn join_once(
    server: &Server,
    doc: &str,
    len: usize,
    shared: &Arc<Shared>,
) -> Result<Duration> {
    let joiner = peer::connect(options(server, doc, Apply::Immediate), shared.clone()).await?;
    let synced = joiner.synced_after;
    let report = close_all(vec![joiner]).await?.remove(0);
    ensure!(
        report.text.len() == len,
        "a joiner got {} of {len} characters",
        report.text.len()
    );
    Ok(synced)
}

/// Join storm: `joiners` peers at once on a big doc; time until the last one has its step 2,
/// and the server's peak RSS during the storm.
///
/// On a cluster the doc is uploaded through node 1 and the joiners spread over every node by
/// `placement`; each node's log then tells how many times it decoded the doc ("doc opened").
pub async fn join_storm(
    server: &Server,
    updates: &[Vec<u8>],
    len: usize,
    joiners: usize,
    placement: Placement,
) -> Result<Figures> {
    let loader = upload(server, "big", updates, len).await?;
    let state_bytes: usize = updates.iter().map(Vec::len).sum();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = server.rss();
    server.reset_peak();
    let shared = Arc::new(Shared::default());
    let cpu0 = server.cpu();
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    for i in 0..joiners {
        // One joiner applies and checks the content; the rest only time their step 2.
        let apply = if i == 0 {
            Apply::Immediate
        } else {
            Apply::Bulk
        };
        let node = placement.node(i, server.n_nodes());
        pending.push(peer::connect(
            options_on(server, node, "big", apply),
            shared.clone(),
        ));
    }
    let mut peers = Vec::with_capacity(joiners);
    while let Some(peer) = pending.next().await {
        peers.push(peer?);
    }
    let all_synced = started.elapsed();
    let cpu = server.cpu() - cpu0;
    let peak = server.peak_rss();
    let mut slowest = Duration::ZERO;
    // What the server controls: when the last joiner that only receives had its whole step 2.
    // The checking joiner also applies the 20 MB update in yrs, on the load generator's cores.
    let mut last_received = Duration::ZERO;
    for peer in &peers {
        slowest = slowest.max(peer.synced_after);
        if peer.apply == Apply::Bulk {
            last_received = last_received.max(peer.synced_after);
        }
    }
    let reports = close_all(peers).await?;
    let checked = reports
        .iter()
        .find(|report| !report.text.is_empty())
        .context("the checking joiner")?;
    ensure!(
        checked.text.len() == len,
        "a joiner got {} of {len} characters",
        checked.text.len()
    );
    ensure!(
        reports
            .iter()
            .all(|report| report.step2_bytes >= state_bytes / 2),
        "a joiner got a short step 2"
    );
    close_all(vec![loader]).await?;
    let mut figures = Figures::new();
    figures.insert("doc_mb", state_bytes as f64 / MB);
    figures.insert("all_synced_ms", all_synced.as_secs_f64() * 1000.0);
    figures.insert("slowest_ms", slowest.as_secs_f64() * 1000.0);
    figures.insert("received_ms", last_received.as_secs_f64() * 1000.0);
    figures.insert("server_cpu_s", cpu.as_secs_f64());
    figures.insert("rss_before_mb", rss_before as f64 / MB);
    figures.insert("peak_rss_mb", peak as f64 / MB);
    if server.is_cluster() {
        add_doc_opens(server, &mut figures);
    }
    Ok(figures)
}

/// From the nodes' logs: how many times the node that decoded the doc most often did (the
/// target is once per node), on how many nodes, and the longest load.
fn add_doc_opens(server: &Server, figures: &mut Figures) {
    let per_node = server.node_log_lines("doc opened");
    let load_ms = |line: &str| -> Option<f64> {
        let rest = &line[line.find("load_ms=")? + "load_ms=".len()..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    eprintln!(
        "    doc opened, per node: {:?}",
        per_node.iter().map(Vec::len).collect::<Vec<_>>()
    );
    figures.insert(
        "doc_opens_max_per_node",
        per_node.iter().map(Vec::len).max().unwrap_or(0) as f64,
    );
    figures.insert(
        "nodes_that_opened",
        per_node.iter().filter(|lines| !lines.is_empty()).count() as f64,
    );
    let longest = per_node
        .iter()
        .flatten()
        .filter_map(|line| load_ms(line))
        .fold(0.0f64, f64::max);
    figures.insert("longest_load_ms", longest);
}

/// Recovery: `n` peers of one doc spread over a cluster's nodes, the first (on node 1)
/// typing at 20 edits/s; after a second the last node is killed with SIGKILL. Each peer it held
/// sees its connection end and connects again, to the other nodes in turn (what a balancer
/// does); the figure is the time from the kill to each such peer's sync step 2 on its new
/// node. The writer types for another two seconds, and every peer's text must then agree.
pub async fn recovery(server: &mut Server, n: usize) -> Result<Figures> {
    ensure!(server.n_nodes() > 1, "recovery needs a cluster");
    let killed = server.n_nodes() - 1;
    let shared = Arc::new(Shared::default());
    let nodes = Placement::Spread.nodes(n, server.n_nodes());
    let peers = connect_peers_on(server, "recovery", &nodes, Apply::Immediate, &shared, 32).await?;
    let (affected, survivors): (Vec<_>, Vec<_>) = peers
        .into_iter()
        .zip(&nodes)
        .partition(|(_, node)| **node == killed);
    let survivors: Vec<PeerHandle> = survivors.into_iter().map(|(peer, _)| peer).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    drive_edits(&[&survivors[0]], 20.0, Duration::from_secs(1), 1).await;

    let killed_at = Instant::now();
    server.kill_node(killed).await?;
    let mut rejoins = FuturesUnordered::new();
    for (rejoin_idx, (peer, _)) in affected.into_iter().enumerate() {
        // What a y-websocket client does when its socket ends: connect again, at once (its
        // first reconnect has no back-off), through the balancer to a node that is up.
        let node = rejoin_idx % killed;
        let options = options_on(server, node, "recovery", Apply::Immediate);
        let shared = shared.clone();
        rejoins.push(async move {
            // The whole handle moves in: its command sender must outlive the task, or the task
            // may take the sender's end for a close and end without an error.
            let PeerHandle { commands, task, .. } = peer;
            let ended = task.await;
            drop(commands);
            ensure!(
                !matches!(ended, Ok(Ok(_))),
                "a peer of the killed node ended without an error"
            );
            let rejoined = peer::connect(options, shared).await?;
            Ok::<_, anyhow::Error>((killed_at.elapsed(), rejoined))
        });
    }
    let writer = [&survivors[0]];
    let typing = drive_edits(&writer, 20.0, Duration::from_secs(2), 1);
    let rejoined = async {
        let mut all = Vec::new();
        while let Some(done) = rejoins.next().await {
            all.push(done?);
        }
        Ok::<_, anyhow::Error>(all)
    };
    let (_, rejoined) = tokio::join!(typing, rejoined);
    let rejoined = rejoined?;
    // The writer's last edits reach everyone (the rejoined peers included) before the check.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut recovery = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("bounds");
    let mut peers = survivors;
    for (after, peer) in rejoined {
        recovery.saturating_record(after.as_micros().max(1) as u64);
        peers.push(peer);
    }
    let reports = close_all(peers).await?;
    check_converged(&reports)?;
    let mut figures = Figures::new();
    figures.insert("affected_peers", recovery.len() as f64);
    figures.insert(
        "resync_p50_ms",
        recovery.value_at_quantile(0.5) as f64 / 1000.0,
    );
    figures.insert(
        "resync_p99_ms",
        recovery.value_at_quantile(0.99) as f64 / 1000.0,
    );
    figures.insert("resync_max_ms", recovery.max() as f64 / 1000.0);
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::Placement;

    #[test]
    fn placements_put_the_writer_on_node_1_and_spread_the_rest() {
        assert_eq!(Placement::Same.nodes(4, 3), vec![0, 0, 0, 0]);
        assert_eq!(Placement::Cross.nodes(5, 3), vec![0, 1, 2, 1, 2]);
        assert_eq!(Placement::Spread.nodes(5, 3), vec![0, 1, 2, 0, 1]);
        // A single server is every node.
        assert_eq!(Placement::Cross.nodes(3, 1), vec![0, 0, 0]);
        assert_eq!(Placement::Spread.nodes(3, 1), vec![0, 0, 0]);
    }
}
