//! The HTTPS client of the harness: HTTP/1.1 keep-alive over rustls, as the API server calls
//! webhooks (hyper's low-level connection API, one request at a time per connection).
//!
//! Two TLS configurations: [`Tls::verifying`] checks the server's certificate against the CA the
//! runner generated (used by the correctness gate and readiness probes); [`Tls::handshake_load`]
//! skips certificate and signature checks and session resumption, so that the new-connection
//! benchmark makes the server do every full handshake while the client spends as little as it can
//! (its one core must not be what is measured).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The path both servers serve reviews on, with the `?timeout=` the API server adds.
pub const REVIEW_PATH: &str = "/mutate?timeout=10s";

/// A TLS client configuration and the name to ask for.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Tls {
    /// Verifies the server against `ca_pem` under the name `localhost`.
    pub fn verifying(ca_pem: &str) -> anyhow::Result<Self> {
        Self::verifying_with(ca_pem, true)
    }

    /// As [`Tls::verifying`], but never resuming a session: every handshake makes the server send
    /// the certificate it serves now (a resumed session would report the one it was made with).
    pub fn verifying_fresh(ca_pem: &str) -> anyhow::Result<Self> {
        Self::verifying_with(ca_pem, false)
    }

    /// As [`Tls::verifying_fresh`], offering only `suite` (and its protocol version) and `group`:
    /// `bench layout` makes the server run the code of every combination a client may choose.
    pub fn verifying_only(
        ca_pem: &str,
        suite: rustls::SupportedCipherSuite,
        group: &'static dyn rustls::crypto::SupportedKxGroup,
    ) -> anyhow::Result<Self> {
        let mut provider = (*admission_kit::tls::provider()).clone();
        provider.cipher_suites = vec![suite];
        provider.kx_groups = vec![group];
        let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[suite.version()])?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name: ServerName::try_from("localhost")? })
    }

    fn verifying_with(ca_pem: &str, resumption: bool) -> anyhow::Result<Self> {
        let mut config = ClientConfig::builder_with_provider(api_server_like_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(ca_pem)?)
            .with_no_client_auth();
        if !resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name: ServerName::try_from("localhost")? })
    }

    /// Accepts any certificate and never resumes a session: every connection is a full handshake
    /// for the server and as cheap as possible for the client.
    pub fn handshake_load() -> anyhow::Result<Self> {
        let provider = api_server_like_provider();
        let schemes = provider.signature_verification_algorithms.supported_schemes();
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(schemes)))
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self { connector: TlsConnector::from(Arc::new(config)), name: ServerName::try_from("localhost")? })
    }
}

fn roots(ca_pem: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("failed to read the CA PEM")?)?;
    }
    Ok(roots)
}

/// The crate's provider with its key-exchange groups in the order Go's `crypto/tls` client, the API
/// server's, offers them (X25519, then P-256, then P-384; Go puts a post-quantum hybrid before
/// them, which *ring* lacks). rustls 0.23.48's *ring* provider lists P-384 first, and a TLS 1.3
/// server takes the first group the client offers that it supports: with that order every
/// benchmark handshake was a P-384 key exchange, about three times the server's CPU of an X25519
/// one on this machine, which no API server asks for.
#[must_use]
pub fn api_server_like_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::NamedGroup;
    let mut provider = (*admission_kit::tls::provider()).clone();
    let rank = |group: NamedGroup| match group {
        NamedGroup::X25519 => 0,
        NamedGroup::secp256r1 => 1,
        NamedGroup::secp384r1 => 2,
        _ => 3,
    };
    provider.kx_groups.sort_by_key(|group| rank(group.name()));
    Arc::new(provider)
}

/// A benchmark client's verifier: the gate has already checked the certificate with
/// [`Tls::verifying`]; load runs only need the server to do its part of the handshake.
#[derive(Debug)]
struct AcceptAny(Vec<SignatureScheme>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

/// One keep-alive HTTPS connection.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: http::StatusCode,
    /// The body.
    pub body: Bytes,
    /// The server answered with `Connection: close`: the connection must not be used again (Go's
    /// `http.Transport`, the API server's client, then opens a new one for the next request).
    pub close: bool,
}

