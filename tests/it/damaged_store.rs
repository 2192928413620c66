//! Damaged stores, black-box: the real `tandem` binary started on copies of one real data
//! directory (two docs and an uploaded file), each copy damaged in one way.
//!
//! Before format version 2 and the start-up checks, a zero-length or missing `tandem.redb`
//! beside the blobs started an empty server whose start-up cleanup deleted every blob; a few
//! flipped bytes in the middle of the file served wrong document content, silently; a zeroed page
//! panicked with a backtrace; and the readiness line was printed before the store was opened.
//! Now each damaged copy either refuses to start with one clear line (no panic message, no
//! backtrace, no readiness line), or starts and refuses exactly the damaged documents (close
//! 1011 "document damaged", HTTP 500 `doc_corrupt`) while the others serve correct content; no
//! blob is ever deleted and no wrong content is ever served.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tandem_tests::{Peer, TestServer, WAIT, http_request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Transact};

/// The two docs and their texts; each text is unique in the file, so a test can find the
/// records that hold it.
const ALPHA: (&str, &str) = ("team/alpha", "alpha-text-6c1f9d-alpha-text-6c1f9d");
const BETA: (&str, &str) = ("team/beta", "beta-text-0e7a42-beta-text-0e7a42");
/// The uploaded file: its path, its bytes (kept outside redb, in `blobs/`), and a content type
/// that only its file entry in redb holds.
const FILE_PATH: &str = "team/report.bin";
const FILE_BODY: &[u8] = b"report body: these bytes live in a blob file beside the database";
const FILE_TYPE: &str = "application/x-report-9b2e77";

/// What a damaged copy must do.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Exit without serving, with one `error:` line on stderr containing this text.
    Refuse(&'static str),
    /// Serve; these docs are refused as damaged, every other doc and the file serve correctly.
    Serve {
        damaged_docs: &'static [&'static str],
        file_damaged: bool,
    },
    /// Either refuse with a clear line or serve; whatever serves is correct, the rest refused.
    Either,
}

/// One way to damage a copy of the data directory.
struct Case {
    name: &'static str,
    damage: fn(&Path),
    expect: Expect,
}

fn db(dir: &Path) -> PathBuf {
    dir.join(tandem_server::DB_FILE_NAME)
}

/// Offsets of every occurrence of `needle` in `bytes`.
fn occurrences(bytes: &[u8], needle: &[u8]) -> Vec<usize> {
    bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, window)| *window == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Flips one bit in the middle of every occurrence of `needle` in the database file, as a
/// damaged disk would inside the records that hold it.
fn flip_every(dir: &Path, needle: &str) {
    let mut bytes = std::fs::read(db(dir)).expect("read db");
    let found = occurrences(&bytes, needle.as_bytes());
    assert!(!found.is_empty(), "{needle:?} is in the database file");
    for at in found {
        bytes[at + needle.len() / 2] ^= 0x01;
    }
    std::fs::write(db(dir), bytes).expect("write db");
}

fn flip_at(dir: &Path, at: impl Fn(usize) -> usize) {
    let mut bytes = std::fs::read(db(dir)).expect("read db");
    let at = at(bytes.len());
    for byte in &mut bytes[at..at + 8] {
        *byte ^= 0x5a;
    }
    std::fs::write(db(dir), bytes).expect("write db");
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "zero-length",
            damage: |dir| std::fs::write(db(dir), b"").expect("truncate"),
            expect: Expect::Refuse("is empty"),
        },
        Case {
            name: "missing with blobs present",
            damage: |dir| std::fs::remove_file(db(dir)).expect("remove"),
            expect: Expect::Refuse("is missing"),
        },
        Case {
            name: "a directory in place of the file",
            damage: |dir| {
                std::fs::remove_file(db(dir)).expect("remove");
                std::fs::create_dir(db(dir)).expect("mkdir");
            },
            expect: Expect::Refuse("not a regular file"),
        },
        Case {
            name: "truncated to half",
            damage: |dir| {
                let len = std::fs::metadata(db(dir)).expect("stat").len();
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(db(dir))
                    .expect("open");
                file.set_len(len / 2).expect("truncate");
            },
            expect: Expect::Either,
        },
        Case {
            name: "bytes flipped in the header",
            damage: |dir| flip_at(dir, |_| 64),
            expect: Expect::Either,
        },
        Case {
            name: "bytes flipped in the middle, in one doc's records",
            damage: |dir| flip_every(dir, ALPHA.1),
            expect: Expect::Serve {
                damaged_docs: &[ALPHA.0],
                file_damaged: false,
            },
        },
        Case {
            name: "bytes flipped in the middle, in the file's entry",
            damage: |dir| flip_every(dir, FILE_TYPE),
            expect: Expect::Serve {
                damaged_docs: &[],
                file_damaged: true,
            },
        },
        Case {
            name: "bytes flipped in the tail",
            damage: |dir| flip_at(dir, |len| len - 100),
            expect: Expect::Either,
        },
        Case {
            name: "a zeroed page",
            damage: |dir| {
                let mut bytes = std::fs::read(db(dir)).expect("read db");
                let at = occurrences(&bytes, ALPHA.1.as_bytes())[0];
                let page = at / 4096 * 4096;
                let end = (page + 4096).min(bytes.len());
                bytes[page..end].fill(0);
                std::fs::write(db(dir), bytes).expect("write db");
            },
            expect: Expect::Either,
        },
    ]
}

