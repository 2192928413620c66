//! The servers under test: how to start each on loopback, reach a doc, and read its CPU time
//! and memory from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// One server implementation, with the settings it runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Our server; `fsync` is `--fsync` (durable before broadcast either way), `build` which
    /// binary: the one under test, or a second one raced against it with the same flags.
    Tandem { fsync: bool, build: Build },
    /// `relay`: forwards frames between the peers of a path, no CRDT work. The floor.
    Relay,
    /// `@y/websocket-server` 0.1.1 (Node), no persistence.
    YWebsocket,
    /// `@hocuspocus/server` 4 (Node), no extensions.
    Hocuspocus,
    /// y-sweet (Rust), with a directory store.
    YSweet,
    /// Three Tandem nodes (the build under test, fsync on, the flags `tandem` gets) in cluster
    /// mode on one Redis (`appendonly yes`, `appendfsync always`) and one Postgres 15, all on
    /// this machine and started afresh for every run.
    TandemCluster,
    /// `tandem` (the build under test, the same flags), its peers speaking the Hocuspocus
    /// protocol on `/ws` (the doc name in every message, an auth message first) instead of
    /// y-websocket on `/ws/{doc}`: the cost of the second protocol on the same server.
    TandemHocuspocus,
    /// `tandem` with `--metrics off`: the cost of collecting metrics.
    TandemNoMetrics,
}

/// Which Tandem binary a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// `target/release/tandem` (or `$LOADGEN_TANDEM`): the build under test.
    Current,
    /// `$LOADGEN_TANDEM_BEFORE`: an earlier build, so a change is measured before and after in
    /// one interleaved run rather than in two runs an hour apart on a VM whose figures drift.
    Before,
}

impl Target {
    /// Tandem as shipped: fsync on, the build under test.
    pub const TANDEM: Target = Target::Tandem {
        fsync: true,
        build: Build::Current,
    };

    pub fn name(self) -> &'static str {
        match self {
            Target::Tandem {
                fsync: true,
                build: Build::Current,
            } => "tandem",
            Target::Tandem {
                fsync: false,
                build: Build::Current,
            } => "tandem-nofsync",
            Target::Tandem {
                fsync: true,
                build: Build::Before,
            } => "tandem-before",
            Target::Tandem {
                fsync: false,
                build: Build::Before,
            } => "tandem-before-nofsync",
            Target::Relay => "relay",
            Target::YWebsocket => "y-websocket",
            Target::Hocuspocus => "hocuspocus",
            Target::YSweet => "y-sweet",
            Target::TandemCluster => "tandem-cluster",
            Target::TandemHocuspocus => "tandem-hocuspocus",
            Target::TandemNoMetrics => "tandem-nometrics",
        }
    }

    pub fn parse(name: &str) -> Result<Target> {
        Ok(match name {
            "tandem" => Target::TANDEM,
            "tandem-nofsync" => Target::Tandem {
                fsync: false,
                build: Build::Current,
            },
            "tandem-before" => Target::Tandem {
                fsync: true,
                build: Build::Before,
            },
            "tandem-before-nofsync" => Target::Tandem {
                fsync: false,
                build: Build::Before,
            },
            "relay" => Target::Relay,
            "y-websocket" | "ywebsocket" => Target::YWebsocket,
            "hocuspocus" => Target::Hocuspocus,
            "y-sweet" | "ysweet" => Target::YSweet,
            "tandem-cluster" => Target::TandemCluster,
            "tandem-hocuspocus" => Target::TandemHocuspocus,
            "tandem-nometrics" => Target::TandemNoMetrics,
            other => bail!("unknown target {other:?}"),
        })
    }

    /// Whether a doc outlives its last connection (so a doc can be loaded cold).
    pub fn persists(self) -> bool {
        matches!(
            self,
            Target::Tandem { .. }
                | Target::TandemCluster
                | Target::TandemHocuspocus
                | Target::TandemNoMetrics
                | Target::YSweet
        )
    }

    /// Whether this is one of the Tandem builds.
    pub fn is_tandem(self) -> bool {
        matches!(
            self,
            Target::Tandem { .. }
                | Target::TandemCluster
                | Target::TandemHocuspocus
                | Target::TandemNoMetrics
        )
    }

    /// Whether its peers speak the Hocuspocus protocol (the doc name in every message).
    pub fn speaks_hocuspocus(self) -> bool {
        matches!(self, Target::Hocuspocus | Target::TandemHocuspocus)
    }
}

