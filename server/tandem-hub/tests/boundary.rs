//! The hub's dependency boundary: it is the real-time engine over `tandem-core` and
//! `tandem-store`, and must not grow a dependency on HTTP, tokens, password hashing or any of the
//! server's groupware. The compiler enforces it only as long as the manifest does not list them,
//! so this test reads the manifest and refuses any normal dependency outside an allowlist.
//!
//! Adding a dependency here is a reviewed change: extend [`ALLOWED`] with a reason.

use std::collections::BTreeSet;

/// The normal dependencies the hub may have.
const ALLOWED: &[&str] = &[
    // The sans-IO core and the store.
    "tandem-core",
    "tandem-store",
    // The runtime, the WebSocket codec and the registry's map.
    "tokio",
    "tokio-util",
    "tokio-tungstenite",
    "futures-util",
    "dashmap",
    "bytes",
    "tracing",
    "thiserror",
    // The CRDT types the actor hands out (snapshots) and the JSON view of a doc.
    "yrs",
    "serde",
    "serde_json",
    // A fresh client id for a restore's own structs.
    "rand",
    // Metric handles and their text encoding (`metrics.rs`): atomics and a formatter, no HTTP;
    // the server serves them.
    "prometheus-client",
    // The allocator release (optional, with the `jemalloc` feature).
    "tikv-jemalloc-ctl",
];

/// What the hub must never depend on, named so a failure says why.
const FORBIDDEN: &[&str] = &[
    "axum",
    "hyper",
    "hyper-util",
    "tower",
    "tower-http",
    "jsonwebtoken",
    "argon2",
    "reqwest",
    "tandem-server",
];

fn manifest_dependencies() -> BTreeSet<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let text = std::fs::read_to_string(path).expect("the crate's own manifest is readable");
    let manifest: toml::Table = text.parse().expect("the crate's own manifest is TOML");
    let mut names = BTreeSet::new();
    let mut tables = vec![manifest.get("dependencies")];
    // Target-specific dependencies count too.
    if let Some(targets) = manifest.get("target").and_then(toml::Value::as_table) {
        tables.extend(targets.values().map(|target| target.get("dependencies")));
    }
    for table in tables.into_iter().flatten() {
        let table = table.as_table().expect("[dependencies] is a table");
        for (name, spec) in table {
            // A renamed dependency (`alias = { package = "..." }`) counts by its package.
            let package = spec
                .get("package")
                .and_then(toml::Value::as_str)
                .unwrap_or(name);
            names.insert(package.to_owned());
        }
    }
    names
}

#[test]
fn the_hub_depends_only_on_its_allowlist() {
    let dependencies = manifest_dependencies();
    assert!(
        dependencies.contains("tandem-core") && dependencies.contains("tokio"),
        "the manifest was not read: {dependencies:?}"
    );
    let forbidden: Vec<&String> = dependencies
        .iter()
        .filter(|name| FORBIDDEN.contains(&name.as_str()))
        .collect();
    assert!(
        forbidden.is_empty(),
        "tandem-hub must not depend on {forbidden:?}: the hub knows nothing of HTTP (axum, hyper, \
         tower, reqwest), tokens (jsonwebtoken), accounts (argon2) or the server; forbidden are \
         {FORBIDDEN:?}"
    );
    let unexpected: Vec<&String> = dependencies
        .iter()
        .filter(|name| !ALLOWED.contains(&name.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "tandem-hub gained dependencies outside its allowlist: {unexpected:?}. The hub must not \
         depend on {FORBIDDEN:?} or anything of accounts, files, activity or webhooks; if the new \
         one belongs to the real-time path, add it to ALLOWED in tests/boundary.rs with a reason"
    );
}