impl Reply {
    /// Whether this is the answer of a patched, allowed review (HTTP 200 and `"allowed":true`).
    #[must_use]
    pub fn is_admitted(&self) -> bool {
        self.status == http::StatusCode::OK && memmem(&self.body, b"\"allowed\":true")
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Connects and completes the TLS handshake; the TLS stream, for writing raw HTTP.
pub async fn connect_tls(addr: SocketAddr, tls: &Tls) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("failed to connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    tls.connector.connect(tls.name.clone(), tcp).await.with_context(|| format!("TLS handshake with {addr}"))
}

/// Completes one full handshake with `addr` and returns the leaf certificate the server presented
/// (DER). Use a [`Tls::verifying_fresh`] configuration, so that the server sends its certificate.
pub async fn served_certificate(addr: SocketAddr, tls: &Tls) -> anyhow::Result<Vec<u8>> {
    let stream = connect_tls(addr, tls).await?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|c| c.as_ref().to_vec())
        .context("the server presented no certificate")?;
    Ok(leaf)
}

impl Connection {
    /// Connects and completes the TLS handshake. The connection's driver runs as a task on the
    /// current runtime.
    pub async fn open(addr: SocketAddr, tls: &Tls) -> anyhow::Result<Self> {
        let stream = connect_tls(addr, tls).await?;
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(Self { sender })
    }

    /// Posts `body` as JSON to `path` and reads the whole answer. `close` asks the server to close
    /// the connection after answering (no keep-alive).
    pub async fn post(&mut self, path: &str, body: Bytes, close: bool) -> anyhow::Result<Reply> {
        self.sender.ready().await?;
        let mut request = http::Request::post(path)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json");
        if close {
            request = request.header(http::header::CONNECTION, "close");
        }
        let response = self.sender.send_request(request.body(Full::new(body))?).await?;
        let status = response.status();
        let close = response
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))));
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Reply { status, body, close })
    }

    /// Whether the connection can take another request.
    #[must_use]
    pub fn is_open(&self) -> bool {
        !self.sender.is_closed()
    }
}

/// Opens a connection, posts one review and returns the answer, within `timeout`.
pub async fn post_once(addr: SocketAddr, tls: &Tls, body: Bytes, timeout: Duration) -> anyhow::Result<Reply> {
    tokio::time::timeout(timeout, async {
        let mut conn = Connection::open(addr, tls).await?;
        conn.post(REVIEW_PATH, body, true).await
    })
    .await
    .context("timed out")?
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use admission_kit::tls::{CertStore, GeneratedCert, parse_pair, server_config};
    use rustls::{ClientConfig, ClientConnection, NamedGroup, ServerConnection};

    /// Runs a TLS handshake in memory between `client` and the server's own configuration, and
    /// returns the key-exchange group they agreed on.
    fn negotiated(client: ClientConfig) -> NamedGroup {
        let generated = GeneratedCert::generate(&["localhost".to_owned()]).unwrap();
        let key = parse_pair(
            generated.cert_pem.as_bytes(),
            generated.key_pem.as_bytes(),
            Path::new("tls.crt"),
            Path::new("tls.key"),
        )
        .unwrap();
        let server = server_config(Arc::new(CertStore::new(key))).unwrap();
        let mut server = ServerConnection::new(Arc::new(server)).unwrap();
        let mut client = ClientConnection::new(Arc::new(client), "localhost".try_into().unwrap()).unwrap();
        for _ in 0..10 {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            server.read_tls(&mut wire.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut wire = Vec::new();
            server.write_tls(&mut wire).unwrap();
            client.read_tls(&mut wire.as_slice()).unwrap();
            client.process_new_packets().unwrap();
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking(), "the handshake did not finish");
        server.negotiated_key_exchange_group().expect("a key exchange").name()
    }

    fn client_with(provider: Arc<rustls::crypto::CryptoProvider>) -> ClientConfig {
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::AcceptAny(
                admission_kit::tls::provider().signature_verification_algorithms.supported_schemes(),
            )))
            .with_no_client_auth()
    }

    #[test]
    fn the_harness_client_agrees_on_x25519_as_the_api_server_does() {
        assert_eq!(negotiated(client_with(super::api_server_like_provider())), NamedGroup::X25519);
        let groups: Vec<NamedGroup> = super::api_server_like_provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(groups.len(), admission_kit::tls::provider().kx_groups.len(), "no group is dropped: {groups:?}");
    }

    /// Why the order is set: the server takes the client's first supported group, and the crate's
    /// provider (rustls's *ring* defaults) lists P-384 first. When this fails, the defaults have
    /// changed and the reordering may no longer be needed.
    #[test]
    fn with_the_default_order_the_server_takes_the_clients_first_group() {
        let first = admission_kit::tls::provider().kx_groups[0].name();
        assert_eq!(negotiated(client_with(admission_kit::tls::provider())), first);
        assert_eq!(first, NamedGroup::secp384r1);
    }
}
