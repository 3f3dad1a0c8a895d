//! The typed configuration: built-in defaults ([`DEFAULT_CONFIG`]) or a YAML file, checked when
//! loaded so that a wrong value fails at start, naming the key and the file, instead of being
//! rejected later by the API server on somebody's pod.
//!
//! Keys are camelCase as in Kubernetes. The values follow the Kubernetes types they become:
//! [resource quantities](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/),
//! [tolerations](https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/) and
//! [topology spread constraints](https://kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints/).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use serde::Deserialize;

/// The built-in configuration, used when no file is given.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("failed to read pod-defaults configuration {path}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not describe a valid configuration.
    #[error("failed to load pod-defaults configuration from {source_name}: {message}")]
    Invalid {
        /// Where the YAML came from.
        source_name: String,
        /// What is wrong, with the key and position.
        message: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Config {
    /// Namespaces whose pods are never defaulted.
    pub excluded_namespaces: Vec<String>,
    /// Requests and limits for containers that set neither.
    pub resources: Option<ResourceDefaults>,
    /// Tolerations every pod gets.
    pub tolerations: Vec<TolerationDefault>,
    /// A topology spread over the pod's own labels.
    pub topology_spread: Option<TopologySpreadDefault>,
}

impl Config {
    /// The built-in configuration ([`DEFAULT_CONFIG`]).
    pub fn built_in() -> Result<Self, ConfigError> {
        Self::from_yaml(DEFAULT_CONFIG, "the built-in configuration")
    }

    /// Reads a YAML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Parses YAML; `source_name` says where it came from in errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid { source_name: source_name.to_owned(), message };
        let config: Self = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if let Some(resources) = &config.resources {
            resources.check().map_err(invalid)?;
        }
        Ok(config)
    }
}

/// A Kubernetes resource quantity (`100m`, `128Mi`, `1.5`, `2e3`), checked when loaded. Written
/// as a YAML string or number.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantity {
    text: String,
    value: f64,
}

