//! The serving settings every webhook binary has, in one type that clap and serde both read: a
//! webhook configured by flags flattens it into its command line, one configured by a file embeds
//! it in its configuration (`server:`), and both get every knob of the server.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::server::{DEFAULT_CACHE_MAX_STALENESS, ServerConfig};
use crate::telemetry::LogFormat;
use crate::tls::TlsSource;

/// Parses a duration as Go writes it (`5s`, `250ms`, `1m30s`; the API server's `?timeout=` format).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    crate::server::parse_duration(text.trim())
        .ok_or_else(|| format!("`{text}` is not a duration like 5s, 250ms or 1m30s"))
}

/// Writes a duration the way [`parse_duration`] reads it, shortest form first (`10s`, `2m`,
/// `1m30s`, `250ms`).
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_owned();
    }
    if duration.subsec_nanos() != 0 {
        let millis = duration.as_millis();
        return if Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX)) == duration {
            format!("{millis}ms")
        } else {
            format!("{}ns", duration.as_nanos())
        };
    }
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut out = String::new();
    for (value, unit) in [(hours, "h"), (minutes, "m"), (seconds, "s")] {
        if value != 0 {
            let _ = write!(out, "{value}{unit}");
        }
    }
    out
}

/// Serde for a [`Duration`] written as text (`10s`, `1m30s`), as Kubernetes writes durations. A
/// bare `0` (which an environment variable or `--set` delivers as a number) is zero; any other
/// number is refused, because its unit would be a guess.
pub mod duration_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    /// Writes `duration` as text.
    ///
    /// # Errors
    /// Never, except as the serializer fails.
    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::format_duration(*duration))
    }

    /// Reads a duration from text.
    ///
    /// # Errors
    /// When the text is not a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(Visitor)
    }

    pub(super) struct Visitor;

    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration like 5s, 250ms or 1m30s")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            super::parse_duration(v).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            if v == 0 { Ok(Duration::ZERO) } else { Err(E::custom(format!("`{v}` needs a unit, like {v}s"))) }
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom(format!("`{v}` is negative; a duration is like 5s"))),
            }
        }
    }
}

/// A bound on how long a watch cache may be out of contact with the API server before `/readyz`
/// fails: a duration, or none (`never`, also `0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxStaleness(pub Option<Duration>);

impl Default for MaxStaleness {
    fn default() -> Self {
        Self(Some(DEFAULT_CACHE_MAX_STALENESS))
    }
}

impl FromStr for MaxStaleness {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "never" | "0" => Ok(Self(None)),
            other => match crate::server::parse_duration(other) {
                Some(d) if d.is_zero() => Ok(Self(None)),
                Some(d) => Ok(Self(Some(d))),
                None => Err(format!("`{text}` is neither `never` nor a duration like 30s, 10m or 1h")),
            },
        }
    }
}

impl fmt::Display for MaxStaleness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => f.write_str(&format_duration(d)),
            None => f.write_str("never"),
        }
    }
}

