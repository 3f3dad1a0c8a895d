//! Serving certificates: loaded from files and reloaded without restart, or generated at start.
//!
//! Reload works by polling: every interval both files are read and, if their bytes changed, parsed
//! and swapped in atomically for new handshakes (existing connections keep their session). Polling
//! the *content* rather than watching the files with inotify is deliberate: kubelet updates Secret
//! volumes by swapping a `..data` symlink, which a watch on the file itself never sees (see
//! <https://kubernetes.io/docs/concepts/configuration/secret/#mounted-secrets-are-updated-automatically>).
//! A half-written pair (new certificate, old key) fails the key check and keeps the last good pair
//! until the next poll.
//!
//! Only TLS 1.2 and 1.3 are offered, with ALPN `http/1.1` (the API server's webhook client mode).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::metrics::{Metrics, ReloadLabels};

/// Why a certificate could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("failed to load certificate: {0} contains no PEM certificate")]
    NoCertificate(PathBuf),
    /// The key file holds no PEM private key.
    #[error("failed to load key: {0} contains no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    NoKey(PathBuf),
    /// A PEM block of a file is malformed (bad base64, no `END` line, a broken `BEGIN` line). The
    /// whole file is refused: serving a chain with a block silently left out would send clients an
    /// incomplete chain.
    #[error("failed to load {path}: PEM block {block} is malformed: {}", describe_pem_error(.source))]
    Pem {
        /// The file.
        path: PathBuf,
        /// Which block of the file, counting from 1 (well-formed blocks of another kind, like a
        /// key in the certificate file, are not counted).
        block: usize,
        /// What the PEM parser said.
        #[source]
        source: pem::Error,
    },
    /// rustls refused the pair (unsupported key type, or key and certificate do not match).
    #[error("failed to load certificate {cert} with key {key}: {source}")]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// Generating a self-signed certificate failed.
    #[error("failed to generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls could not build a server configuration.
    #[error("failed to configure TLS: {0}")]
    Config(#[source] rustls::Error),
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum TlsSource {
    /// PEM files, reloaded when their content changes.
    Files {
        /// The certificate chain (leaf first).
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
        /// How often to look for a change.
        reload_interval: Duration,
    },
    /// A CA and a leaf for `names` generated at start (development mode).
    SelfSigned {
        /// DNS names and IP addresses for the leaf's SANs.
        names: Vec<String>,
    },
}

/// A generated CA and serving certificate.
#[derive(Clone, Debug)]
pub struct GeneratedCert {
    /// The CA certificate, PEM: what goes into the webhook's `caBundle`.
    pub ca_pem: String,
    /// The serving certificate, PEM.
    pub cert_pem: String,
    /// The serving key, PEM (PKCS#8).
    pub key_pem: String,
}

impl GeneratedCert {
    /// Generates a CA and a leaf certificate valid for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, TlsError> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "admission-kit development CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(names.to_vec())?;
        leaf_params.distinguished_name.push(DnType::CommonName, names.first().map_or("admission-kit", String::as_str));
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(Self { ca_pem: ca_cert.pem(), cert_pem: leaf.pem(), key_pem: leaf_key.serialize_pem() })
    }
}

/// The crypto provider used everywhere in the crate (ring), and the only place that names it.
#[must_use]
pub fn provider() -> Arc<CryptoProvider> {
    // rustls 0.23.48 deprecates this constructor only because *ring* offers no post-quantum key
    // exchange (X25519MLKEM768); the provider itself is supported. Moving to it means moving to the
    // aws-lc-rs provider (a C library in the build, the static image included), a decision of its
    // own. `allow`, not `expect`: older 0.23 releases do not deprecate it, and both must build
    // without a warning.
    #[allow(deprecated, reason = "ring lacks only post-quantum key exchange; see the comment above")]
    let provider = rustls::crypto::ring::default_provider();
    Arc::new(provider)
}

/// A readable reason for a PEM error (the parser's own text shows the section label as bytes).
fn describe_pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("no `-----END {}-----` line", String::from_utf8_lossy(end_marker).trim())
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed `BEGIN` line `{}`", String::from_utf8_lossy(line).trim())
        }
        other => other.to_string(),
    }
}

