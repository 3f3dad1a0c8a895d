//! Matchers: whether a mutator applies to a request, decided in-process and, where Kubernetes can
//! express it, rendered as the webhook's server-side filter.
//!
//! The server-side filters are the webhook's `namespaceSelector`, `objectSelector` and
//! `matchConditions` (CEL), see
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#matching-requests-namespaceselector>.
//! A [`ServerFilter`] is always a *necessary* condition of its matcher (the API server never filters
//! out a request the matcher would accept); when it is also sufficient it is marked `exact`.
//!
//! Namespace label matchers need the namespace's labels. The server supplies them from a namespace
//! watch cache when it has cluster access ([`crate::namespaces`]); tests supply them explicitly.
//! When they are unknown, a requirement that the webhook's rendered `namespaceSelector` enforces is
//! trusted (the API server only sent the request because it held); anything else is
//! [`Decision::Unknown`], which the pipeline treats as a failure of the step.

mod label;
mod object;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::review::Request;

pub use label::{LabelOp, LabelRequirement, SelectorError};
pub use object::{
    AnnotationMatcher, NAMESPACE_NAME_LABEL, NamespaceLabelMatcher, NamespaceNameMatcher, ObjectLabelMatcher,
};

/// The outcome of a matcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The mutator applies.
    Match,
    /// The mutator does not apply.
    NoMatch,
    /// Cannot be decided from what is known (for example: namespace labels are not cached and the
    /// requirement is not enforced by the API server). The reason is shown to the user.
    Unknown(String),
}

impl Decision {
    fn from_bool(b: bool) -> Self {
        if b { Self::Match } else { Self::NoMatch }
    }
}

/// What the server knows about the request's namespace: its labels (possibly none), or nothing.
///
/// "Known and empty" (`Known` of an empty map: the namespace has no labels) and "unknown" (no
/// namespace cache) are different answers: a `NotIn` or `DoesNotExist` requirement holds for the
/// first and cannot be decided for the second.
#[derive(Clone, Copy, Debug)]
pub enum NamespaceView<'a> {
    /// The namespace's labels (from the cache, or supplied).
    Known(&'a BTreeMap<String, String>),
    /// Not known; `enforced` lists the requirements the webhook's `namespaceSelector` enforces.
    Unknown {
        /// Requirements the API server checked before calling the webhook.
        enforced: &'a [LabelRequirement],
    },
}

impl<'a> NamespaceView<'a> {
    /// Labels unknown, nothing known to be enforced. [`crate::Pipeline::review`] fills in what its
    /// own `namespaceSelector` enforces.
    #[must_use]
    pub const fn unknown() -> Self {
        Self::Unknown { enforced: &[] }
    }

    /// The labels, when known.
    #[must_use]
    pub fn labels(&self) -> Option<&'a BTreeMap<String, String>> {
        match *self {
            Self::Known(labels) => Some(labels),
            Self::Unknown { .. } => None,
        }
    }
}

impl<'a> From<&'a BTreeMap<String, String>> for NamespaceView<'a> {
    fn from(labels: &'a BTreeMap<String, String>) -> Self {
        Self::Known(labels)
    }
}

/// Everything a matcher may look at.
#[derive(Clone, Copy, Debug)]
pub struct MatchInput<'a> {
    /// The admission request.
    pub request: &'a Request,
    /// The object as it stands at this step (after earlier steps' changes); `None` on DELETE.
    pub object: Option<&'a Value>,
    /// The request's namespace labels, or what the API server enforced about them.
    pub namespace: NamespaceView<'a>,
}

impl<'a> MatchInput<'a> {
    /// `metadata.<field>` of the object as a string map, if present.
    fn object_map(&self, field: &str) -> Option<&'a serde_json::Map<String, Value>> {
        self.object?.get("metadata")?.get(field)?.as_object()
    }
}

