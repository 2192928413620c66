//! WebDAV against Tandem's own HTTP API and against `rclone serve webdav`, on loopback, in one
//! interleaved run (issue 21's performance targets).
//!
//! Three operations, each timed end to end with `curl` (the same client for every server, so its
//! own cost cancels out of the ratios) and with the server's CPU time read from `/proc`:
//!
//! - listing a folder of 10,000 files: `PROPFIND` with `Depth: 1` on `/dav/big/` against
//!   `GET /api/files` (Tandem's listing) and against `PROPFIND` on rclone's copy of the folder;
//! - uploading a 1 GiB file: `PUT /dav/...` against `PUT /api/files/...` and rclone's `PUT`;
//! - downloading it: `GET` through each of the three.
//!
//! Tandem runs exactly as README starts it (`tandem serve`, loopback, so no authentication),
//! rclone as `rclone serve webdav DIR` with its defaults; each in a fresh process and temporary
//! directory. The 10,000 small files are uploaded to Tandem through its HTTP API before the run
//! and written straight into rclone's directory.
//!
//! Usage: `davbench [--reps 3] [--files 10000] [--big-mib 1024] [--root .]`; prints a Markdown
//! table of medians, the ratios, and whether each target was met (`/dav/` within 1.2× of the
//! HTTP API, and faster than rclone).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use tandem_benches::loadgen::target::cpu_time;

#[derive(Parser, Debug)]
#[command(about = "WebDAV: Tandem's /dav/ against its HTTP API and rclone serve webdav")]
struct Args {
    /// Repetitions of each operation on each server (medians are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Files in the listed folder.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Size of the big file, in MiB.
    #[arg(long, default_value_t = 1024)]
    big_mib: u64,
    /// The workspace root (the server binary in target/release).
    #[arg(long, default_value = ".")]
    root: PathBuf,
}

/// A server process, killed by its PID when dropped.
struct Proc {
    child: Child,
    port: u16,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn cpu(&self) -> Duration {
        cpu_time(self.pid()).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} after 30 s")
}