/// Where the binaries and scripts live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub tandem: PathBuf,
    /// The `tandem-before` binary, when `$LOADGEN_TANDEM_BEFORE` names one.
    pub tandem_before: Option<PathBuf>,
    pub relay: PathBuf,
    pub peers: PathBuf,
    pub node: PathBuf,
}

impl Paths {
    /// Defaults relative to the workspace root: release builds (under `$CARGO_TARGET_DIR` when
    /// it is set, as cargo does, so two builds can be raced) and `benches/peers`.
    /// `$LOADGEN_TANDEM` names another `tandem` binary to test, `$LOADGEN_TANDEM_BEFORE` the
    /// binary of the `tandem-before` target.
    pub fn from_root(root: &Path) -> Paths {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        Paths {
            tandem: std::env::var_os("LOADGEN_TANDEM")
                .map(PathBuf::from)
                .unwrap_or_else(|| target.join("release/tandem")),
            tandem_before: std::env::var_os("LOADGEN_TANDEM_BEFORE").map(PathBuf::from),
            relay: target.join("release/relay"),
            peers: root.join("benches/peers"),
            node: PathBuf::from(std::env::var("NODE").unwrap_or_else(|_| "node".into())),
        }
    }

    /// The binary of one Tandem build, if it is configured.
    pub fn tandem_of(&self, build: Build) -> Option<&Path> {
        match build {
            Build::Current => Some(&self.tandem),
            Build::Before => self.tandem_before.as_deref(),
        }
    }

    fn y_sweet(&self) -> PathBuf {
        self.peers.join(".cargo/bin/y-sweet")
    }

    /// The targets whose binaries or scripts are present.
    pub fn available(&self, target: Target) -> bool {
        match target {
            Target::Tandem { build, .. } => self.tandem_of(build).is_some_and(|path| path.exists()),
            Target::TandemHocuspocus | Target::TandemNoMetrics => self.tandem.exists(),
            Target::Relay => self.relay.exists(),
            Target::YWebsocket | Target::Hocuspocus => self.peers.join("node_modules").exists(),
            Target::YSweet => self.y_sweet().exists(),
            Target::TandemCluster => {
                self.tandem.exists()
                    && Path::new(tandem_tests::engines::PG_BIN)
                        .join("initdb")
                        .exists()
                    && std::process::Command::new("redis-server")
                        .arg("--version")
                        .stdout(Stdio::null())
                        .status()
                        .is_ok_and(|status| status.success())
            }
        }
    }
}

/// A running server, killed when dropped: one process, or the three nodes of a cluster with
/// their Redis and Postgres.
pub struct Server {
    pub target: Target,
    /// The address of the first (or only) process.
    pub addr: SocketAddr,
    /// The server's processes: one, or a cluster's nodes in order (node 1 first).
    processes: Vec<Process>,
    _dir: tempfile::TempDir,
    /// A cluster's Redis and Postgres, stopped after its nodes.
    engines: Option<Engines>,
}

/// One server process.
struct Process {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// Where its stderr (its log) goes, for a cluster node.
    log: Option<PathBuf>,
    /// False once [`Server::kill_node`] killed it: its CPU time and memory are gone with it.
    alive: bool,
}

/// The shared engines of a cluster, started afresh for every run (a fresh server per run, as
/// for every other target): a few seconds of `initdb` per run, against state left over by a
/// previous run (streams, snapshots, compaction leases) that would change what a load costs.
struct Engines {
    redis: tandem_tests::engines::Redis,
    postgres: tandem_tests::engines::Postgres,
    redis_pid: u32,
    /// The postmaster; its backends are its children.
    postmaster_pid: u32,
    _blobs: tempfile::TempDir,
}

/// How many nodes a cluster target runs.
pub const CLUSTER_NODES: usize = 3;

/// The log filter of cluster nodes: the `tandem` target's `warn`, plus the doc actor's info
/// lines (a handful per doc: opened, unloaded, resynced), so a run can count how many times
/// each node decoded a doc ("doc opened").
const CLUSTER_LOG_FILTER: &str = "warn,tandem_hub::doc_actor=info";

