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
            other => bail!("unknown target {other:?}"),
        })
    }

    /// Whether a doc outlives its last connection (so a doc can be loaded cold).
    pub fn persists(self) -> bool {
        matches!(self, Target::Tandem { .. } | Target::YSweet)
    }

    /// Whether this is one of the Tandem builds.
    pub fn is_tandem(self) -> bool {
        matches!(self, Target::Tandem { .. })
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
            Target::Relay => self.relay.exists(),
            Target::YWebsocket | Target::Hocuspocus => self.peers.join("node_modules").exists(),
            Target::YSweet => self.y_sweet().exists(),
        }
    }
}

/// A running server, killed when dropped.
pub struct Server {
    pub target: Target,
    pub addr: SocketAddr,
    child: Child,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start(target: Target, paths: &Paths) -> Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut command = match target {
            Target::Tandem { fsync, build } => {
                // Both builds get exactly the same arguments, `LOADGEN_TANDEM_ARGS` included.
                let binary = paths
                    .tandem_of(build)
                    .with_context(|| format!("{}: no binary configured", target.name()))?;
                let mut command = Command::new(binary);
                command
                    .arg("serve")
                    .args(["--port", "0", "--log", "warn", "--data-dir"])
                    .arg(dir.path())
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
        let addr = match target {
            Target::YSweet => {
                // y-sweet prints no machine-readable line; wait for its port.
                let port = command_port(&command)?;
                let addr: SocketAddr = ([127, 0, 0, 1], port).into();
                wait_for_port(addr).await?;
                addr
            }
            _ => {
                let stdout = child.stdout.take().context("stdout")?;
                let mut lines = BufReader::new(stdout).lines();
                let line = tokio::time::timeout(Duration::from_secs(30), async {
                    while let Some(line) = lines.next_line().await? {
                        if line.contains("http://") {
                            return Ok::<_, anyhow::Error>(line);
                        }
                    }
                    bail!("{} exited before listening", target.name())
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
                addr.parse().with_context(|| format!("address {addr:?}"))?
            }
        };
        Ok(Server {
            target,
            addr,
            child,
            pid,
            _dir: dir,
        })
    }

    /// The WebSocket URL of `doc`.
    pub fn ws_url(&self, doc: &str) -> String {
        match self.target {
            Target::YSweet => format!("ws://{}/d/{doc}/ws/{doc}", self.addr),
            // Hocuspocus takes the doc name from every message, not the path.
            Target::Hocuspocus => format!("ws://{}/", self.addr),
            Target::Tandem { .. } => format!("ws://{}/ws/{doc}", self.addr),
            _ => format!("ws://{}/{doc}", self.addr),
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

    /// User + system CPU time of the server process so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid).unwrap_or_default()
    }

    /// Resident set size now, in bytes.
    pub fn rss(&self) -> u64 {
        status_kib(self.pid, "VmRSS:").unwrap_or(0) * 1024
    }

    /// Anonymous resident memory now (heap, stacks), in bytes: the resident set without the
    /// pages of the executable and other mapped files, which the kernel shares and can drop.
    pub fn rss_anon(&self) -> u64 {
        status_kib(self.pid, "RssAnon:").unwrap_or(0) * 1024
    }

    /// With `$LOADGEN_MEMORY_DUMPS` set to a directory, copies the server's
    /// `/proc/<pid>/smaps` and `status` there as `<target>-<pid>-<label>.smaps` and `.status`,
    /// so what stays resident between two readings can be told apart mapping by mapping (heap
    /// arenas, thread stacks, the executable's pages). Does nothing otherwise.
    pub fn dump_memory(&self, label: &str) {
        let Some(dir) = std::env::var_os("LOADGEN_MEMORY_DUMPS").map(PathBuf::from) else {
            return;
        };
        let stem = format!("{}-{}-{label}", self.target.name(), self.pid);
        for file in ["smaps", "status"] {
            let from = format!("/proc/{}/{file}", self.pid);
            if let Err(error) = std::fs::copy(&from, dir.join(format!("{stem}.{file}"))) {
                eprintln!("    copying {from}: {error}");
            }
        }
    }

    /// Peak resident set size since start (or the last `reset_peak`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        status_kib(self.pid, "VmHWM:").unwrap_or(0) * 1024
    }

    /// Starts a new peak-RSS window (Linux `clear_refs` 5).
    pub fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// User + system CPU time of the load generator itself so far (its peers, not the server).
pub fn own_cpu() -> Duration {
    cpu_time(std::process::id()).unwrap_or_default()
}

fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(
        ticks * 1000 / clock_ticks_per_second(),
    ))
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
