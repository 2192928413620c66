//! Tidy checks, in the rust-analyzer style: tests that read the source tree and hold the
//! layering rules the compiler cannot. The services (`accounts/`, `activity/`, `backup/`, `files/`,
//! `locks/`, `webhook/`) sit below the HTTP layer: they never import `crate::api` and never name axum or
//! a status code, so a handler is the only place a domain error becomes an HTTP answer.

use std::path::{Path, PathBuf};

/// The service directories under `src/`.
const SERVICE_DIRS: [&str; 8] = [
    "accounts", "activity", "backup", "doc_text", "files", "locks", "metrics", "webhook",
];

/// What a service file must not contain.
const FORBIDDEN_IN_SERVICES: [&str; 4] = ["crate::api", "axum", "StatusCode", "super::api"];

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries {
        let path = entry.expect("reading a source directory").path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            files.push(path);
        }
    }
    files
}

/// The lines of the files under `dirs` that contain one of `forbidden`, as `path:line: text`.
fn violations(src: &Path, dirs: &[&str], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for dir in dirs {
        for file in rust_files(&src.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            for (idx, line) in text.lines().enumerate() {
                if forbidden.iter().any(|word| line.contains(word)) {
                    let shown = file.strip_prefix(src).unwrap_or(&file).display();
                    found.push(format!("{shown}:{}: {}", idx + 1, line.trim()));
                }
            }
        }
    }
    found
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn services_never_name_the_http_layer() {
    let found = violations(&src_dir(), &SERVICE_DIRS, &FORBIDDEN_IN_SERVICES);
    assert!(
        found.is_empty(),
        "services must return domain errors and leave HTTP to `api/`:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_finds_a_forbidden_import() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let service = dir.path().join("accounts");
    std::fs::create_dir(&service).expect("service directory");
    std::fs::write(service.join("mod.rs"), "use crate::api::ApiError;\n").expect("source file");
    let found = violations(dir.path(), &SERVICE_DIRS, &FORBIDDEN_IN_SERVICES);
    assert_eq!(found, ["accounts/mod.rs:1: use crate::api::ApiError;"]);
}
