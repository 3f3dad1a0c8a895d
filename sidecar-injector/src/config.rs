//! Configuration, layered with figment: built-in defaults < YAML file (`--config`) < environment
//! (`SIDECAR_INJECTOR_…`) < flags (`--set key=value`, `--catalog`). Keys are camelCase as in
//! Kubernetes; environment variables are the keys in `SCREAMING_SNAKE_CASE`, with `__` between a
//! section and its key (`SIDECAR_INJECTOR_SERVER__WEBHOOK_ADDR`). Every error names the key and
//! where its value came from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use admission_kit::app::{ServeSettings, duration_text};
use admission_kit::pipeline::{FailurePolicy, ReinvocationPolicy};
use admission_kit::server::ServerConfig;
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Yaml};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::env_rules::AnnotationEnv;
use crate::settings::{CollisionPolicy, EnvNames, InjectionSettings, Limits, NativePlacement, UnknownSidecarPolicy};

/// The prefix of environment variables.
pub const ENV_PREFIX: &str = "SIDECAR_INJECTOR_";

/// The whole configuration. Defaults reproduce the Expedia injector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
#[allow(clippy::struct_excessive_bools, reason = "each bool is an independent, documented configuration key")]
pub struct Config {
    /// Annotation prefix: `<prefix>/inject`, `<prefix>/status`, `<prefix>/<key>` env vars.
    pub annotation_prefix: String,
    /// The name under the prefix of the annotation listing the sidecars: `<prefix>/<name>`.
    pub inject_annotation_name: String,
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
    #[serde(with = "duration_text")]
    pub catalog_reload_interval: Duration,
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
    pub failure_policy: FailurePolicy,
    /// The webhook's `timeoutSeconds` (1–30).
    pub timeout_seconds: i32,
    /// `Never` or `IfNeeded`.
    pub reinvocation_policy: ReinvocationPolicy,
    /// Whether to render `matchConditions` (Kubernetes ≥ 1.30).
    pub match_conditions: bool,
    /// Caps on what one pod may ask (`limits.maxInjectNames`, `limits.maxEnvAnnotations`,
    /// `limits.maxAnnotationBytes`); a pod over one is denied with a message naming it.
    pub limits: Limits,
    /// Which env vars a pod's annotations may set in injected containers (`annotationEnv.allow`,
    /// `.deny`, `.exempt`, `.locked`, `.maxVars`, `.maxValueBytes`, `.onViolation`); a catalog
    /// entry's own `annotationEnv` replaces these for its containers.
    pub annotation_env: AnnotationEnv,
    /// The server: every setting of admission-kit's server, under `server.` (`server.webhookAddr`,
    /// `server.handshakeTimeout`, …).
    pub server: ServeSettings,
}

impl Default for Config {
    fn default() -> Self {
        let injection = InjectionSettings::default();
        Self {
            annotation_prefix: injection.annotation_prefix,
            inject_annotation_name: injection.inject_annotation_name,
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
            catalog_reload_interval: Duration::from_secs(10),
            namespace_catalogs: false,
            namespace_catalog_key: "sidecars.yaml".to_owned(),
            namespace_catalog_selector: String::new(),
            webhook_name: "sidecar-injector.expedia.com".to_owned(),
            failure_policy: FailurePolicy::Fail,
            timeout_seconds: 10,
            reinvocation_policy: ReinvocationPolicy::IfNeeded,
            match_conditions: true,
            limits: injection.limits,
            annotation_env: injection.annotation_env,
            server: ServeSettings::default(),
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
        /// The camelCase key, dotted.
        key: String,
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

impl Config {
    /// Reads and checks the configuration.
    pub fn load(file: Option<&Path>, overrides: &[(String, Value)]) -> Result<Self, ConfigError> {
        let config: Self = figment(file, overrides).extract().map_err(Box::new)?;
        config.check()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn check(&self) -> Result<(), ConfigError> {
        let bad =
            |key: &str, problem: &str| Err(ConfigError::Value { key: key.to_owned(), problem: problem.to_owned() });
        if self.annotation_prefix.trim_matches('/').is_empty() || self.annotation_prefix.contains(char::is_whitespace) {
            return bad("annotationPrefix", "must be a DNS-style prefix such as sidecar-injector.expedia.com");
        }
        let name = &self.inject_annotation_name;
        if name.is_empty()
            || name == "status"
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return bad(
                "injectAnnotationName",
                "must be a name such as inject (letters, digits, `-`, `_`, `.`; not `status`, which the injector writes)",
            );
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
        if self.catalog_reload_interval.is_zero() {
            return bad("catalogReloadInterval", "must be longer than 0s");
        }
        self.server_config()?;
        Ok(())
    }

    /// The injection settings.
    #[must_use]
    pub fn injection(&self) -> InjectionSettings {
        InjectionSettings {
            annotation_prefix: self.annotation_prefix.trim_end_matches('/').to_owned(),
            inject_annotation_name: self.inject_annotation_name.clone(),
            unknown_sidecar: self.unknown_sidecar,
            on_collision: self.on_collision,
            override_pod_metadata: self.override_pod_metadata,
            env_names: self.env_names,
            native_sidecar_placement: self.native_sidecar_placement,
            literal_env_values: self.literal_env_values,
            limits: self.limits,
            annotation_env: self.annotation_env.clone(),
        }
    }

    /// The admission-kit server configuration.
    pub fn server_config(&self) -> Result<ServerConfig, ConfigError> {
        self.server
            .server_config()
            .map_err(|error| ConfigError::Value { key: format!("server.{}", error.key), problem: error.problem })
    }
}

#[cfg(test)]
mod tests;