/// The server-side rendering of a matcher: requirements for the webhook's selectors and a CEL
/// condition for its `matchConditions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerFilter {
    /// Requirements on the namespace's labels (`namespaceSelector.matchExpressions`).
    pub namespace: Vec<LabelRequirement>,
    /// Requirements on the object's labels (`objectSelector.matchExpressions`).
    pub object: Vec<LabelRequirement>,
    /// A CEL expression over `object` and `request` (`matchConditions`).
    pub condition: Option<String>,
    /// Whether the filter is equivalent to the matcher (not only necessary).
    pub exact: bool,
}

impl ServerFilter {
    /// No server-side filtering: everything is checked in-process.
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// The filter as one CEL expression, if it has no namespace requirements (CEL in
    /// `matchConditions` cannot see namespace labels).
    #[must_use]
    pub fn as_cel(&self) -> Option<String> {
        if !self.namespace.is_empty() {
            return None;
        }
        let mut parts: Vec<String> = self.object.iter().map(|r| r.to_cel("object.metadata.labels")).collect();
        if let Some(condition) = &self.condition {
            // The condition may be a bare `a || b`; next to other parts it needs its parentheses.
            parts.push(if parts.is_empty() { condition.clone() } else { format!("({condition})") });
        }
        Some(if parts.is_empty() { "true".to_owned() } else { parts.join(" && ") })
    }
}

/// Decides whether a mutator applies. Sync and pure: no I/O on the admission path.
pub trait Matcher: Send + Sync + fmt::Debug {
    /// Decides for one request.
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision;

    /// The server-side rendering; by default none (checked in-process only).
    fn server_filter(&self) -> ServerFilter {
        ServerFilter::none()
    }

    /// A short human description, used in `explain` output and error messages.
    fn describe(&self) -> String {
        format!("{self:?}")
    }

    /// Every namespace label requirement this matcher may need to decide, wherever it sits in the
    /// tree (also under `any` and `not`), so the server can say at start what it cannot check
    /// without a namespace cache.
    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        Vec::new()
    }

    /// This matcher and `other` both apply: `a.and(b).and(c)` is [`all`]`([a, b, c])`, with matchers
    /// of any types and no boxing at the call site.
    fn and(self, other: impl Matcher + 'static) -> All
    where
        Self: Sized + 'static,
    {
        All(vec![Box::new(self), Box::new(other)])
    }

    /// This matcher or `other` applies: `a.or(b).or(c)` is [`any`]`([a, b, c])`.
    fn or(self, other: impl Matcher + 'static) -> Any
    where
        Self: Sized + 'static,
    {
        Any(vec![Box::new(self), Box::new(other)])
    }
}

impl<M: Matcher + ?Sized> Matcher for Arc<M> {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        (**self).evaluate(input)
    }
    fn server_filter(&self) -> ServerFilter {
        (**self).server_filter()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        (**self).namespace_requirements()
    }
}

impl<M: Matcher + ?Sized> Matcher for Box<M> {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        (**self).evaluate(input)
    }
    fn server_filter(&self) -> ServerFilter {
        (**self).server_filter()
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        (**self).namespace_requirements()
    }
}

/// All of the matchers apply (Kleene AND: any `NoMatch` wins over `Unknown`). Made by [`all`],
/// [`Matcher::and`], or by collecting boxed matchers.
#[derive(Debug)]
pub struct All(pub Vec<Box<dyn Matcher>>);
/// Any of the matchers applies (Kleene OR: any `Match` wins over `Unknown`). Made by [`any`],
/// [`Matcher::or`], or by collecting boxed matchers.
#[derive(Debug)]
pub struct Any(pub Vec<Box<dyn Matcher>>);

impl All {
    /// Adds one more matcher that must apply (flat: `a.and(b).and(c)` has three children).
    #[must_use]
    pub fn and(mut self, other: impl Matcher + 'static) -> Self {
        self.0.push(Box::new(other));
        self
    }
}

