//! The black-box tests of the server, as one test binary: each module was a binary of its own,
//! and each of them linked the whole server again (`cargo test` linked it sixteen times). One
//! binary links it once. A test is named `<module>::<test>` in the binary `it` (`cargo test -p
//! tandem-tests --test it -- files::` runs one module).
//!
//! The tests share one process, so nothing here may assume it is alone in it: servers listen on
//! port 0 in their own temporary directories, the open-file limit is only ever raised (by
//! `proxy.rs`), no test sets environment variables, and the one log subscriber of the process
//! is installed once, by `tandem_tests::capture_logs`, and captures every server's lines.

mod accounts;
mod activity;
mod auth;
mod backup;
mod cluster;
mod cluster_files;
mod cluster_meta;
mod cluster_s3;
mod damaged_store;
mod dav;
mod dav_propfind;
mod dav_read;
mod disk_full;
mod doc_text;
mod events;
mod files;
mod history;
mod hocuspocus;
mod http_edges;
mod limits;
mod listener;
mod locks;
mod metrics;
mod openapi;
mod proxy;
mod server;
mod tls;
mod web;
mod webhooks;