impl Serialize for MaxStaleness {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MaxStaleness {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = MaxStaleness;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`never` or a duration like 30s, 10m or 1h")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaxStaleness, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaxStaleness, E> {
                duration_text::Visitor.visit_u64(v).map(|_| MaxStaleness(None))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaxStaleness, E> {
                duration_text::Visitor.visit_i64(v).map(|_| MaxStaleness(None))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether to watch namespaces for their labels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NamespaceCacheMode {
    /// Watch if a cluster is reachable (in-cluster or kubeconfig); otherwise trust the selectors.
    #[default]
    Auto,
    /// Watch, and fail to start without cluster access.
    Always,
    /// Never watch; trust the API server's selectors.
    Never,
}

/// Every setting of the webhook server. As flags, each also reads an environment variable
/// (`ADMISSION_KIT_…`); as configuration, keys are camelCase (`webhookAddr`, `handshakeTimeout`)
/// and durations are text (`10s`). The defaults are the same both ways.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServeSettings {
    /// Address of the HTTPS webhook port.
    #[arg(long, env = "ADMISSION_KIT_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Address of the plain-HTTP admin port (/livez, /readyz, /metrics).
    #[arg(long, env = "ADMISSION_KIT_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Serving certificate chain (PEM), reloaded on change. Without it (and the key) a self-signed
    /// certificate is generated (development mode).
    #[arg(long, env = "ADMISSION_KIT_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM); set both or neither.
    #[arg(long, env = "ADMISSION_KIT_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// How often the certificate files are checked for a change.
    #[arg(long, env = "ADMISSION_KIT_CERT_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub cert_reload_interval: Duration,
    /// Names for a generated certificate (DNS names or IPs); repeat the flag for several.
    #[arg(
        long = "self-signed-name",
        env = "ADMISSION_KIT_SELF_SIGNED_NAMES",
        value_delimiter = ',',
        default_value = "localhost,127.0.0.1"
    )]
    pub self_signed_names: Vec<String>,
    /// Write the generated CA (PEM) to this file (`-` for stdout), for a webhook configuration's caBundle.
    #[arg(long, env = "ADMISSION_KIT_WRITE_CA")]
    pub write_ca: Option<PathBuf>,
    /// Largest request body, in bytes (413 above it).
    #[arg(long, env = "ADMISSION_KIT_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most open webhook connections past the TLS handshake.
    #[arg(long, env = "ADMISSION_KIT_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most connections in their TLS handshake at once (from all peers); more are refused.
    #[arg(long, env = "ADMISSION_KIT_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,
    /// Most connections in their TLS handshake at once from one IP address.
    #[arg(long, env = "ADMISSION_KIT_MAX_HANDSHAKES_PER_PEER", default_value_t = 64)]
    pub max_handshakes_per_peer: usize,
    /// Also serve /metrics on the webhook port (HTTPS); the admin port serves it in any case.
    #[arg(long, env = "ADMISSION_KIT_METRICS_ON_WEBHOOK_PORT")]
    pub metrics_on_webhook_port: bool,
    /// Threads that decode and answer reviews, apart from those serving connections and probes
    /// (0: one per CPU the process may use).
    #[arg(long, env = "ADMISSION_KIT_REVIEW_THREADS", default_value_t = 0)]
    pub review_threads: usize,
    /// Time allowed for a TLS handshake (the API server needs milliseconds).
    #[arg(long, env = "ADMISSION_KIT_HANDSHAKE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Time allowed to send a request's headers.
    #[arg(long, env = "ADMISSION_KIT_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub header_read_timeout: Duration,
    /// Time allowed for a whole request (body and answer); 408 after it.
    #[arg(long, env = "ADMISSION_KIT_REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[arg(long, env = "ADMISSION_KIT_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub idle_timeout: Duration,
    /// On SIGTERM, keep serving this long while unready.
    #[arg(long, env = "ADMISSION_KIT_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub drain_delay: Duration,
    /// Then wait at most this long for in-flight requests.
    #[arg(long, env = "ADMISSION_KIT_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    #[serde(with = "duration_text")]
    pub shutdown_timeout: Duration,
    /// Namespace label cache: auto (watch when a cluster is reachable), always, or never.
    #[arg(long, env = "ADMISSION_KIT_NAMESPACE_CACHE", value_enum, default_value_t = NamespaceCacheMode::Auto)]
    pub namespace_cache: NamespaceCacheMode,
    /// How long a watch cache may be out of contact with the API server before /readyz fails
    /// (`never` or `0`: it never fails for that). Until then the webhook answers from the cache and
    /// /readyz says `ok (degraded)`. Every replica loses contact at once in most outages, and no
    /// ready replica means failurePolicy for every request: keep it long.
    #[arg(long, env = "ADMISSION_KIT_CACHE_MAX_STALENESS", default_value = "10m")]
    pub cache_max_staleness: MaxStaleness,
    /// Log format.
    #[arg(long, env = "ADMISSION_KIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter, `RUST_LOG` syntax (default: `$RUST_LOG`, else `info,kube_runtime::watcher=error`).
    #[arg(long, env = "ADMISSION_KIT_LOG")]
    pub log: Option<String>,
}