impl Any {
    /// Adds one more alternative (flat: `a.or(b).or(c)` has three children).
    #[must_use]
    pub fn or(mut self, other: impl Matcher + 'static) -> Self {
        self.0.push(Box::new(other));
        self
    }
}

impl FromIterator<Box<dyn Matcher>> for All {
    fn from_iter<I: IntoIterator<Item = Box<dyn Matcher>>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl FromIterator<Box<dyn Matcher>> for Any {
    fn from_iter<I: IntoIterator<Item = Box<dyn Matcher>>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}
/// The matcher does not apply.
#[derive(Debug)]
pub struct Not(pub Box<dyn Matcher>);

impl Matcher for All {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        let mut unknown = None;
        for m in &self.0 {
            match m.evaluate(input) {
                Decision::NoMatch => return Decision::NoMatch,
                Decision::Unknown(why) => unknown = unknown.or(Some(why)),
                Decision::Match => {}
            }
        }
        unknown.map_or(Decision::Match, Decision::Unknown)
    }

    fn server_filter(&self) -> ServerFilter {
        let mut out = ServerFilter { exact: true, ..ServerFilter::none() };
        let mut conditions = Vec::new();
        for m in &self.0 {
            let f = m.server_filter();
            out.namespace.extend(f.namespace);
            out.object.extend(f.object);
            conditions.extend(f.condition);
            out.exact &= f.exact;
        }
        out.condition = join_cel(&conditions, " && ");
        out
    }

    fn describe(&self) -> String {
        format!("all of ({})", self.0.iter().map(Matcher::describe).collect::<Vec<_>>().join(", "))
    }

    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        self.0.iter().flat_map(Matcher::namespace_requirements).collect()
    }
}

impl Matcher for Any {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        let mut unknown = None;
        for m in &self.0 {
            match m.evaluate(input) {
                Decision::Match => return Decision::Match,
                Decision::Unknown(why) => unknown = unknown.or(Some(why)),
                Decision::NoMatch => {}
            }
        }
        unknown.map_or(Decision::NoMatch, Decision::Unknown)
    }

    fn server_filter(&self) -> ServerFilter {
        let filters: Vec<ServerFilter> = self.0.iter().map(Matcher::server_filter).collect();
        if filters.is_empty() {
            return ServerFilter { exact: true, condition: Some("false".to_owned()), ..ServerFilter::none() };
        }
        // An OR can only be rendered in CEL, and only from children that CEL can express exactly.
        let exprs: Option<Vec<String>> = filters.iter().map(|f| if f.exact { f.as_cel() } else { None }).collect();
        match exprs {
            Some(exprs) => ServerFilter { condition: join_cel(&exprs, " || "), exact: true, ..ServerFilter::none() },
            None => ServerFilter::none(),
        }
    }

    fn describe(&self) -> String {
        format!("any of ({})", self.0.iter().map(Matcher::describe).collect::<Vec<_>>().join(", "))
    }

    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        self.0.iter().flat_map(Matcher::namespace_requirements).collect()
    }
}

impl Matcher for Not {
    fn evaluate(&self, input: &MatchInput<'_>) -> Decision {
        match self.0.evaluate(input) {
            Decision::Match => Decision::NoMatch,
            Decision::NoMatch => Decision::Match,
            unknown @ Decision::Unknown(_) => unknown,
        }
    }

    fn server_filter(&self) -> ServerFilter {
        let inner = self.0.server_filter();
        match inner.as_cel() {
            Some(expr) if inner.exact => {
                ServerFilter { condition: Some(format!("!({expr})")), exact: true, ..ServerFilter::none() }
            }
            _ => ServerFilter::none(),
        }
    }

    fn describe(&self) -> String {
        format!("not ({})", self.0.describe())
    }

    fn namespace_requirements(&self) -> Vec<LabelRequirement> {
        self.0.namespace_requirements()
    }
}

