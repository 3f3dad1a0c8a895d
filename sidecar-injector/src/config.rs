//! Configuration, layered with figment: built-in defaults < YAML file (`--config`) < environment
//! (`SIDECAR_INJECTOR_…`) < flags (`--set key=value`, `--catalog`). Keys are camelCase as in
//! Kubernetes; environment variables are the keys in `SCREAMING_SNAKE_CASE`, with `__` between a
//! section and its key (`SIDECAR_INJECTOR_SERVER__WEBHOOK_ADDR`). Every error names the key and
//! where its value came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use admission_kit::pipeline::{FailurePolicy, ReinvocationPolicy};
use admission_kit::server::ServerConfig;
use admission_kit::tls::TlsSource;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Yaml};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::{CollisionPolicy, EnvNames, InjectionSettings, Limits, NativePlacement, UnknownSidecarPolicy};

/// The prefix of environment variables.
pub const ENV_PREFIX: &str = "SIDECAR_INJECTOR_";

/// The server part of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ServerSettings {
    /// HTTPS webhook address.
    pub webhook_addr: SocketAddr,
    /// Plain-HTTP admin address (`/livez`, `/readyz`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// Serving certificate (PEM); without it a self-signed one is generated.
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key (PEM).
    pub tls_key_file: Option<PathBuf>,
    /// How often certificate files are checked for a change.
    pub cert_reload_interval: String,
    /// Names for a generated certificate.
    pub self_signed_names: Vec<String>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Most open connections.
    pub max_connections: usize,
    /// On SIGTERM, keep serving this long while unready.
    pub drain_delay: String,
    /// Then wait at most this long for in-flight requests.
    pub shutdown_timeout: String,
    /// Watch namespaces for their labels: `auto`, `always` or `never`.
    pub namespace_cache: String,
    /// How long a watch cache (namespace labels, `ConfigMap` catalogs) may be out of contact with
    /// the API server before `/readyz` fails: a duration, or `never` (also `0`). Until then the
    /// injector answers from the cache and `/readyz` says `ok (degraded)`.
    #[serde(deserialize_with = "string_or_number")]
    pub cache_max_staleness: String,
    /// Log format: `text` or `json`.
    pub log_format: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            webhook_addr: SocketAddr::from(([0, 0, 0, 0], 8443)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            tls_cert_file: None,
            tls_key_file: None,
            cert_reload_interval: "10s".to_owned(),
            self_signed_names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            max_body_bytes: 4 * 1024 * 1024,
            max_connections: 1024,
            drain_delay: "5s".to_owned(),
            shutdown_timeout: "30s".to_owned(),
            namespace_cache: "auto".to_owned(),
            cache_max_staleness: "10m".to_owned(),
            log_format: "text".to_owned(),
        }
    }
}

/// A string, or a number as its text: `0` from an environment variable or `--set` arrives as a
/// number, and means what `"0"` does.
fn string_or_number<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

