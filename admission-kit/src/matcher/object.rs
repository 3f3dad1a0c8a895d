//! Built-in matchers over the namespace and the object's metadata.

use serde_json::Value;

use super::{Decision, LabelOp, LabelRequirement, MatchInput, Matcher, NamespaceView, ServerFilter};

/// Label every namespace carries with its own name (Kubernetes ≥ 1.21), used to render
/// namespace-name matchers as a `namespaceSelector`.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The request's namespace has labels meeting a requirement.
#[derive(Clone, Debug)]
pub struct NamespaceLabelMatcher(pub LabelRequirement);

impl Matcher for NamespaceLabelMatcher {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        // A Namespace object is matched on its own labels, as the API server does (whatever the
        // request's `namespace` field holds for it).
        if input.request.kind.kind == "Namespace" && input.request.kind.group.is_empty() {
            let labels = input.object_map("labels");
            return Decision::from_bool(self.0.matches(|k| labels.and_then(|m| m.get(k)).and_then(Value::as_str)));
        }
        if input.request.namespace.is_none() {
            return Decision::NoMatch;
        }
        match input.namespace {
            NamespaceView::Known(labels) => Decision::from_bool(self.0.matches_map(labels)),
            NamespaceView::Unknown { enforced } if enforced.contains(&self.0) => Decision::Match,
            NamespaceView::Unknown { .. } => Decision::Unknown(format!(
                "namespace labels are unknown (no namespace cache) and `{}` is not enforced by the webhook's namespaceSelector",
                self.0
            )),
        }
    }

    fn server_filter(&self) -> ServerFilter {
        ServerFilter { namespace: vec![self.0.clone()], exact: true, ..ServerFilter::none() }
    }

    fn describe(&self) -> String {
        format!("namespace label {}", self.0)
    }

    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        vec![self.0.clone()]
    }
}

/// The request's namespace is (or is not) one of a list of names.
#[derive(Clone, Debug)]
pub struct NamespaceNameMatcher {
    names: Vec<String>,
    negate: bool,
}

impl NamespaceNameMatcher {
    /// Namespaces other than `names`; cluster-scoped objects match.
    pub fn not_in<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self { names: names.into_iter().map(Into::into).collect(), negate: true }
    }

    /// Only namespaces in `names`.
    pub fn one_of<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self { names: names.into_iter().map(Into::into).collect(), negate: false }
    }

    /// The listed names.
    #[must_use]
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

impl Matcher for NamespaceNameMatcher {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        let listed = input.request.namespace.as_ref().is_some_and(|ns| self.names.contains(ns));
        Decision::from_bool(listed != self.negate)
    }

    fn server_filter(&self) -> ServerFilter {
        if self.names.is_empty() {
            // `NotIn ()` is rejected by the API server; an empty list excludes nothing (or, for
            // `one_of`, admits nothing and is decided in-process).
            return ServerFilter { exact: self.negate, ..ServerFilter::none() };
        }
        let op = if self.negate { LabelOp::NotIn(self.names.clone()) } else { LabelOp::In(self.names.clone()) };
        // Exact for namespaced objects; cluster-scoped ones are never filtered by a namespaceSelector
        // and are decided in-process, so the filter stays a necessary condition.
        ServerFilter {
            namespace: vec![LabelRequirement::new(NAMESPACE_NAME_LABEL, op)],
            exact: self.negate,
            ..ServerFilter::none()
        }
    }

    fn describe(&self) -> String {
        format!("namespace {} [{}]", if self.negate { "not in" } else { "in" }, self.names.join(", "))
    }
}

/// The object has an annotation (present, or with a value in a set).
#[derive(Clone, Debug)]
pub struct AnnotationMatcher {
    key: String,
    values: Option<Vec<String>>,
}

impl AnnotationMatcher {
    /// Annotation `key` is present.
    pub fn present(key: impl Into<String>) -> Self {
        Self { key: key.into(), values: None }
    }

    /// Annotation `key` has one of `values`.
    pub fn value_in<S: Into<String>>(key: impl Into<String>, values: impl IntoIterator<Item = S>) -> Self {
        Self { key: key.into(), values: Some(values.into_iter().map(Into::into).collect()) }
    }
}

impl Matcher for AnnotationMatcher {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        let value = input.object_map("annotations").and_then(|m| m.get(&self.key));
        Decision::from_bool(match (&self.values, value) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(values), Some(v)) => v.as_str().is_some_and(|v| values.iter().any(|x| x == v)),
        })
    }

    fn server_filter(&self) -> ServerFilter {
        // Annotations are a string map like labels: the same CEL as a label requirement.
        let op = self.values.clone().map_or(LabelOp::Exists, LabelOp::In);
        let condition = LabelRequirement::new(self.key.clone(), op).to_cel("object.metadata.annotations");
        ServerFilter { condition: Some(condition), exact: true, ..ServerFilter::none() }
    }

    fn describe(&self) -> String {
        match &self.values {
            None => format!("annotation {}", self.key),
            Some(v) => format!("annotation {} in ({})", self.key, v.join(",")),
        }
    }
}

/// The object's labels meet every requirement.
#[derive(Clone, Debug)]
pub struct ObjectLabelMatcher(pub Vec<LabelRequirement>);

impl Matcher for ObjectLabelMatcher {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        let labels = input.object_map("labels");
        Decision::from_bool(self.0.iter().all(|r| r.matches(|k| labels.and_then(|m| m.get(k)).and_then(Value::as_str))))
    }

    fn server_filter(&self) -> ServerFilter {
        ServerFilter { object: self.0.clone(), exact: true, ..ServerFilter::none() }
    }

    fn describe(&self) -> String {
        format!("object labels {}", self.0.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
    }
}