fn start_tandem(root: &Path, data: &Path) -> Result<Proc> {
    let port = free_port()?;
    let binary = root.join("target/release/tandem");
    let child = Command::new(&binary)
        .args(["serve", "--port", &port.to_string(), "--data-dir"])
        .arg(data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let proc = Proc { child, port };
    wait_listening(port)?;
    Ok(proc)
}

fn start_rclone(dir: &Path) -> Result<Proc> {
    let port = free_port()?;
    let child = Command::new("rclone")
        .args(["serve", "webdav"])
        .arg(dir)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting rclone serve webdav")?;
    let proc = Proc { child, port };
    wait_listening(port)?;
    Ok(proc)
}

/// Runs curl with `args`; fails unless it exits 0 and the status is `expect`.
fn curl(args: &[&str], expect: &[u16]) -> Result<()> {
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .context("running curl")?;
    let status: u16 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    if !output.status.success() || !expect.contains(&status) {
        bail!(
            "curl {args:?}: status {status}, {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// One timed operation: wall time and the server's CPU time.
fn timed(server: &Proc, run: impl FnOnce() -> Result<()>) -> Result<(Duration, Duration)> {
    let cpu = server.cpu();
    let started = Instant::now();
    run()?;
    Ok((started.elapsed(), server.cpu().saturating_sub(cpu)))
}

/// Uploads `n` small files into `big/` through Tandem's HTTP API, eight at a time.
fn fill_tandem(tandem: &Proc, small: &Path, n: usize) -> Result<()> {
    let mut config = tempfile::NamedTempFile::new()?;
    for i in 0..n {
        writeln!(
            config,
            "upload-file = \"{}\"\nurl = \"http://127.0.0.1:{}/api/files/big/f{i:05}.txt\"\noutput = \"/dev/null\"",
            small.display(),
            tandem.port
        )?;
    }
    config.flush()?;
    let status = Command::new("curl")
        .args([
            "-sS",
            "--no-progress-meter",
            "--fail",
            "--parallel",
            "--parallel-max",
            "8",
            "-K",
        ])
        .arg(config.path())
        .status()?;
    if !status.success() {
        bail!("uploading the small files failed");
    }
    Ok(())
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

#[derive(Default)]
struct Samples {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

impl Samples {
    fn push(&mut self, (wall, cpu): (Duration, Duration)) {
        self.wall.push(wall);
        self.cpu.push(cpu);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let work = tempfile::tempdir()?;
    let small = work.path().join("small.txt");
    std::fs::write(&small, b"a small file of a big folder\n")?;
    let big = work.path().join("big.bin");
    {
        // Incompressible bytes, written once.
        let mut file = std::io::BufWriter::new(std::fs::File::create(&big)?);
        let mut block = vec![0u8; 1 << 20];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..args.big_mib {
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
            }
            file.write_all(&block)?;
        }
        file.flush()?;
    }
    let big_path = big.display().to_string();

    let tandem_dir = work.path().join("tandem");
    let rclone_dir = work.path().join("rclone");
    std::fs::create_dir_all(rclone_dir.join("big"))?;
    for i in 0..args.files {
        std::fs::copy(&small, rclone_dir.join(format!("big/f{i:05}.txt")))?;
    }
    let tandem = start_tandem(&args.root, &tandem_dir)?;
    let rclone = start_rclone(&rclone_dir)?;
    eprintln!("uploading {} files to Tandem", args.files);
    fill_tandem(&tandem, &small, args.files)?;

    let t = tandem.port;
    let r = rclone.port;
    let (mut list_dav, mut list_http, mut list_rclone) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut put_dav, mut put_http, mut put_rclone) =
        (Samples::default(), Samples::default(), Samples::default());
    let (mut get_dav, mut get_http, mut get_rclone) =
        (Samples::default(), Samples::default(), Samples::default());
    let propfind = |port: u16, path: &str| -> Result<()> {
        curl(
            &[
                "-X",
                "PROPFIND",
                "-H",
                "Depth: 1",
                &format!("http://127.0.0.1:{port}{path}"),
            ],
            &[207],
        )
    };
    for rep in 0..args.reps {
        eprintln!("rep {}/{}", rep + 1, args.reps);
        list_dav.push(timed(&tandem, || propfind(t, "/dav/big/"))?);
        list_http.push(timed(&tandem, || {
            curl(&[&format!("http://127.0.0.1:{t}/api/files")], &[200])
        })?);
        list_rclone.push(timed(&rclone, || propfind(r, "/big/"))?);

        let name = format!("build-{rep}.bin");
        put_dav.push(timed(&tandem, || {
            curl(
                &[
                    "-T",
                    &big_path,
                    &format!("http://127.0.0.1:{t}/dav/dav-{name}"),
                ],
                &[201, 204],
            )
        })?);
        put_http.push(timed(&tandem, || {
            curl(
                &[
                    "-T",
                    &big_path,
                    &format!("http://127.0.0.1:{t}/api/files/http-{name}"),
                ],
                &[201],
            )
        })?);
        put_rclone.push(timed(&rclone, || {
            curl(
                &["-T", &big_path, &format!("http://127.0.0.1:{r}/{name}")],
                &[201, 204],
            )
        })?);

        get_dav.push(timed(&tandem, || {
            curl(&[&format!("http://127.0.0.1:{t}/dav/dav-{name}")], &[200])
        })?);
        get_http.push(timed(&tandem, || {
            curl(
                &[&format!("http://127.0.0.1:{t}/api/files/http-{name}")],
                &[200],
            )
        })?);
        get_rclone.push(timed(&rclone, || {
            curl(&[&format!("http://127.0.0.1:{r}/{name}")], &[200])
        })?);
        // Keep the disk from filling over the repetitions.
        curl(
            &[
                "-X",
                "DELETE",
                &format!("http://127.0.0.1:{t}/dav/dav-{name}"),
            ],
            &[200, 204],
        )?;
        curl(
            &[
                "-X",
                "DELETE",
                &format!("http://127.0.0.1:{t}/api/files/http-{name}"),
            ],
            &[200, 204],
        )?;
        std::fs::remove_file(rclone_dir.join(&name))?;
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\n| operation | /dav/ ms (server CPU ms) | HTTP API ms (CPU) | rclone serve webdav ms (CPU) | /dav/ ÷ HTTP API | /dav/ ÷ rclone | target |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    let rows = [
        (
            format!("PROPFIND depth 1, {} files", args.files),
            &list_dav,
            &list_http,
            &list_rclone,
        ),
        (
            format!("PUT {} MiB", args.big_mib),
            &put_dav,
            &put_http,
            &put_rclone,
        ),
        (
            format!("GET {} MiB", args.big_mib),
            &get_dav,
            &get_http,
            &get_rclone,
        ),
    ];
    for (label, dav, http, rclone) in rows {
        let (dav_wall, http_wall, rclone_wall) = (
            median(dav.wall.clone()),
            median(http.wall.clone()),
            median(rclone.wall.clone()),
        );
        let vs_http = ms(dav_wall) / ms(http_wall);
        let vs_rclone = ms(dav_wall) / ms(rclone_wall);
        let met = if vs_http <= 1.2 && vs_rclone < 1.0 {
            "met"
        } else {
            "missed"
        };
        println!(
            "| {label} | {:.1} ({:.0}) | {:.1} ({:.0}) | {:.1} ({:.0}) | {vs_http:.2} | {vs_rclone:.2} | {met} |",
            ms(dav_wall),
            ms(median(dav.cpu.clone())),
            ms(http_wall),
            ms(median(http.cpu.clone())),
            ms(rclone_wall),
            ms(median(rclone.cpu.clone())),
        );
    }
    Ok(())
}
