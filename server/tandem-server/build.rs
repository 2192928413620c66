//! Makes cargo recompile the server when the web client is rebuilt, so that release builds embed
//! the current `web-client/dist` (rust-embed's `include_bytes!` tracks the files it embedded,
//! not files added later). Debug builds read the directory at run time and need no rebuild.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    // rust-embed embeds exactly when debug assertions are off.
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_none() {
        println!("cargo:rerun-if-changed=../../web-client/dist");
    }
}