/// Builds the pristine data directory with the in-process server: two docs written by real
/// peers and one uploaded file, then a clean shutdown.
async fn pristine() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = TestServer::start_in(tempfile::tempdir().expect("temp dir"), |_| {}).await;
    for (doc, text) in [ALPHA, BETA] {
        let mut writer = Peer::connect(server.addr, doc).await;
        writer.append_text(text).await;
        let mut reader = Peer::connect(server.addr, doc).await;
        reader.wait_text(|seen| seen == text).await;
    }
    let response = server
        .request(
            "PUT",
            &format!("/api/files/{FILE_PATH}"),
            &[("content-type", FILE_TYPE)],
            FILE_BODY,
        )
        .await;
    assert!(
        (200..300).contains(&response.status),
        "upload: {response:?}"
    );
    assert!(server.shutdown().await, "clean shutdown");
    copy_dir(server.data_dir(), dir.path());
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Every file under `dir/blobs` (its path below `dir`), with its bytes.
fn blobs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                let bytes = std::fs::read(&path).expect("read blob");
                out.push((path, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(&dir.join("blobs"), &mut out);
    let mut out: Vec<(PathBuf, Vec<u8>)> = out
        .into_iter()
        .map(|(path, bytes)| {
            let below = path.strip_prefix(dir).expect("under dir").to_owned();
            (below, bytes)
        })
        .collect();
    out.sort();
    out
}

/// A `tandem` process that printed its readiness line.
struct Running {
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<String>,
}

impl Running {
    /// Stops the process by its pid and returns what it wrote on stderr.
    async fn stop(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("tandem exits after the kill");
        self.stderr.await.expect("stderr reader")
    }
}

/// How a start of the real binary ended: serving on a port, or exited without printing its
/// readiness line.
enum Started {
    Serving(u16, Running),
    Exited {
        success: bool,
        stdout: String,
        stderr: String,
    },
}

/// The real binary on `dir`, waited on until it prints its readiness line or exits.
async fn start_binary(dir: &Path) -> Started {
    start_binary_with(dir, &[]).await
}

async fn start_binary_with(dir: &Path, extra_args: &[&str]) -> Started {
    let bin = tokio::task::spawn_blocking(tandem_tests::tandem_bin)
        .await
        .expect("building the binary");
    let mut child = tokio::process::Command::new(bin)
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(dir)
        .args(extra_args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LOG")
        .env_remove("TANDEM_INIT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start tandem");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    // Read beside stdout, so a chatty stderr never blocks the process; the test owns this
    // task (it plays the role of a supervisor), so it is not tracked by any server lifecycle.
    #[allow(clippy::disallowed_methods)]
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text).await;
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let mut printed = String::new();
    let line = tokio::time::timeout(WAIT * 2, async {
        while let Ok(Some(line)) = stdout.next_line().await {
            if line.starts_with("tandem listening on ") {
                return Some(line);
            }
            printed.push_str(&line);
            printed.push('\n');
        }
        None
    })
    .await
    .expect("tandem prints its readiness line or exits in time");
    match line {
        Some(line) => {
            let port = line
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .expect("readiness line ends with the port");
            Started::Serving(port, Running { child, stderr })
        }
        None => {
            let status = tokio::time::timeout(WAIT, child.wait())
                .await
                .expect("tandem exits in time")
                .expect("exit status");
            Started::Exited {
                success: status.success(),
                stdout: printed,
                stderr: stderr.await.expect("stderr reader"),
            }
        }
    }
}

/// A refusal as the issue asks: a failure status, exactly one `error:` line that names the
/// database file and contains `expected`, no panic message or backtrace, no readiness line.
fn assert_clear_refusal(case: &str, success: bool, stdout: &str, stderr: &str, expected: &str) {
    assert!(!success, "{case}: exits with a failure status");
    assert!(
        !stdout.contains("tandem listening"),
        "{case}: no readiness line: {stdout}"
    );
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{case}: one error line in {stderr}");
    assert!(
        errors[0].contains("tandem.redb") && errors[0].contains(expected),
        "{case}: the line names the file and says {expected:?}: {}",
        errors[0]
    );
    assert_no_panic_report(case, stderr);
}

fn assert_no_panic_report(case: &str, stderr: &str) {
    assert!(
        !stderr.contains("panicked at") && !stderr.contains("stack backtrace"),
        "{case}: no panic report on stderr: {stderr}"
    );
}

/// What serving `doc` looked like: its correct text, or a refusal as damaged.
#[derive(Debug, PartialEq)]
enum DocOutcome {
    Correct,
    RefusedAsDamaged,
}

/// Reads `doc` over HTTP and over a WebSocket; anything but its exact text or a refusal as
/// damaged fails the test.
async fn check_doc(case: &str, port: u16, (doc, text): (&str, &str)) -> DocOutcome {
    let addr = ([127, 0, 0, 1], port).into();
    let response = http_request(
        addr,
        "GET",
        &format!("/api/docs/{doc}"),
        &[("accept", "application/octet-stream")],
        b"",
    )
    .await;
    let over_http = match response.status {
        200 => {
            assert_eq!(
                served_text(&response.body),
                text,
                "{case}: {doc} is served with its own content"
            );
            DocOutcome::Correct
        }
        500 => {
            assert_eq!(
                response.json()["error"],
                "doc_corrupt",
                "{case}: {doc}: {response:?}"
            );
            DocOutcome::RefusedAsDamaged
        }
        status => panic!("{case}: GET {doc} answered {status}: {}", response.text()),
    };
    let mut peer = Peer::connect_raw(addr, doc).await;
    match over_http {
        DocOutcome::Correct => {
            peer.handshake().await;
            assert_eq!(peer.text(), text, "{case}: {doc} syncs its own content");
            DocOutcome::Correct
        }
        DocOutcome::RefusedAsDamaged => {
            let (code, reason) = peer.expect_close().await;
            assert_eq!(
                (code, reason.as_str()),
                (1011, "document damaged"),
                "{case}: {doc}"
            );
            assert_eq!(peer.text(), "", "{case}: nothing of {doc} was sent");
            DocOutcome::RefusedAsDamaged
        }
    }
}

/// Reads every version of `doc`: each is its own text (the versions here hold the whole doc)
/// or refused as damaged. Returns (versions served, versions refused); a listing refused as
/// damaged counts as one refusal.
async fn check_versions(case: &str, port: u16, (doc, text): (&str, &str)) -> (usize, usize) {
    let addr = ([127, 0, 0, 1], port).into();
    let listing = http_request(addr, "GET", &format!("/api/docs/{doc}/versions"), &[], b"").await;
    if listing.status == 500 {
        assert_eq!(
            listing.json()["error"],
            "doc_corrupt",
            "{case}: {doc}: {listing:?}"
        );
        return (0, 1);
    }
    assert_eq!(listing.status, 200, "{case}: {doc}: {listing:?}");
    let ids: Vec<u64> = listing.json()["versions"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|version| version["id"].as_u64().expect("an id"))
        .collect();
    let (mut served, mut refused) = (0, 0);
    for id in ids {
        let response = http_request(
            addr,
            "GET",
            &format!("/api/docs/{doc}/versions/{id}"),
            &[("accept", "application/octet-stream")],
            b"",
        )
        .await;
        match response.status {
            200 => {
                assert_eq!(
                    served_text(&response.body),
                    text,
                    "{case}: {doc} version {id}"
                );
                served += 1;
            }
            500 => {
                assert_eq!(
                    response.json()["error"],
                    "doc_corrupt",
                    "{case}: {doc} v{id}"
                );
                refused += 1;
            }
            status => panic!("{case}: {doc} version {id} answered {status}"),
        }
    }
    (served, refused)
}

/// The text of root `t` in a v1 update.
fn served_text(update: &[u8]) -> String {
    let fetched = Doc::new();
    let update = yrs::Update::decode_v1(update).expect("a v1 update");
    fetched
        .transact_mut()
        .apply_update(update)
        .expect("the served update applies");
    let root = fetched.get_or_insert_text("t");
    root.get_string(&fetched.transact())
}

/// Downloads the file: its exact bytes, or a 5xx; `true` when it was refused.
async fn check_file(case: &str, port: u16) -> bool {
    let addr = ([127, 0, 0, 1], port).into();
    let response = http_request(addr, "GET", &format!("/api/files/{FILE_PATH}"), &[], b"").await;
    match response.status {
        200 => {
            assert_eq!(response.body, FILE_BODY, "{case}: the file's own bytes");
            assert_eq!(
                response.header("content-type"),
                Some(FILE_TYPE),
                "{case}: the file's own metadata"
            );
            false
        }
        status if status >= 500 => true,
        status => panic!(
            "{case}: GET the file answered {status}: {}",
            response.text()
        ),
    }
}

/// The table: every damaged copy refuses to start clearly or refuses exactly what is damaged,
/// never deletes a blob and never serves wrong content.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_damaged_store_refuses_clearly_and_never_serves_wrong_content_or_deletes_blobs() {
    let pristine = pristine().await;
    let pristine_blobs = blobs(pristine.path());
    assert_eq!(pristine_blobs.len(), 1, "the upload left one blob");
    for case in cases() {
        let copy = tempfile::tempdir().expect("temp dir");
        copy_dir(pristine.path(), copy.path());
        (case.damage)(copy.path());
        let started = start_binary(copy.path()).await;
        match (started, case.expect) {
            (
                Started::Exited {
                    success,
                    stdout,
                    stderr,
                },
                Expect::Refuse(expected),
            ) => assert_clear_refusal(case.name, success, &stdout, &stderr, expected),
            (
                Started::Exited {
                    success,
                    stdout,
                    stderr,
                },
                Expect::Either,
            ) => assert_clear_refusal(case.name, success, &stdout, &stderr, ""),
            (Started::Exited { stderr, .. }, Expect::Serve { .. }) => {
                panic!("{}: should serve, exited: {stderr}", case.name)
            }
            (Started::Serving(_, running), Expect::Refuse(_)) => {
                let stderr = running.stop().await;
                panic!("{}: should refuse to start, served: {stderr}", case.name)
            }
            (Started::Serving(port, running), expect) => {
                let alpha = check_doc(case.name, port, ALPHA).await;
                let beta = check_doc(case.name, port, BETA).await;
                let file_refused = check_file(case.name, port).await;
                let alpha_versions = check_versions(case.name, port, ALPHA).await;
                let beta_versions = check_versions(case.name, port, BETA).await;
                let stderr = running.stop().await;
                assert_no_panic_report(case.name, &stderr);
                if let Expect::Serve {
                    damaged_docs,
                    file_damaged,
                } = expect
                {
                    for (doc, outcome) in [(ALPHA.0, &alpha), (BETA.0, &beta)] {
                        let expected = if damaged_docs.contains(&doc) {
                            DocOutcome::RefusedAsDamaged
                        } else {
                            DocOutcome::Correct
                        };
                        assert_eq!(*outcome, expected, "{}: {doc}", case.name);
                        if expected == DocOutcome::RefusedAsDamaged {
                            assert!(
                                stderr.contains("stored doc is damaged") && stderr.contains(doc),
                                "{}: the log names {doc}: {stderr}",
                                case.name
                            );
                        }
                    }
                    assert_eq!(file_refused, file_damaged, "{}: the file", case.name);
                    // The shutdown saved a version of each doc, holding its text.
                    for (doc, (served, refused)) in
                        [(ALPHA.0, alpha_versions), (BETA.0, beta_versions)]
                    {
                        if damaged_docs.contains(&doc) {
                            assert!(refused > 0, "{}: {doc}'s damaged version", case.name);
                        } else {
                            assert!(
                                served > 0 && refused == 0,
                                "{}: {doc}'s versions serve",
                                case.name
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(
            blobs(copy.path()),
            pristine_blobs,
            "{}: no blob was deleted or changed",
            case.name
        );
    }
}

/// `--init` is how a new store is made beside an earlier store's data: the server starts with
/// an empty store and prints its readiness line, and the start-up cleanup, which deletes without
/// a grace period, keeps the blobs a store made now cannot vouch for.
#[tokio::test]
async fn a_missing_database_with_init_starts_empty_and_keeps_the_blobs() {
    let pristine = pristine().await;
    let copy = tempfile::tempdir().expect("temp dir");
    copy_dir(pristine.path(), copy.path());
    std::fs::remove_file(db(copy.path())).expect("remove");
    let Started::Serving(port, running) = start_binary_with(copy.path(), &["--init"]).await else {
        panic!("--init starts the server");
    };
    let addr = ([127, 0, 0, 1], port).into();
    let response = http_request(addr, "GET", &format!("/api/docs/{}", ALPHA.0), &[], b"").await;
    assert_eq!(response.status, 404, "{response:?}");
    let stderr = running.stop().await;
    assert!(stderr.contains("start-up file cleanup skipped"), "{stderr}");
    assert_eq!(blobs(copy.path()), blobs(pristine.path()));
}