impl Server {
    pub async fn start(target: Target, paths: &Paths) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        if target == Target::TandemCluster {
            return Server::start_cluster(paths, dir).await;
        }
        let mut command = match target {
            Target::Tandem { fsync, build } => {
                // Both builds get exactly the same arguments, `LOADGEN_TANDEM_ARGS` included.
                let binary = paths
                    .tandem_of(build)
                    .with_context(|| format!("{}: no binary configured", target.name()))?;
                tandem_command(binary, dir.path(), fsync, "warn")
            }
            Target::TandemHocuspocus => tandem_command(&paths.tandem, dir.path(), true, "warn"),
            Target::TandemNoMetrics => {
                let mut command = tandem_command(&paths.tandem, dir.path(), true, "warn");
                command.args(["--metrics", "off"]);
                command
            }
            Target::Relay => {
                let mut command = Command::new(&paths.relay);
                command.args(["--port", "0"]);
                command
            }
            Target::YWebsocket => {
                let mut command = Command::new(&paths.node);
                command.arg(paths.peers.join("ywebsocket.mjs")).arg("0");
                command
            }
            Target::Hocuspocus => {
                let mut command = Command::new(&paths.node);
                command.arg(paths.peers.join("hocuspocus.mjs")).arg("0");
                command
            }
            Target::YSweet => {
                let port = free_port()?;
                let mut command = Command::new(paths.y_sweet());
                command.arg("serve").arg(dir.path()).args([
                    "--host",
                    "127.0.0.1",
                    "--port",
                    &port.to_string(),
                ]);
                command.env("RUST_LOG", "warn");
                command
            }
            Target::TandemCluster => unreachable!("started above"),
        };
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", target.name()))?;
        let pid = child.id().context("child pid")?;
        pin_to_server_cpus(pid);
        let addr = match target {
            Target::YSweet => {
                // y-sweet prints no machine-readable line; wait for its port.
                let port = command_port(&command)?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(addr).await?;
                addr
            }
            _ => listening_addr(&mut child, target.name()).await?,
        };
        Ok(Server {
            target,
            addr,
            processes: vec![Process {
                child,
                pid,
                addr,
                log: None,
                alive: true,
            }],
            _dir: dir,
            engines: None,
        })
    }

    /// Redis and Postgres, then three nodes of the build under test with the flags `tandem`
    /// gets and the cluster's, each with a data directory and a log file of its own.
    async fn start_cluster(paths: &Paths, dir: tempfile::TempDir) -> Result<Server> {
        let engines = tokio::task::spawn_blocking(Engines::start).await??;
        let mut processes = Vec::with_capacity(CLUSTER_NODES);
        for node in 0..CLUSTER_NODES {
            let data = dir.path().join(format!("node-{}", node + 1));
            std::fs::create_dir(&data)?;
            let log = dir.path().join(format!("node-{}.log", node + 1));
            let mut command = tandem_command(&paths.tandem, &data, true, CLUSTER_LOG_FILTER);
            command
                .arg("--redis-url")
                .arg(engines.redis.url())
                .arg("--postgres-url")
                .arg(engines.postgres.url())
                .arg("--blob-dir")
                .arg(engines._blobs.path())
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log)?)
                .kill_on_drop(true);
            let mut child = command.spawn().context("starting a cluster node")?;
            let pid = child.id().context("child pid")?;
            pin_to_server_cpus(pid);
            let addr = match listening_addr(&mut child, "tandem-cluster node").await {
                Ok(addr) => addr,
                Err(error) => {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    return Err(error.context(format!(
                        "node {} log: {}",
                        node + 1,
                        text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                    )));
                }
            };
            processes.push(Process {
                child,
                pid,
                addr,
                log: Some(log),
                alive: true,
            });
        }
        Ok(Server {
            target: Target::TandemCluster,
            addr: processes[0].addr,
            processes,
            _dir: dir,
            engines: Some(engines),
        })
    }

    /// How many nodes serve peers: 3 for a cluster, 1 otherwise.
    pub fn n_nodes(&self) -> usize {
        self.processes.len()
    }

    /// Whether this is a cluster (with Redis and Postgres beside its nodes).
    pub fn is_cluster(&self) -> bool {
        self.engines.is_some()
    }

    /// The WebSocket URL of `doc`.
    pub fn ws_url(&self, doc: &str) -> String {
        self.ws_url_on(0, doc)
    }

    /// The WebSocket URL of `doc` on node `node` (counted from 0, taken modulo the number of
    /// nodes: a single server is every node).
    pub fn ws_url_on(&self, node: usize, doc: &str) -> String {
        let addr = self.processes[node % self.processes.len()].addr;
        match self.target {
            Target::YSweet => format!("ws://{addr}/d/{doc}/ws/{doc}"),
            // Hocuspocus takes the doc name from every message, not the path.
            Target::Hocuspocus => format!("ws://{addr}/"),
            Target::TandemHocuspocus => format!("ws://{addr}/ws"),
            Target::Tandem { .. } | Target::TandemCluster | Target::TandemNoMetrics => {
                format!("ws://{addr}/ws/{doc}")
            }
            _ => format!("ws://{addr}/{doc}"),
        }
    }

    /// Makes `doc` exist where a server needs that before a socket can open (y-sweet).
    pub async fn prepare_doc(&self, doc: &str) -> Result<()> {
        if self.target == Target::YSweet {
            let body = serde_json::json!({ "docId": doc }).to_string();
            let response = tandem_tests::http_request(
                self.addr,
                "POST",
                "/doc/new",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
            .await;
            if !(200..300).contains(&response.status) {
                bail!(
                    "y-sweet POST /doc/new answered {}: {}",
                    response.status,
                    response.text()
                );
            }
        }
        Ok(())
    }

    fn alive(&self) -> impl Iterator<Item = &Process> {
        self.processes.iter().filter(|process| process.alive)
    }

    /// User + system CPU time of the server so far: for a cluster, the sum over its live nodes
    /// (Redis and Postgres apart: [`Server::redis_cpu`], [`Server::postgres_cpu`]).
    pub fn cpu(&self) -> Duration {
        self.alive()
            .map(|process| cpu_time(process.pid).unwrap_or_default())
            .sum()
    }

    /// CPU time of each node so far (zero for a killed one).
    pub fn node_cpu(&self) -> Vec<Duration> {
        self.processes
            .iter()
            .map(|process| {
                if process.alive {
                    cpu_time(process.pid).unwrap_or_default()
                } else {
                    Duration::ZERO
                }
            })
            .collect()
    }

    /// A cluster's Redis: CPU time so far.
    pub fn redis_cpu(&self) -> Option<Duration> {
        let engines = self.engines.as_ref()?;
        cpu_time(engines.redis_pid)
    }

    /// A cluster's Postgres: CPU time so far of the postmaster and its backends, those that
    /// exited included (the postmaster reaped them: their time is in its children's fields).
    pub fn postgres_cpu(&self) -> Option<Duration> {
        let engines = self.engines.as_ref()?;
        Some(tree_cpu_time(engines.postmaster_pid))
    }

    /// A cluster's Redis: runs `redis-cli <args>` against it and returns the output.
    pub fn redis_cli(&self, args: &[&str]) -> Option<String> {
        Some(self.engines.as_ref()?.redis.cli(args))
    }

    /// Resident set size now, in bytes (summed over a cluster's nodes).
    pub fn rss(&self) -> u64 {
        self.alive()
            .map(|process| status_kib(process.pid, "VmRSS:").unwrap_or(0) * 1024)
            .sum()
    }

    /// Anonymous resident memory now (heap, stacks), in bytes: the resident set without the
    /// pages of the executable and other mapped files, which the kernel shares and can drop.
    pub fn rss_anon(&self) -> u64 {
        self.alive()
            .map(|process| status_kib(process.pid, "RssAnon:").unwrap_or(0) * 1024)
            .sum()
    }

    /// With `$LOADGEN_MEMORY_DUMPS` set to a directory, copies the server's
    /// `/proc/<pid>/smaps` and `status` there as `<target>-<pid>-<label>.smaps` and `.status`,
    /// so what stays resident between two readings can be told apart mapping by mapping (heap
    /// arenas, thread stacks, the executable's pages). Does nothing otherwise.
    pub fn dump_memory(&self, label: &str) {
        let Some(dir) = std::env::var_os("LOADGEN_MEMORY_DUMPS").map(PathBuf::from) else {
            return;
        };
        for process in self.alive() {
            let stem = format!("{}-{}-{label}", self.target.name(), process.pid);
            for file in ["smaps", "status"] {
                let from = format!("/proc/{}/{file}", process.pid);
                if let Err(error) = std::fs::copy(&from, dir.join(format!("{stem}.{file}"))) {
                    eprintln!("    copying {from}: {error}");
                }
            }
        }
    }

    /// Peak resident set size since start (or the last `reset_peak`), in bytes (summed over a
    /// cluster's nodes: an upper bound of their peak together).
    pub fn peak_rss(&self) -> u64 {
        self.alive()
            .map(|process| status_kib(process.pid, "VmHWM:").unwrap_or(0) * 1024)
            .sum()
    }

    /// Starts a new peak-RSS window (Linux `clear_refs` 5).
    pub fn reset_peak(&self) {
        for process in self.alive() {
            let _ = std::fs::write(format!("/proc/{}/clear_refs", process.pid), "5");
        }
    }

    /// Kills node `node` with SIGKILL, by its PID, and waits for it to be gone.
    pub async fn kill_node(&mut self, node: usize) -> Result<()> {
        let process = self.processes.get_mut(node).context("no such node")?;
        process.child.start_kill()?;
        process.alive = false;
        tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await??;
        Ok(())
    }

    /// For each node, the lines of its log that contain `needle` (empty for a server whose log
    /// is not kept).
    pub fn node_log_lines(&self, needle: &str) -> Vec<Vec<String>> {
        self.processes
            .iter()
            .map(|process| {
                process
                    .log
                    .as_ref()
                    .and_then(|log| std::fs::read_to_string(log).ok())
                    .map(|text| {
                        text.lines()
                            .filter(|line| line.contains(needle))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Kills every process by its PID; then, for a cluster, Redis (SIGKILL by its PID) and
    /// Postgres (`pg_ctl stop -m immediate`, which signals the postmaster's PID). A node's
    /// warnings and errors are printed first (a few), since its log goes to a file; with
    /// `$LOADGEN_NODE_LOGS` set to a directory, each node's log is copied there as
    /// `node-<n>-<pid>.log`.
    pub async fn stop(mut self) {
        for process in &mut self.processes {
            if process.alive {
                let _ = process.child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await;
            }
        }
        if let Some(dir) = std::env::var_os("LOADGEN_NODE_LOGS").map(PathBuf::from) {
            for (node, process) in self.processes.iter().enumerate() {
                if let Some(log) = &process.log {
                    let to = dir.join(format!("node-{}-{}.log", node + 1, process.pid));
                    if let Err(error) = std::fs::copy(log, &to) {
                        eprintln!("    copying {}: {error}", log.display());
                    }
                }
            }
        }
        for (node, lines) in self.node_log_lines("").iter().enumerate() {
            let problems: Vec<&String> = lines
                .iter()
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                // Every node says so at start-up: the benches serve no web client.
                .filter(|line| !line.contains("no web client"))
                .collect();
            if !problems.is_empty() {
                eprintln!(
                    "    node {}: {} warnings/errors, the first: {}",
                    node + 1,
                    problems.len(),
                    problems
                        .iter()
                        .take(3)
                        .map(|line| line.as_str())
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
        }
        if let Some(engines) = self.engines.take() {
            let _ = tokio::task::spawn_blocking(move || drop(engines)).await;
        }
    }
}

impl Engines {
    fn start() -> Result<Engines> {
        let redis = tandem_tests::engines::Redis::start();
        let postgres = tandem_tests::engines::Postgres::start();
        let info = redis.cli(&["info", "server"]);
        let redis_pid = info
            .lines()
            .find_map(|line| line.trim().strip_prefix("process_id:"))
            .context("process_id in redis INFO")?
            .parse()?;
        // The checkpointer lives as long as the postmaster, whose child it is.
        let checkpointer: u32 = postgres
            .psql("select pid from pg_stat_activity where backend_type = 'checkpointer'")
            .parse()
            .context("the checkpointer's pid")?;
        let postmaster_pid = parent_pid(checkpointer).context("the postmaster's pid")?;
        pin_to_server_cpus(redis_pid);
        pin_to_server_cpus(postmaster_pid);
        Ok(Engines {
            redis,
            postgres,
            redis_pid,
            postmaster_pid,
            _blobs: tempfile::tempdir()?,
        })
    }
}

/// `tandem serve` with the flags every Tandem target gets.
fn tandem_command(binary: &Path, data: &Path, fsync: bool, log: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .args(["--port", "0", "--log", log, "--data-dir"])
        .arg(data)
        .args(["--fsync", if fsync { "true" } else { "false" }])
        // Load tests from one address: the per-connection and per-address limits
        // that protect a real deployment would trip on purpose here.
        .args(["--max-messages-per-second", "0"])
        .args(["--max-bytes-per-second", "0"])
        .args(["--max-awareness-per-second", "0"])
        .args(["--max-connections", "100000"])
        .args(["--max-connections-per-address", "100000"])
        .args(["--doc-unload-grace", "1s"])
        .args(
            std::env::var("LOADGEN_TANDEM_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        );
    command
}

/// Reads the child's stdout up to its "listening on http://…" line and returns the address;
/// keeps draining stdout afterwards.
async fn listening_addr(child: &mut Child, name: &str) -> Result<SocketAddr> {
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("http://") {
                return Ok::<_, anyhow::Error>(line);
            }
        }
        bail!("{name} exited before listening")
    })
    .await
    .context("server start timed out")??;
    // Keep draining stdout so a chatty server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let addr = line
        .rsplit("http://")
        .next()
        .and_then(|rest| rest.split(|c: char| c == '/' || c.is_whitespace()).next())
        .context("address in the listening line")?;
    addr.parse().with_context(|| format!("address {addr:?}"))
}

/// User + system CPU time of the load generator itself so far (its peers, not the server).
pub fn own_cpu() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

/// User + system CPU time of process `pid` so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(
        ticks * 1000 / clock_ticks_per_second(),
    ))
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (state is field 0).
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    // The state is a letter; the rest are numbers (read as 0 where one is negative).
    Some(
        rest.split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect(),
    )
}

/// With `LOADGEN_SERVER_CPUS` set (a `taskset` CPU list such as `1`), moves every thread of
/// `pid` and of its child processes onto those CPUs, so that the servers under test (a single
/// node; or three nodes, Redis and Postgres) get the same CPU budget whatever their number of
/// processes. Run the load generator itself under `taskset -c` on the other CPUs.
fn pin_to_server_cpus(pid: u32) {
    let Ok(cpus) = std::env::var("LOADGEN_SERVER_CPUS") else {
        return;
    };
    let mut pids = vec![pid];
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            if let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                && parent_pid(child) == Some(pid)
            {
                pids.push(child);
            }
        }
    }
    for pid in pids {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", &cpus, &pid.to_string()])
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(status) if status.success()) {
            eprintln!("warning: could not pin pid {pid} to CPUs {cpus}");
        }
    }
}

fn parent_pid(pid: u32) -> Option<u32> {
    u32::try_from(*stat_fields(pid)?.get(1)?).ok()
}

/// CPU time of `pid`, of its children that it has waited for (`cutime`, `cstime`), and of its
/// live children.
fn tree_cpu_time(pid: u32) -> Duration {
    let ticks_of = |fields: &[u64], n: usize| -> u64 { fields.iter().skip(11).take(n).sum() };
    let mut ticks = stat_fields(pid).map_or(0, |fields| ticks_of(&fields, 4));
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = stat_fields(child)
                && fields.get(1) == Some(&u64::from(pid))
            {
                ticks += ticks_of(&fields, 2);
            }
        }
    }
    Duration::from_millis(ticks * 1000 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> u64 {
    // USER_HZ is 100 on every Linux architecture we run on.
    100
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|line| line.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn command_port(command: &Command) -> Result<u16> {
    let args: Vec<_> = command.as_std().get_args().collect();
    let at = args
        .iter()
        .position(|arg| *arg == "--port")
        .context("--port")?;
    Ok(args[at + 1].to_string_lossy().parse()?)
}

async fn wait_for_port(addr: SocketAddr) -> Result<()> {
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on {addr} after 30 s")
}