/// `parts` joined by `op` (` && `, ` || `), each parenthesised when there are several.
pub(crate) fn join_cel(parts: &[String], op: &str) -> Option<String> {
    match parts {
        [] => None,
        [one] => Some(one.clone()),
        many => Some(many.iter().map(|p| format!("({p})")).collect::<Vec<_>>().join(op)),
    }
}

/// All of `matchers` apply.
///
/// The matchers may be of different types, boxed, with no cast: the array's element type is
/// known from this signature, so each `Box::new(…)` becomes a `Box<dyn Matcher>` by itself.
/// [`Matcher::and`] does the same without boxes; a list built at run time is collected
/// (`iter.collect::<All>()`).
///
/// ```
/// use admission_kit::matcher::{self, Matcher};
///
/// let opted_in = matcher::all([
///     Box::new(matcher::namespace_label("inject", "enabled")),
///     Box::new(matcher::namespace_not_in(["kube-system"])),
///     Box::new(matcher::has_annotation("example.com/inject")),
/// ]);
/// let same = matcher::namespace_label("inject", "enabled")
///     .and(matcher::namespace_not_in(["kube-system"]))
///     .and(matcher::has_annotation("example.com/inject"));
/// assert_eq!(opted_in.describe(), same.describe());
/// ```
#[must_use]
pub fn all<const N: usize>(matchers: [Box<dyn Matcher>; N]) -> All {
    All(matchers.into())
}

/// Any of `matchers` applies; like [`all`], of any types, boxed, with no cast (or
/// [`Matcher::or`], or `iter.collect::<Any>()`).
#[must_use]
pub fn any<const N: usize>(matchers: [Box<dyn Matcher>; N]) -> Any {
    Any(matchers.into())
}

/// `matcher` does not apply.
#[must_use]
pub fn not(matcher: impl Matcher + 'static) -> Not {
    Not(Box::new(matcher))
}

/// The namespace has label `key` with value `value`.
#[must_use]
pub fn namespace_label(key: impl Into<String>, value: impl Into<String>) -> NamespaceLabelMatcher {
    NamespaceLabelMatcher(LabelRequirement::new(key, LabelOp::In(vec![value.into()])))
}

/// The namespace has label `key` (any value).
#[must_use]
pub fn namespace_label_exists(key: impl Into<String>) -> NamespaceLabelMatcher {
    NamespaceLabelMatcher(LabelRequirement::new(key, LabelOp::Exists))
}

/// The namespace's labels meet `requirement` (In, `NotIn`, Exists, `DoesNotExist`).
#[must_use]
pub fn namespace_labels(requirement: LabelRequirement) -> NamespaceLabelMatcher {
    NamespaceLabelMatcher(requirement)
}

/// The request's namespace is not one of `names` (e.g. `kube-system`). Cluster-scoped objects match.
#[must_use]
pub fn namespace_not_in<S: Into<String>>(names: impl IntoIterator<Item = S>) -> NamespaceNameMatcher {
    NamespaceNameMatcher::not_in(names)
}

/// The object has annotation `key` (any value).
#[must_use]
pub fn has_annotation(key: impl Into<String>) -> AnnotationMatcher {
    AnnotationMatcher::present(key)
}

/// The object has annotation `key` with one of `values`.
#[must_use]
pub fn annotation_in<S: Into<String>>(
    key: impl Into<String>,
    values: impl IntoIterator<Item = S>,
) -> AnnotationMatcher {
    AnnotationMatcher::value_in(key, values)
}

/// The object's labels meet every requirement (an `objectSelector`).
#[must_use]
pub fn object_labels(requirements: impl IntoIterator<Item = LabelRequirement>) -> ObjectLabelMatcher {
    ObjectLabelMatcher(requirements.into_iter().collect())
}

/// Converts a Kubernetes `LabelSelector` into requirements (`matchLabels` become `In`).
pub fn requirements_from_selector(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<Vec<LabelRequirement>, SelectorError> {
    label::from_selector(selector)
}

#[cfg(test)]
mod tests;
