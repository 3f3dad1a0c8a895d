//! Label requirements, the shared atom of `namespaceSelector`, `objectSelector` and label matchers.
//!
//! Semantics follow
//! <https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#set-based-requirement>.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// A label selector operator with its values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelOp {
    /// The label is present with one of the values.
    In(Vec<String>),
    /// The label is absent, or present with none of the values.
    NotIn(Vec<String>),
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One requirement on a label set, e.g. `kubernetes-sidecar-injector In (enabled)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LabelRequirement {
    /// The label key.
    pub key: String,
    /// The operator and values.
    pub op: LabelOp,
}

/// A `LabelSelector` that cannot be turned into requirements.
#[derive(Debug, thiserror::Error)]
#[error("failed to read label selector: operator `{operator}` on key `{key}` is not In, NotIn, Exists or DoesNotExist")]
pub struct SelectorError {
    key: String,
    operator: String,
}

impl SelectorError {
    /// The key of the expression with the unknown operator.
    #[must_use]
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator that is not one of the four.
    #[must_use]
    pub fn operator(&self) -> &str {
        &self.operator
    }
}

impl LabelRequirement {
    /// A requirement on `key`.
    #[must_use]
    pub fn new(key: impl Into<String>, op: LabelOp) -> Self {
        Self { key: key.into(), op }
    }

    /// Whether `labels` meet the requirement.
    #[must_use]
    pub fn matches<'a, V: AsRef<str> + 'a>(&self, value_of: impl FnOnce(&str) -> Option<V>) -> bool {
        let value = value_of(&self.key);
        match &self.op {
            LabelOp::Exists => value.is_some(),
            LabelOp::DoesNotExist => value.is_none(),
            LabelOp::In(values) => value.is_some_and(|v| values.iter().any(|x| x == v.as_ref())),
            LabelOp::NotIn(values) => !value.is_some_and(|v| values.iter().any(|x| x == v.as_ref())),
        }
    }

    /// Whether a label map meets the requirement.
    #[must_use]
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches(|k| labels.get(k))
    }

    /// The Kubernetes form, for `matchExpressions`.
    #[must_use]
    pub fn to_k8s(&self) -> LabelSelectorRequirement {
        let (operator, values) = match &self.op {
            LabelOp::In(v) => ("In", Some(v.clone())),
            LabelOp::NotIn(v) => ("NotIn", Some(v.clone())),
            LabelOp::Exists => ("Exists", None),
            LabelOp::DoesNotExist => ("DoesNotExist", None),
        };
        LabelSelectorRequirement { key: self.key.clone(), operator: operator.to_owned(), values }
    }

    /// The requirement as CEL over a string map at `map` (e.g. `object.metadata.labels`).
    #[must_use]
    pub fn to_cel(&self, map: &str) -> String {
        let key = cel_string(&self.key);
        let present = format!("has({map}) && {key} in {map}");
        let list =
            |values: &[String]| format!("[{}]", values.iter().map(|v| cel_string(v)).collect::<Vec<_>>().join(", "));
        match &self.op {
            LabelOp::Exists => present,
            LabelOp::DoesNotExist => format!("!({present})"),
            LabelOp::In(values) => format!("{present} && {map}[{key}] in {}", list(values)),
            LabelOp::NotIn(values) => format!("!({present} && {map}[{key}] in {})", list(values)),
        }
    }
}

impl fmt::Display for LabelRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            LabelOp::In(v) if v.len() == 1 => write!(f, "{}={}", self.key, v[0]),
            LabelOp::In(v) => write!(f, "{} in ({})", self.key, v.join(",")),
            LabelOp::NotIn(v) => write!(f, "{} notin ({})", self.key, v.join(",")),
            LabelOp::Exists => write!(f, "{}", self.key),
            LabelOp::DoesNotExist => write!(f, "!{}", self.key),
        }
    }
}

/// A CEL string literal: single-quoted, with `\`, `'` and control characters escaped.
#[must_use]
pub fn cel_string(s: &str) -> String {
    crate::policy::cel::quoted(s, '\'')
}

pub(super) fn from_selector(selector: &LabelSelector) -> Result<Vec<LabelRequirement>, SelectorError> {
    let mut out: Vec<LabelRequirement> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| LabelRequirement::new(k.clone(), LabelOp::In(vec![v.clone()])))
        .collect();
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default();
        let op = match expr.operator.as_str() {
            "In" => LabelOp::In(values),
            "NotIn" => LabelOp::NotIn(values),
            "Exists" => LabelOp::Exists,
            "DoesNotExist" => LabelOp::DoesNotExist,
            other => {
                return Err(SelectorError { key: expr.key.clone(), operator: other.to_owned() });
            }
        };
        out.push(LabelRequirement::new(expr.key.clone(), op));
    }
    Ok(out)
}