/// Every certificate in `pem_bytes`, refusing the file if any certificate block is malformed.
fn parse_certs(pem_bytes: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem_bytes)
        .enumerate()
        .map(|(index, cert)| cert.map_err(|source| TlsError::Pem { path: path.to_owned(), block: index + 1, source }))
        .collect()
}

/// Parses a PEM certificate chain and key into a rustls key, checking that they match.
pub fn parse_pair(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
) -> Result<CertifiedKey, TlsError> {
    let certs = parse_certs(cert_pem, cert_path)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    // The first PKCS#8, PKCS#1 or SEC1 key; a malformed block before it is an error, not skipped.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey(key_path.to_owned()),
        source => TlsError::Pem { path: key_path.to_owned(), block: 1, source },
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|source| TlsError::Rejected {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
        source,
    })
}

/// `notAfter` of the leaf certificate, as a Unix timestamp.
#[must_use]
pub fn not_after(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Sets the certificate-expiry gauge from `key`'s `notAfter`.
pub fn record_expiry(metrics: &Metrics, key: &CertifiedKey) {
    if let Some(t) = not_after(key) {
        #[allow(clippy::cast_precision_loss, reason = "Unix seconds fit f64 exactly until year 285 million")]
        metrics.cert_expiry.set(t as f64);
    }
}

/// The certificate being served, swapped atomically on reload.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    /// A store serving `key`.
    #[must_use]
    pub fn new(key: CertifiedKey) -> Self {
        Self { current: ArcSwap::from_pointee(key) }
    }

    /// Replaces the served certificate; new handshakes use it.
    pub fn replace(&self, key: CertifiedKey) {
        self.current.store(Arc::new(key));
    }

    /// The certificate being served.
    #[must_use]
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertStore>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

/// A rustls server configuration serving from `store`: TLS 1.2+, ALPN `http/1.1`.
pub fn server_config(store: Arc<CertStore>) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(store)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

/// Certificate files and the bytes last loaded from them.
#[derive(Debug)]
pub struct FileReloader {
    cert: PathBuf,
    key: PathBuf,
    loaded: (Vec<u8>, Vec<u8>),
}

impl FileReloader {
    /// Loads the pair once; fails if it cannot be served.
    pub fn load(cert: &Path, key: &Path) -> Result<(Self, CertifiedKey), TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let certified = parse_pair(&cert_pem, &key_pem, cert, key)?;
        Ok((Self { cert: cert.to_owned(), key: key.to_owned(), loaded: (cert_pem, key_pem) }, certified))
    }

    /// Reads the files again; returns a new key if their content changed and is valid. A read or
    /// parse failure is returned as an error and the previous pair stays in service.
    pub fn poll(&mut self) -> Result<Option<CertifiedKey>, TlsError> {
        let (cert_pem, key_pem) = (read(&self.cert)?, read(&self.key)?);
        if (&cert_pem, &key_pem) == (&self.loaded.0, &self.loaded.1) {
            return Ok(None);
        }
        let certified = parse_pair(&cert_pem, &key_pem, &self.cert, &self.key)?;
        self.loaded = (cert_pem, key_pem);
        Ok(Some(certified))
    }

    /// Polls every `interval` forever, swapping new pairs into `store`.
    pub async fn run(mut self, store: Arc<CertStore>, interval: Duration, metrics: Arc<Metrics>) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            match self.poll() {
                Ok(None) => {}
                Ok(Some(key)) => {
                    record_expiry(&metrics, &key);
                    store.replace(key);
                    metrics.cert_reloads.get_or_create(&ReloadLabels { result: "success".into() }).inc();
                    tracing::info!(cert = %self.cert.display(), "serving certificate reloaded");
                }
                Err(error) => {
                    metrics.cert_reloads.get_or_create(&ReloadLabels { result: "failure".into() }).inc();
                    tracing::warn!(%error, "serving certificate not reloaded; keeping the last good one");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pairs_load_and_mismatched_pairs_are_refused() {
        let a = GeneratedCert::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let b = GeneratedCert::generate(&["localhost".into()]).unwrap();
        let p = Path::new("x");
        let key = parse_pair(a.cert_pem.as_bytes(), a.key_pem.as_bytes(), p, p).unwrap();
        assert!(not_after(&key).unwrap() > 1_700_000_000);
        assert!(matches!(
            parse_pair(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), p, p),
            Err(TlsError::Rejected { .. })
        ));
        assert!(matches!(parse_pair(b"", a.key_pem.as_bytes(), p, p), Err(TlsError::NoCertificate(_))));
        assert!(matches!(parse_pair(a.cert_pem.as_bytes(), b"junk", p, p), Err(TlsError::NoKey(_))));
    }

    /// `cert_pem` followed by `chain_pem` with one base64 character of its body made invalid.
    fn chain_with_corrupted_second_block(cert_pem: &str, chain_pem: &str) -> String {
        let body_start = chain_pem.find('\n').unwrap() + 1;
        let mut corrupted = chain_pem.to_owned();
        corrupted.replace_range(body_start + 10..body_start + 11, "!");
        format!("{cert_pem}{corrupted}")
    }

    #[test]
    fn a_malformed_block_in_a_chain_refuses_the_file_and_names_it() {
        let a = GeneratedCert::generate(&["localhost".into()]).unwrap();
        let (cert_path, key_path) = (Path::new("/certs/tls.crt"), Path::new("/certs/tls.key"));
        let chain = format!("{}{}", a.cert_pem, a.ca_pem);
        parse_pair(chain.as_bytes(), a.key_pem.as_bytes(), cert_path, key_path).expect("a good chain loads");

        let bad_base64 = chain_with_corrupted_second_block(&a.cert_pem, &a.ca_pem);
        let error = parse_pair(bad_base64.as_bytes(), a.key_pem.as_bytes(), cert_path, key_path).unwrap_err();
        assert!(matches!(error, TlsError::Pem { block: 2, .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.starts_with("failed to load /certs/tls.crt: PEM block 2 is malformed"), "{message}");

        let no_end = format!("{}{}", a.cert_pem, a.ca_pem.replace("-----END CERTIFICATE-----", ""));
        let message = parse_pair(no_end.as_bytes(), a.key_pem.as_bytes(), cert_path, key_path).unwrap_err().to_string();
        assert_eq!(
            message,
            "failed to load /certs/tls.crt: PEM block 2 is malformed: no `-----END CERTIFICATE-----` line"
        );

        let bad_key = a.key_pem.replace("-----END PRIVATE KEY-----", "");
        let message = parse_pair(chain.as_bytes(), bad_key.as_bytes(), cert_path, key_path).unwrap_err().to_string();
        assert!(message.starts_with("failed to load /certs/tls.key: PEM block 1 is malformed"), "{message}");
    }

    #[test]
    fn reloading_a_chain_with_a_malformed_block_keeps_the_last_good_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let a = GeneratedCert::generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, format!("{}{}", a.cert_pem, a.ca_pem)).unwrap();
        std::fs::write(&key, &a.key_pem).unwrap();
        let (mut reloader, _) = FileReloader::load(&cert, &key).unwrap();

        let b = GeneratedCert::generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, chain_with_corrupted_second_block(&b.cert_pem, &b.ca_pem)).unwrap();
        std::fs::write(&key, &b.key_pem).unwrap();
        let error = reloader.poll().unwrap_err();
        assert!(matches!(&error, TlsError::Pem { path, block: 2, .. } if *path == cert), "{error:?}");
        assert!(reloader.poll().is_err(), "the bad file is refused on every poll, not taken as loaded");

        std::fs::write(&cert, format!("{}{}", b.cert_pem, b.ca_pem)).unwrap();
        assert!(reloader.poll().unwrap().is_some(), "the repaired chain is loaded");
    }

    #[test]
    fn reloader_swaps_only_on_valid_change() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let a = GeneratedCert::generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, &a.cert_pem).unwrap();
        std::fs::write(&key, &a.key_pem).unwrap();
        let (mut reloader, _) = FileReloader::load(&cert, &key).unwrap();
        assert!(reloader.poll().unwrap().is_none(), "unchanged files are not reloaded");
        let b = GeneratedCert::generate(&["localhost".into()]).unwrap();
        std::fs::write(&cert, &b.cert_pem).unwrap();
        assert!(reloader.poll().is_err(), "new cert with old key is refused");
        std::fs::write(&key, &b.key_pem).unwrap();
        assert!(reloader.poll().unwrap().is_some(), "the complete new pair is loaded");
    }
}