/// The whole configuration. Defaults reproduce the Expedia injector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
#[allow(clippy::struct_excessive_bools, reason = "each bool is an independent, documented configuration key")]
pub struct Config {
    /// Annotation prefix: `<prefix>/inject`, `<prefix>/status`, `<prefix>/<key>` env vars.
    pub annotation_prefix: String,
    /// The namespace label that opts a namespace in (key).
    pub namespace_label_key: String,
    /// The namespace label that opts a namespace in (value).
    pub namespace_label_value: String,
    /// Namespaces never mutated, whatever their labels.
    pub excluded_namespaces: Vec<String>,
    /// `deny` or `warn` when a pod asks for a sidecar the catalog lacks.
    pub unknown_sidecar: UnknownSidecarPolicy,
    /// `deny` or `skip` when a sidecar's container or volume name is taken.
    pub on_collision: CollisionPolicy,
    /// Whether catalog annotations and labels replace the pod's own.
    pub override_pod_metadata: bool,
    /// `asIs` or `cIdentifier` env var names.
    pub env_names: EnvNames,
    /// `first` or `last`: native sidecars among the pod's init containers.
    pub native_sidecar_placement: NativePlacement,
    /// Escape `$` in env values so kubelet does not expand `$(VAR)` in them.
    pub literal_env_values: bool,
    /// Inline catalog entries (2022 list or 2019 `sidecars:` map).
    pub sidecars: Value,
    /// Catalog files or directories (mounted `ConfigMaps`), hot-reloaded.
    pub catalog_paths: Vec<PathBuf>,
    /// How often catalog files are checked for a change.
    pub catalog_reload_interval: String,
    /// Also read sidecars from `ConfigMaps` in the pod's namespace, named by the `inject`
    /// annotation (the 2022 generation's catalogs); needs cluster access and RBAC to watch them.
    pub namespace_catalogs: bool,
    /// The `ConfigMap` data key holding a namespace catalog.
    pub namespace_catalog_key: String,
    /// Label selector narrowing the watched `ConfigMaps` (empty: all, as the 2022 injector reads).
    pub namespace_catalog_selector: String,
    /// The webhook's name in the `MutatingWebhookConfiguration`.
    pub webhook_name: String,
    /// `Fail` or `Ignore`: what the API server does when the webhook cannot be reached.
    pub failure_policy: String,
    /// The webhook's `timeoutSeconds` (1–30).
    pub timeout_seconds: i32,
    /// `Never` or `IfNeeded`.
    pub reinvocation_policy: String,
    /// Whether to render `matchConditions` (Kubernetes ≥ 1.30).
    pub match_conditions: bool,
    /// Caps on what one pod may ask (`limits.maxInjectNames`, `limits.maxEnvAnnotations`,
    /// `limits.maxAnnotationBytes`); a pod over one is denied with a message naming it.
    pub limits: Limits,
    /// The server.
    pub server: ServerSettings,
}