impl Quantity {
    /// Parses the quantity grammar: a non-negative decimal number and an optional binary (`Ki` …
    /// `Ei`), decimal (`n`, `u`, `m`, `k`, `M` … `E`) or exponent (`e3`) suffix.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("`{text}` is not a resource quantity like 100m, 128Mi or 1.5");
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        let number_end = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
        let (number, suffix) = unsigned.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return Err(bad());
        }
        let base: f64 = number.parse().map_err(|_| bad())?;
        let multiplier = match suffix {
            "" => 1.0,
            "n" => 1e-9,
            "u" => 1e-6,
            "m" => 1e-3,
            "k" => 1e3,
            "M" => 1e6,
            "G" => 1e9,
            "T" => 1e12,
            "P" => 1e15,
            "E" => 1e18,
            "Ki" => 1024f64,
            "Mi" => 1024f64.powi(2),
            "Gi" => 1024f64.powi(3),
            "Ti" => 1024f64.powi(4),
            "Pi" => 1024f64.powi(5),
            "Ei" => 1024f64.powi(6),
            exponent => {
                let digits = exponent.strip_prefix(['e', 'E']).ok_or_else(bad)?;
                10f64.powi(digits.parse::<i32>().map_err(|_| bad())?)
            }
        };
        Ok(Self { text: text.to_owned(), value: base * multiplier })
    }

    /// The quantity as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The Kubernetes type.
    #[must_use]
    pub fn to_k8s(&self) -> K8sQuantity {
        K8sQuantity(self.text.clone())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a resource quantity like 100m, 128Mi or 1.5")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Quantity, E> {
                Quantity::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Quantity, E> {
                self.visit_str(&v.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Requests and limits, by resource name (`cpu`, `memory`, `ephemeral-storage`, …).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ResourceDefaults {
    /// Requests.
    pub requests: BTreeMap<String, Quantity>,
    /// Limits.
    pub limits: BTreeMap<String, Quantity>,
}

impl ResourceDefaults {
    /// A request above its limit would make every defaulted pod invalid.
    fn check(&self) -> Result<(), String> {
        for (name, request) in &self.requests {
            if let Some(limit) = self.limits.get(name).filter(|limit| request.value > limit.value) {
                return Err(format!(
                    "resources.requests.{name} ({}) is above resources.limits.{name} ({})",
                    request.as_str(),
                    limit.as_str()
                ));
            }
        }
        Ok(())
    }

    /// The Kubernetes type; an empty map is left out.
    #[must_use]
    pub fn to_k8s(&self) -> ResourceRequirements {
        let convert = |m: &BTreeMap<String, Quantity>| {
            (!m.is_empty()).then(|| m.iter().map(|(k, v)| (k.clone(), v.to_k8s())).collect())
        };
        ResourceRequirements { requests: convert(&self.requests), limits: convert(&self.limits), claims: None }
    }
}

/// How a toleration matches a taint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum TolerationOperator {
    /// The taint has the key and the value.
    #[default]
    Equal,
    /// The taint has the key (any value; with no key, any taint).
    Exists,
}

/// Which taint effect a toleration tolerates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum TaintEffect {
    /// New pods are not scheduled.
    NoSchedule,
    /// New pods are avoided.
    PreferNoSchedule,
    /// Running pods are evicted.
    NoExecute,
}

/// A toleration, checked against the API server's rules when loaded.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, try_from = "RawToleration")]
#[non_exhaustive]
pub struct TolerationDefault {
    /// The taint key (`None`: any key, with `Exists`).
    pub key: Option<String>,
    /// How the value is matched.
    pub operator: TolerationOperator,
    /// The taint value (`Equal` only).
    pub value: Option<String>,
    /// The effect (`None`: any effect).
    pub effect: Option<TaintEffect>,
    /// How long a `NoExecute` taint is tolerated.
    pub toleration_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawToleration {
    key: Option<String>,
    #[serde(default)]
    operator: TolerationOperator,
    value: Option<String>,
    effect: Option<TaintEffect>,
    toleration_seconds: Option<i64>,
}

impl TryFrom<RawToleration> for TolerationDefault {
    type Error = String;

    fn try_from(raw: RawToleration) -> Result<Self, String> {
        let key = raw.key.filter(|k| !k.is_empty());
        let value = raw.value.filter(|v| !v.is_empty());
        if key.is_none() && raw.operator != TolerationOperator::Exists {
            return Err("a toleration without a key must use operator Exists".to_owned());
        }
        if raw.operator == TolerationOperator::Exists && value.is_some() {
            return Err("a toleration with operator Exists must not have a value".to_owned());
        }
        if raw.toleration_seconds.is_some() && raw.effect != Some(TaintEffect::NoExecute) {
            return Err("tolerationSeconds needs effect NoExecute".to_owned());
        }
        Ok(Self { key, operator: raw.operator, value, effect: raw.effect, toleration_seconds: raw.toleration_seconds })
    }
}

impl TolerationDefault {
    /// The Kubernetes type.
    #[must_use]
    pub fn to_k8s(&self) -> Toleration {
        Toleration {
            key: self.key.clone(),
            operator: Some(format!("{:?}", self.operator)),
            value: self.value.clone(),
            effect: self.effect.map(|e| format!("{e:?}")),
            toleration_seconds: self.toleration_seconds,
        }
    }

    /// Whether `existing` is this toleration (an absent operator is `Equal`, an absent value or
    /// effect is empty, as the API server reads them).
    #[must_use]
    pub fn is(&self, existing: &Toleration) -> bool {
        let text = |s: &Option<String>| s.clone().unwrap_or_default();
        let mine = self.to_k8s();
        text(&existing.key) == text(&mine.key)
            && existing.operator.clone().unwrap_or_else(|| "Equal".to_owned()) == text(&mine.operator)
            && text(&existing.value) == text(&mine.value)
            && text(&existing.effect) == text(&mine.effect)
            && existing.toleration_seconds == mine.toleration_seconds
    }
}

/// What the scheduler does when the spread cannot be met.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum WhenUnsatisfiable {
    /// Schedule anyway, preferring less skewed domains (the safe default).
    #[default]
    ScheduleAnyway,
    /// Leave the pod pending.
    DoNotSchedule,
}

/// A topology spread over the pod's own labels.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct TopologySpreadDefault {
    /// The node label whose values are the domains (zones by default).
    #[serde(default = "zone_key")]
    pub topology_key: String,
    /// The largest allowed difference of matching pods between two domains (at least 1).
    #[serde(default = "one", deserialize_with = "positive")]
    pub max_skew: i32,
    /// What the scheduler does when the spread cannot be met.
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
    /// Pod labels left out of the selector because they name one pod or one revision, not the
    /// workload (by default the `StatefulSet` pod name and index, and revision hashes).
    #[serde(default = "identity_labels")]
    pub exclude_labels: Vec<String>,
}

