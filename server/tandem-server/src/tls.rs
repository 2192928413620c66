//! TLS: the certificate chain and private key files, loaded into rustls and re-read when they
//! change, so a renewed certificate (certbot, cert-manager) is served without a restart.
//!
//! rustls asks [`CertResolver`] for the certificate on every handshake; the resolver hands out
//! the current `Arc<CertifiedKey>`, which the reload task swaps. A reload that fails (a file half
//! written, garbage PEM, a key that does not match the certificate) keeps the last good pair and
//! logs a warning, so a bad rotation never takes the server off the air.
//! The crypto provider is rustls' `ring` (not aws-lc-rs, which needs cmake to build).
//!
//! This module does no accepting: `listener.rs` runs each handshake, under its upgrade deadline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use tandem_hub::Lifecycle;

/// How often the certificate and key files are checked for changes (modification time and
/// length). Certificates are renewed days before they expire, so seconds of delay cost nothing,
/// and two `stat` calls every 2 s cost nothing either; file-change notification APIs differ per
/// platform and miss some replacements (a symlink swapped under a watched path). The default of
/// `ListenerConfig::tls_poll_interval` (tests shorten it).
pub(crate) const DEFAULT_TLS_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The PEM files of the certificate chain (leaf first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// Why a certificate and key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("no PEM certificate in {path}")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no PEM private key.
    #[error("no PEM private key in {path}")]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A file is not well-formed PEM.
    #[error("parsing {path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the pair: an unsupported key, a malformed certificate, or a key that does
    /// not belong to the certificate.
    #[error("certificate {cert} with key {key}: {source}")]
    Refused {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
}

/// Answers every handshake with the current certificate; the reload task replaces it.
pub(crate) struct CertResolver {
    /// A std lock: held only to clone or replace one `Arc`, never across an `.await`.
    current: RwLock<Arc<CertifiedKey>>,
}

impl std::fmt::Debug for CertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete `Arc` (replacing it cannot panic halfway).
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl CertResolver {
    fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }
}

/// What the reload task needs: the files, what they looked like when last read, and the resolver.
pub(crate) struct Reloader {
    files: TlsFiles,
    stamp: FilesStamp,
    resolver: Arc<CertResolver>,
}

/// Loads the pair for the first time; returns the acceptor for `listener.rs` and the reloader
/// to start with [`Reloader::spawn`]. Fails if the files cannot be read or do not match.
pub(crate) async fn open(files: &TlsFiles) -> Result<(TlsAcceptor, Reloader), TlsError> {
    // Stamp first: a change made while loading is then seen (and loaded) on the next poll.
    let stamp = FilesStamp::read(files).await;
    let key = load(files).await?;
    let resolver = Arc::new(CertResolver {
        current: RwLock::new(key),
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Refused {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    // HTTP/1.1 only, like the listener: WebSocket upgrades are an HTTP/1.1 mechanism here.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let reloader = Reloader {
        files: files.clone(),
        stamp,
        resolver,
    };
    Ok((TlsAcceptor::from(Arc::new(config)), reloader))
}

impl Reloader {
    /// Starts the tracked task that polls the files every `poll_interval` until shutdown.
    pub(crate) fn spawn(self, lifecycle: &Lifecycle, poll_interval: Duration) {
        let span = tracing::info_span!(
            "tls-reload",
            cert = %self.files.cert.display(),
            key = %self.files.key.display()
        );
        lifecycle.spawn(span, self.run(lifecycle.clone(), poll_interval));
    }

    async fn run(mut self, lifecycle: Lifecycle, poll_interval: Duration) {
        let mut interval = tokio::time::interval(poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Shutdown: nothing to flush.
                () = lifecycle.cancel.cancelled() => return,
                _ = interval.tick() => {}
            }
            let stamp = FilesStamp::read(&self.files).await;
            if stamp == self.stamp {
                continue;
            }
            // Remembered even when loading fails, so a bad file warns once, not every poll.
            self.stamp = stamp;
            match load(&self.files).await {
                Ok(key) => {
                    self.resolver.replace(key);
                    info!("tls certificate reloaded");
                }
                Err(error) => {
                    warn!(%error, "tls certificate not reloaded; still serving the previous one");
                }
            }
        }
    }
}

/// The modification time and length of both files; `None` where a file cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FilesStamp {
    cert: Option<(SystemTime, u64)>,
    key: Option<(SystemTime, u64)>,
}

impl FilesStamp {
    async fn read(files: &TlsFiles) -> FilesStamp {
        FilesStamp {
            cert: file_stamp(&files.cert).await,
            key: file_stamp(&files.key).await,
        }
    }
}

async fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let metadata = tokio::fs::metadata(path).await.ok()?;
    Some((metadata.modified().ok()?, metadata.len()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks one pair: the chain parses, the key parses, and the key is the leaf's.
async fn load(files: &TlsFiles) -> Result<Arc<CertifiedKey>, TlsError> {
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|source| TlsError::Read { path, source })
    };
    let cert_pem = read(files.cert.clone()).await?;
    let key_pem = read(files.key.clone()).await?;
    let pem_error = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Pem { path, source }
    };
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error(&files.cert))?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| match source {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey {
            path: files.key.clone(),
        },
        source => pem_error(&files.key)(source),
    })?;
    // Also checks that the key is the leaf certificate's (`CertifiedKey::keys_match`).
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|source| TlsError::Refused {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    Ok(Arc::new(certified))
}