impl Default for Config {
    fn default() -> Self {
        let injection = InjectionSettings::default();
        Self {
            annotation_prefix: injection.annotation_prefix,
            namespace_label_key: "kubernetes-sidecar-injector".to_owned(),
            namespace_label_value: "enabled".to_owned(),
            excluded_namespaces: vec!["kube-system".to_owned(), "kube-public".to_owned()],
            unknown_sidecar: injection.unknown_sidecar,
            on_collision: injection.on_collision,
            override_pod_metadata: injection.override_pod_metadata,
            env_names: injection.env_names,
            native_sidecar_placement: injection.native_sidecar_placement,
            literal_env_values: injection.literal_env_values,
            sidecars: Value::Null,
            catalog_paths: Vec::new(),
            catalog_reload_interval: "10s".to_owned(),
            namespace_catalogs: false,
            namespace_catalog_key: "sidecars.yaml".to_owned(),
            namespace_catalog_selector: String::new(),
            webhook_name: "sidecar-injector.expedia.com".to_owned(),
            failure_policy: "Fail".to_owned(),
            timeout_seconds: 10,
            reinvocation_policy: "IfNeeded".to_owned(),
            match_conditions: true,
            limits: injection.limits,
            server: ServerSettings::default(),
        }
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value could not be read or has the wrong type; the message names the key (camelCase,
    /// dotted) and where the value came from (the file, or the environment variable's name).
    #[error("invalid configuration: {}", describe(.0))]
    Load(Box<figment::Error>),
    /// A value has the right type but is not acceptable.
    #[error("invalid configuration: `{key}` {problem}")]
    Value {
        /// The camelCase key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl From<Box<figment::Error>> for ConfigError {
    fn from(error: Box<figment::Error>) -> Self {
        Self::Load(error)
    }
}

/// Each of figment's errors as "`key`: problem (from source)", with the key as it is written in
/// the file and the source a person can find: the file's path, the environment variable's name,
/// or the `--set` flag.
fn describe(errors: &figment::Error) -> String {
    errors
        .clone()
        .into_iter()
        .map(|error| {
            let key = error.path.join(".");
            let source = match error.metadata.as_ref() {
                Some(metadata) => match &metadata.source {
                    Some(figment::Source::File(path)) => format!("file {}", path.display()),
                    _ if metadata.name.contains("environment") => format!("environment variable {}", env_var(&key)),
                    _ => format!("--set {key}"),
                },
                None => "the configuration".to_owned(),
            };
            if key.is_empty() {
                format!("{} (from {source})", error.kind)
            } else {
                format!("`{key}`: {} (from {source})", error.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The environment variable of a dotted camelCase key: `server.tlsCertFile` is
/// `SIDECAR_INJECTOR_SERVER__TLS_CERT_FILE`.
#[must_use]
pub fn env_var(key: &str) -> String {
    let parts: Vec<String> = key
        .split('.')
        .map(|part| {
            let mut out = String::new();
            for c in part.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        })
        .collect();
    format!("{ENV_PREFIX}{}", parts.join("__"))
}

/// `snake_case` (figment's view of an environment variable) to camelCase, per `__`-separated part.
fn env_key_to_camel(key: &str) -> String {
    key.split("__")
        .map(|part| {
            let mut out = String::new();
            let mut upper = false;
            for c in part.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.push(c.to_ascii_uppercase());
                    upper = false;
                } else {
                    out.push(c.to_ascii_lowercase());
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The layered sources, before extraction: defaults, the file (or, without one, the embedded
/// [`crate::DEFAULT_CONFIG`]), the environment, then `overrides`
/// (from flags, as `key=value` with dotted keys and YAML values).
#[must_use]
pub fn figment(file: Option<&Path>, overrides: &[(String, Value)]) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    figment = match file {
        Some(file) => figment.merge(Yaml::file_exact(file)),
        // No file: the embedded default configuration, with its example sidecar.
        None => figment.merge(Yaml::string(crate::DEFAULT_CONFIG)),
    };
    // Keys keep the case the camelCase mapping gives them; dots nest (`server.webhookAddr`).
    // `lowercase(false)` must come after `map`: figment's `map` resets it.
    // `SIDECAR_INJECTOR_CONFIG` names the file (the `--config` flag); it is not a key. Nor are
    // the variables kubelet gives every container for each Service of its namespace: a Service
    // named `sidecar-injector` (the chart's) brings `SIDECAR_INJECTOR_PORT=tcp://…`, which the
    // strict key check would refuse, and the injector would never start in its own pod.
    figment = figment.merge(
        Env::prefixed(ENV_PREFIX)
            .filter(|k| !k.as_str().eq_ignore_ascii_case("CONFIG") && !is_service_link(k.as_str()))
            .map(|k| env_key_to_camel(k.as_str()).into())
            .lowercase(false),
    );
    for (key, value) in overrides {
        figment = figment.merge(Serialized::global(key, value.clone()));
    }
    figment
}

/// Whether `key` (an environment variable's name after [`ENV_PREFIX`]) is one kubelet sets for a
/// Service whose name starts with `sidecar-injector` (Docker-link style, see
/// <https://kubernetes.io/docs/concepts/services-networking/service/#environment-variables>):
/// `<SVC>_SERVICE_HOST`, `<SVC>_SERVICE_PORT[_<PORT NAME>]`, `<SVC>_PORT` and
/// `<SVC>_PORT_<N>_<TCP|UDP|SCTP>[_PROTO|_PORT|_ADDR]`. No configuration key has those shapes, and
/// section keys (with `__`) never match.
#[must_use]
pub fn is_service_link(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    if key.contains("__") {
        return false;
    }
    let tokens: Vec<&str> = key.split('_').collect();
    (0..tokens.len()).any(|i| match (tokens[i], &tokens[i + 1..]) {
        ("SERVICE", ["HOST"] | ["PORT", ..]) | ("PORT", []) => true,
        ("PORT", [number, protocol, rest @ ..]) => {
            number.bytes().all(|b| b.is_ascii_digit())
                && !number.is_empty()
                && matches!(*protocol, "TCP" | "UDP" | "SCTP")
                && matches!(rest, [] | ["PROTO" | "PORT" | "ADDR"])
        }
        _ => false,
    })
}

fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    admission_kit::cli::parse_duration(text).map_err(|problem| ConfigError::Value { key, problem })
}

impl Config {
    /// Reads and checks the configuration.
    pub fn load(file: Option<&Path>, overrides: &[(String, Value)]) -> Result<Self, ConfigError> {
        let config: Self = figment(file, overrides).extract().map_err(Box::new)?;
        config.check()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad = |key, problem: &str| Err(ConfigError::Value { key, problem: problem.to_owned() });
        if self.annotation_prefix.trim_matches('/').is_empty() || self.annotation_prefix.contains(char::is_whitespace) {
            return bad("annotationPrefix", "must be a DNS-style prefix such as sidecar-injector.expedia.com");
        }
        if self.namespace_label_key.is_empty() {
            return bad("namespaceLabelKey", "must not be empty");
        }
        if !(1..=30).contains(&self.timeout_seconds) {
            return bad("timeoutSeconds", &format!("must be between 1 and 30, got {}", self.timeout_seconds));
        }
        // A cap of 0 would deny every pod that asks for anything: surely a mistake, not a policy.
        for (key, value) in [
            ("limits.maxInjectNames", self.limits.max_inject_names),
            ("limits.maxEnvAnnotations", self.limits.max_env_annotations),
            ("limits.maxAnnotationBytes", self.limits.max_annotation_bytes),
        ] {
            if value == 0 {
                return bad(key, "must be at least 1");
            }
        }
        self.failure_policy()?;
        self.reinvocation_policy()?;
        duration("catalogReloadInterval", &self.catalog_reload_interval)?;
        self.server_config()?;
        Ok(())
    }

    /// The injection settings.
    #[must_use]
    pub fn injection(&self) -> InjectionSettings {
        InjectionSettings {
            annotation_prefix: self.annotation_prefix.trim_end_matches('/').to_owned(),
            unknown_sidecar: self.unknown_sidecar,
            on_collision: self.on_collision,
            override_pod_metadata: self.override_pod_metadata,
            env_names: self.env_names,
            native_sidecar_placement: self.native_sidecar_placement,
            literal_env_values: self.literal_env_values,
            limits: self.limits,
        }
    }

    /// `failurePolicy`.
    pub fn failure_policy(&self) -> Result<FailurePolicy, ConfigError> {
        match self.failure_policy.as_str() {
            "Fail" => Ok(FailurePolicy::Fail),
            "Ignore" => Ok(FailurePolicy::Ignore),
            other => Err(ConfigError::Value {
                key: "failurePolicy",
                problem: format!("must be Fail or Ignore, got `{other}`"),
            }),
        }
    }

    /// `reinvocationPolicy`.
    pub fn reinvocation_policy(&self) -> Result<ReinvocationPolicy, ConfigError> {
        match self.reinvocation_policy.as_str() {
            "Never" => Ok(ReinvocationPolicy::Never),
            "IfNeeded" => Ok(ReinvocationPolicy::IfNeeded),
            other => Err(ConfigError::Value {
                key: "reinvocationPolicy",
                problem: format!("must be Never or IfNeeded, got `{other}`"),
            }),
        }
    }

    /// How often catalog files are polled.
    pub fn catalog_reload_interval(&self) -> Result<Duration, ConfigError> {
        duration("catalogReloadInterval", &self.catalog_reload_interval)
    }

    /// The admission-kit server configuration.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        let s = &self.server;
        let tls = match (&s.tls_cert_file, &s.tls_key_file) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert: cert.clone(),
                key: key.clone(),
                reload_interval: duration("server.certReloadInterval", &s.cert_reload_interval)?,
            },
            (None, None) => TlsSource::SelfSigned { names: s.self_signed_names.clone() },
            _ => {
                return Err(ConfigError::Value {
                    key: "server.tlsCertFile",
                    problem: "and server.tlsKeyFile must be set together".to_owned(),
                });
            }
        };
        if !matches!(s.namespace_cache.as_str(), "auto" | "always" | "never") {
            return Err(ConfigError::Value {
                key: "server.namespaceCache",
                problem: format!("must be auto, always or never, got `{}`", s.namespace_cache),
            });
        }
        if !matches!(s.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Value {
                key: "server.logFormat",
                problem: format!("must be text or json, got `{}`", s.log_format),
            });
        }
        let mut config = ServerConfig::default();
        config.webhook_addr = s.webhook_addr;
        config.admin_addr = s.admin_addr;
        config.tls = tls;
        config.max_body_bytes = s.max_body_bytes;
        config.max_connections = s.max_connections;
        config.drain_delay = duration("server.drainDelay", &s.drain_delay)?;
        config.shutdown_timeout = duration("server.shutdownTimeout", &s.shutdown_timeout)?;
        config.cache_max_staleness = admission_kit::cli::parse_staleness(&s.cache_max_staleness)
            .map_err(|problem| ConfigError::Value { key: "server.cacheMaxStaleness", problem })?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