fn zone_key() -> String {
    "topology.kubernetes.io/zone".to_owned()
}

fn one() -> i32 {
    1
}

fn positive<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i32, D::Error> {
    let skew = i32::deserialize(deserializer)?;
    if skew < 1 {
        return Err(serde::de::Error::custom(format!("maxSkew must be at least 1, got {skew}")));
    }
    Ok(skew)
}

fn identity_labels() -> Vec<String> {
    [
        "statefulset.kubernetes.io/pod-name",
        "apps.kubernetes.io/pod-index",
        "controller-revision-hash",
        "pod-template-hash",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, String> {
        Config::from_yaml(yaml, "test.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_built_in_configuration_loads() {
        let config = Config::built_in().unwrap();
        assert_eq!(config.excluded_namespaces, ["kube-system"]);
        let resources = config.resources.unwrap();
        assert_eq!(resources.requests["cpu"].as_str(), "100m");
        assert_eq!(config.tolerations[0].operator, TolerationOperator::Exists);
        let spread = config.topology_spread.unwrap();
        assert_eq!((spread.topology_key.as_str(), spread.max_skew), ("topology.kubernetes.io/zone", 1));
        assert!(spread.exclude_labels.contains(&"pod-template-hash".to_owned()));
    }

    #[test]
    fn an_empty_file_defaults_nothing() {
        assert_eq!(load("{}").unwrap(), Config::default());
    }

    #[test]
    fn quantities_follow_the_kubernetes_grammar() {
        for ok in ["1", "0.5", ".5", "5.", "+1", "100m", "128Mi", "1Gi", "2e3", "2E-3", "1.5k", "3n"] {
            assert!(Quantity::parse(ok).is_ok(), "`{ok}` should parse");
        }
        for bad in ["", "m", "1x", "1mi", "-1", "1e", "1e+", "1..2", ".", "1 Gi", "Gi1"] {
            assert!(Quantity::parse(bad).is_err(), "`{bad}` should not parse");
        }
        assert!((Quantity::parse("1Ki").unwrap().value - 1024.0).abs() < f64::EPSILON);
        assert!(Quantity::parse("500m").unwrap().value < Quantity::parse("1").unwrap().value);
        // YAML numbers are quantities too.
        let config = load("resources: {requests: {cpu: 1, memory: 0.5}}").unwrap();
        assert_eq!(config.resources.unwrap().requests["memory"].as_str(), "0.5");
    }

    #[test]
    fn wrong_values_name_the_key_and_the_source() {
        let cases = [
            ("resources: {requests: {cpu: 1x}}", "`1x` is not a resource quantity"),
            (
                "resources: {requests: {memory: 1Gi}, limits: {memory: 512Mi}}",
                "resources.requests.memory (1Gi) is above",
            ),
            ("resource: {}", "resource"),
            ("tolerations: [{operator: Equal}]", "without a key must use operator Exists"),
            ("tolerations: [{key: a, operator: Exists, value: b}]", "must not have a value"),
            ("tolerations: [{key: a, tolerationSeconds: 5}]", "tolerationSeconds needs effect NoExecute"),
            ("tolerations: [{key: a, effect: NoScheduled}]", "NoScheduled"),
            ("topologySpread: {maxSkew: 0}", "maxSkew must be at least 1"),
            ("topologySpread: {whenUnsatisfiable: Never}", "Never"),
        ];
        for (yaml, fragment) in cases {
            let error = load(yaml).expect_err(yaml);
            assert!(error.contains("test.yaml") && error.contains(fragment), "{yaml}: {error}");
        }
    }

    #[test]
    fn tolerations_compare_as_the_api_server_reads_them() {
        let default = load("tolerations: [{key: a, value: b}]").unwrap().tolerations.remove(0);
        let written = Toleration { key: Some("a".into()), value: Some("b".into()), ..Toleration::default() };
        assert!(default.is(&written));
        assert!(default.is(&default.to_k8s()));
        assert!(!default.is(&Toleration { effect: Some("NoSchedule".into()), ..written }));
    }
}
