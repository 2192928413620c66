//! Real Redis and Postgres servers for the cluster tests, started by the test itself on free
//! loopback ports in temporary directories, and stopped by PID when dropped.
//!
//! Redis runs with the persistence cluster mode demands (`appendonly yes`, `appendfsync always`).
//! Postgres 15 comes from `/usr/lib/postgresql/15/bin`; `initdb` refuses to run as root, so as
//! root (CI) both `initdb` and `pg_ctl` run as the `postgres` user, in a directory it owns.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian's Postgres 15 binaries are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
/// How long an engine may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A free loopback port (bound, then released for the engine to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "{what} did not start within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `redis-server` of our own.
pub struct Redis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Redis {
    /// Starts one with `appendonly yes` and `appendfsync always`.
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts one with extra `--name value` settings (they override the persistence ones).
    pub fn start_with(extra: &[&str]) -> Redis {
        let mut redis = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        self.child = Some(child);
        let port = self.port;
        wait_for("redis-server", || ping(port));
    }

    /// The URL a node is given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills it with SIGKILL (what survives is what its append-only file holds).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (replaying its append-only file).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs `redis-cli` against it and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// A Postgres 15 cluster of our own, with an empty database `tandem`.
pub struct Postgres {
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: tempfile::TempDir,
    data: PathBuf,
    stopped: bool,
}

fn as_postgres(program: &str) -> Command {
    let path = Path::new(PG_BIN).join(program);
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Postgres {
    /// Runs `initdb` and `pg_ctl start` in a fresh directory, then creates the database.
    pub fn start() -> Postgres {
        assert!(
            Path::new(PG_BIN).join("initdb").exists(),
            "Postgres 15 is required at {PG_BIN} (apt-get install -y postgresql)"
        );
        let dir = tempfile::Builder::new()
            .prefix("tandem-pg")
            .tempdir()
            .expect("temp dir");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of the Postgres directory failed");
        }
        let data = dir.path().join("data");
        let port = free_port();
        let status = as_postgres("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed");
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            dir.path().display()
        );
        let status = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-o", &options, "-w", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
        let postgres = Postgres {
            port,
            dir,
            data,
            stopped: false,
        };
        wait_for("postgres", || {
            Command::new(Path::new(PG_BIN).join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .arg("tandem")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|status| status.success())
                .unwrap_or(false)
        });
        postgres
    }

    /// The URL a node is given.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/tandem", self.port)
    }

    /// Runs one SQL statement through `psql` and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = Command::new(Path::new(PG_BIN).join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", "tandem", "-At", "-c", sql])
            .output()
            .expect("psql");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }

    /// Stops it (fast shutdown).
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Starts it again after [`Postgres::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let status = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .args(["-o", &options, "-w", "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("pg_ctl start");
        assert!(status.success(), "pg_ctl start failed");
        self.stopped = false;
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Where `moto_server` is looked for when it is not on `PATH` (pyenv's shims).
const MOTO_FALLBACK: &str = "/root/.pyenv/shims/moto_server";

/// An S3-compatible server of our own: `moto_server` (Python, `pip install 'moto[server]'`),
/// keeping its objects in memory, with one bucket created. Stopped by PID when dropped.
pub struct S3Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bucket created at start.
    pub bucket: String,
    _dir: tempfile::TempDir,
    child: Child,
}

impl S3Server {
    /// Starts `moto_server` in a temporary directory and creates `bucket`.
    pub fn start(bucket: &str) -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let program = if Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            "moto_server"
        } else {
            MOTO_FALLBACK
        };
        let child = Command::new(program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (python3 -m pip install 'moto[server]')");
        let server = S3Server {
            port,
            bucket: bucket.to_owned(),
            _dir: dir,
            child,
        };
        wait_for("moto_server", || {
            http(port, "GET", "/").is_some_and(|(status, _)| status == 200)
        });
        let (status, body) = http(port, "PUT", &format!("/{bucket}")).expect("create bucket");
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
        server
    }

    /// The endpoint a client is given.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The settings a node needs over its environment (`object_store`'s `AmazonS3ConfigKey`
    /// names): this endpoint over plain http, a region and moto's dummy credentials.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", self.endpoint()),
            ("aws_allow_http", "true".to_owned()),
            ("aws_region", "us-east-1".to_owned()),
            ("aws_access_key_id", "testing".to_owned()),
            ("aws_secret_access_key", "testing".to_owned()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect()
    }

    /// The keys of every object in the bucket under `prefix`, sorted (S3's `ListObjectsV2`
    /// over HTTP, read from its XML).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!("/{}?list-type=2&prefix={prefix}", self.bucket);
            if let Some(token) = &token {
                path.push_str(&format!("&continuation-token={token}"));
            }
            let (status, body) = http(self.port, "GET", &path).expect("list objects");
            assert_eq!(status, 200, "listing {prefix}: {body}");
            keys.extend(xml_values(&body, "Key"));
            token = xml_values(&body, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none() {
                break;
            }
        }
        keys.sort();
        keys
    }
}

impl S3Server {
    /// Stores an empty object at `key` (as another writer, or a crash, would leave one).
    pub fn put_empty(&self, key: &str) {
        let (status, body) =
            http(self.port, "PUT", &format!("/{}/{key}", self.bucket)).expect("put object");
        assert_eq!(status, 200, "storing {key}: {body}");
    }

    /// Kills it (SIGKILL): requests to it fail from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The texts of every `<tag>…</tag>` in `xml`.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(value, _)| value.to_owned()))
        .collect()
}

/// One HTTP/1.1 request without a body to 127.0.0.1:`port`: the status and body, or `None` if
/// nothing answered.
fn http(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
