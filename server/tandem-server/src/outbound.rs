//! The one outbound HTTP client's common settings, for webhook delivery (`webhook/deliver.rs`)
//! and for `tandem user|webhook` talking to a running server (`command/backend.rs`).
//!
//! reqwest over rustls with the ring provider and the public roots (reqwest's TLS feature
//! without a provider of its own, so aws-lc-rs, which needs cmake, stays out of the build;
//! reqwest then refuses to build a client that was not handed a rustls config, even for plain
//! http). No redirects are followed and no proxy from the environment is used: a token or a
//! signed payload goes to the server named and nowhere else. Each caller adds its own timeouts.

use std::sync::Arc;

/// A client builder with the settings every outbound request shares.
pub(crate) fn client_builder() -> reqwest::ClientBuilder {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
}