impl Default for ServeSettings {
    fn default() -> Self {
        let server = ServerConfig::default();
        Self {
            webhook_addr: server.webhook_addr,
            admin_addr: server.admin_addr,
            tls_cert_file: None,
            tls_key_file: None,
            cert_reload_interval: Duration::from_secs(10),
            self_signed_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            write_ca: None,
            max_body_bytes: server.max_body_bytes,
            max_connections: server.max_connections,
            max_handshakes: server.max_handshakes,
            max_handshakes_per_peer: server.max_handshakes_per_peer,
            review_threads: server.review_threads,
            metrics_on_webhook_port: server.metrics_on_webhook_port,
            handshake_timeout: server.handshake_timeout,
            header_read_timeout: server.header_read_timeout,
            request_timeout: server.request_timeout,
            idle_timeout: server.idle_timeout,
            drain_delay: server.drain_delay,
            shutdown_timeout: server.shutdown_timeout,
            namespace_cache: NamespaceCacheMode::Auto,
            cache_max_staleness: MaxStaleness(server.cache_max_staleness),
            log_format: LogFormat::Text,
            log: None,
        }
    }
}

/// A serving setting that has the right type but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` {problem}")]
#[non_exhaustive]
pub struct SettingsError {
    /// The camelCase key.
    pub key: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

impl ServeSettings {
    /// Settings for tests and local runs: both ports on 127.0.0.1, chosen by the OS, a generated
    /// certificate, no drain delay.
    #[must_use]
    pub fn local() -> Self {
        let local = ServerConfig::local();
        Self {
            webhook_addr: local.webhook_addr,
            admin_addr: local.admin_addr,
            drain_delay: local.drain_delay,
            ..Self::default()
        }
    }

    /// The server configuration these settings describe.
    ///
    /// # Errors
    /// When only one of the certificate and key files is set, or a limit is zero.
    pub fn server_config(&self) -> Result<ServerConfig, SettingsError> {
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => {
                TlsSource::Files { cert: cert.clone(), key: key.clone(), reload_interval: self.cert_reload_interval }
            }
            (None, None) => TlsSource::SelfSigned { names: self.self_signed_names.clone() },
            (Some(_), None) => {
                return Err(SettingsError {
                    key: "tlsCertFile",
                    problem: "is set without the key file: set both, or neither for a self-signed certificate"
                        .to_owned(),
                });
            }
            (None, Some(_)) => {
                return Err(SettingsError {
                    key: "tlsKeyFile",
                    problem: "is set without the certificate file: set both, or neither for a self-signed certificate"
                        .to_owned(),
                });
            }
        };
        for (key, value) in [
            ("maxConnections", self.max_connections),
            ("maxBodyBytes", self.max_body_bytes),
            ("maxHandshakes", self.max_handshakes),
            ("maxHandshakesPerPeer", self.max_handshakes_per_peer),
        ] {
            if value == 0 {
                return Err(SettingsError { key, problem: "must be at least 1".to_owned() });
            }
        }
        Ok(ServerConfig {
            webhook_addr: self.webhook_addr,
            admin_addr: self.admin_addr,
            tls,
            max_body_bytes: self.max_body_bytes,
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_peer: self.max_handshakes_per_peer,
            review_threads: self.review_threads,
            metrics_on_webhook_port: self.metrics_on_webhook_port,
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            request_timeout: self.request_timeout,
            idle_timeout: self.idle_timeout,
            drain_delay: self.drain_delay,
            shutdown_timeout: self.shutdown_timeout,
            cache_max_staleness: self.cache_max_staleness.0,
        })
    }
}
