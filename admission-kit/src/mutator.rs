//! Mutators: plain logic that changes one object in place, or denies it.
//!
//! A [`Mutator<K>`] works on any k8s-openapi resource `K`; a [`DynamicMutator`] works on the raw JSON
//! of any kind, including custom resources the crate does not know. Neither writes patch
//! operations: the pipeline diffs the object before and after (see [`crate::patch`]).
//! See <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/>.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use async_trait::async_trait;
use serde_json::{Map, Value};

use crate::matcher::NamespaceView;
use crate::review::Request;

/// What a mutator returns: `Ok(())` after changing the object (or deciding not to), or an error.
pub type MutationResult = Result<(), MutationError>;

/// A boxed error from plugin code, kept as the `source` of [`MutationError::Failed`].
///
/// Boxed because the framework cannot know plugin authors' error types.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a mutator did not produce a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MutationError {
    /// A decision: the object must not be admitted. Sent to the user as is, whatever the step's
    /// failure mode.
    #[error("{message}")]
    Denied {
        /// What the user should do about it.
        message: String,
    },
    /// The mutator could not do its work (a dependency failed, data was inconsistent). The step's
    /// [`crate::FailureMode`] decides whether the object is denied or admitted without this change.
    #[error("{message}")]
    Failed {
        /// What went wrong, for a person.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
    /// The object is not what the mutator can work on (it does not decode as the mutator's type).
    /// Handled like [`MutationError::Failed`].
    #[error("{message}")]
    Invalid {
        /// What is wrong with the object.
        message: String,
    },
    /// The object does not decode as the step's kind (a wrong JSON type somewhere, such as a string
    /// where a list belongs). Whatever the failure mode, the object is denied with code 400: a
    /// webhook never answers garbage with a mutation. `message` names the field.
    #[error("{message}")]
    Undecodable {
        /// The field and what is wrong with it.
        message: String,
    },
    /// The review's deadline passed while the mutator worked ([`Context::check_deadline`]).
    /// Handled like [`MutationError::Failed`].
    #[error("did not finish before the API server's deadline")]
    DeadlineExceeded,
}

impl MutationError {
    /// Denies the object with a message a person can act on.
    pub fn deny(message: impl Into<String>) -> Self {
        Self::Denied { message: message.into() }
    }

    /// Reports a failure with a message.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed { message: message.into(), source: None }
    }

    /// Reports a failure caused by another error.
    pub fn caused_by(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Failed { message: message.into(), source: Some(source.into()) }
    }
}

/// An effect deferred until the object is admitted (see [`Context::on_admit`]).
pub(crate) type AdmitEffect = Box<dyn FnOnce() + Send>;

/// What a mutator may read about the request and attach to the answer.
///
/// The pipeline makes one per step; a unit test makes its own with [`Context::new`] and reads what
/// the mutator attached with [`Context::warnings`] and [`Context::audit_annotations`]:
///
/// ```
/// # use admission_kit::prelude::*;
/// # use admission_kit::{Request, matcher::NamespaceView};
/// # use k8s_openapi::api::core::v1::Pod;
/// # use std::collections::BTreeMap;
/// # async fn t(mutator: impl Mutator<Pod>) -> Result<(), MutationError> {
/// let mut pod = Pod::default();
/// let request = Request::of(&pod).namespace("apps").build();
/// let labels = BTreeMap::from([("team".to_owned(), "a".to_owned())]);
/// let mut ctx = Context::new(&request, NamespaceView::Known(&labels));
/// mutator.mutate(&mut pod, &mut ctx).await?;
/// assert!(ctx.warnings().is_empty());
/// # Ok(()) }
/// ```
pub struct Context<'a> {
    request: &'a Request,
    namespace: NamespaceView<'a>,
    warnings: Vec<String>,
    audit_annotations: BTreeMap<String, String>,
    on_admit: Vec<AdmitEffect>,
    deadline: Option<tokio::time::Instant>,
    shared: http::Extensions,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("request", &self.request)
            .field("namespace", &self.namespace)
            .field("warnings", &self.warnings)
            .field("audit_annotations", &self.audit_annotations)
            .field("on_admit", &self.on_admit.len())
            .field("deadline", &self.deadline)
            .field("shared", &self.shared.len())
            .finish()
    }
}

impl<'a> Context<'a> {
    /// A context for `request` in a namespace described by `namespace`
    /// (`NamespaceView::Known(&labels)`, or [`NamespaceView::unknown`]).
    #[must_use]
    pub fn new(request: &'a Request, namespace: NamespaceView<'a>) -> Self {
        Self {
            request,
            namespace,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
            on_admit: Vec::new(),
            deadline: None,
            shared: http::Extensions::new(),
        }
    }

    /// The same context carrying `shared`: what earlier steps of the review left for later ones
    /// (the pipeline passes them on; a unit test of a later step passes its own).
    #[must_use]
    pub fn with_shared(mut self, shared: http::Extensions) -> Self {
        self.shared = shared;
        self
    }

    /// Values earlier steps of this review left for the later ones ([`Context::shared_mut`]).
    ///
    /// One step may leave a later step more than the object says: which containers it added for
    /// which reason, what it looked up. The values live for one review only (a reinvocation starts
    /// with none), and are keyed by type, so a step defines a type of its own for what it shares.
    #[must_use]
    pub fn shared(&self) -> &http::Extensions {
        &self.shared
    }

    /// Leaves values for the later steps of this review: `ctx.shared_mut().insert(MyNote { … })`.
    /// Like the step's change to the object, they reach later steps only if the step succeeds; a
    /// step that fails (even one admitted without its change) leaves nothing.
    pub fn shared_mut(&mut self) -> &mut http::Extensions {
        &mut self.shared
    }

    /// The same context with a deadline (the pipeline sets the review's; tests set their own).
    #[must_use]
    pub fn with_deadline(mut self, deadline: tokio::time::Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// When the review must be answered by (the API server's `?timeout=` less a margin), if known.
    #[must_use]
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// `Err(MutationError::DeadlineExceeded)` once the deadline has passed.
    ///
    /// A mutator that works through many items without awaiting (a long list, a large map) calls
    /// this between items, `?` on the result: the pipeline's own deadline can only stop a step at
    /// an `.await`, and the server's backstop can only answer without the step. Reading the clock
    /// costs tens of nanoseconds; every few dozen items is often enough.
    pub fn check_deadline(&self) -> MutationResult {
        match self.deadline {
            Some(deadline) if tokio::time::Instant::now() >= deadline => Err(MutationError::DeadlineExceeded),
            _ => Ok(()),
        }
    }

    /// The admission request (uid, operation, namespace, user, old object, dry run, …).
    #[must_use]
    pub fn request(&self) -> &'a Request {
        self.request
    }

    /// The labels of the request's namespace, when the server knows them (namespace cache, or
    /// supplied in tests).
    #[must_use]
    pub fn namespace_labels(&self) -> Option<&'a BTreeMap<String, String>> {
        self.namespace.labels()
    }

    /// What is known about the request's namespace.
    #[must_use]
    pub fn namespace(&self) -> NamespaceView<'a> {
        self.namespace
    }

    /// The warnings added so far, in order.
    #[must_use]
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The audit annotations added so far.
    #[must_use]
    pub fn audit_annotations(&self) -> &BTreeMap<String, String> {
        &self.audit_annotations
    }

    /// How many effects wait for admission ([`Context::on_admit`]).
    #[must_use]
    pub fn pending_on_admit(&self) -> usize {
        self.on_admit.len()
    }

    /// Adds a warning, shown to the API client (for example printed by `kubectl`).
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Adds an audit annotation; the API server prefixes the key with the webhook name.
    pub fn audit_annotation(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.audit_annotations.insert(key.into(), value.into());
    }

    /// Runs `effect` once the review's verdict is known and only if the object is admitted: not
    /// when this step fails (and its change is dropped), nor when a later step denies the object.
    /// For counting what was really admitted (a metric that counted at mutation time would count
    /// objects a later step refused).
    pub fn on_admit(&mut self, effect: impl FnOnce() + Send + 'static) {
        self.on_admit.push(Box::new(effect));
    }

    pub(crate) fn into_parts(self) -> Parts {
        Parts {
            warnings: self.warnings,
            audit_annotations: self.audit_annotations,
            on_admit: self.on_admit,
            shared: self.shared,
        }
    }
}

/// What a step left in its [`Context`], for the pipeline.
pub(crate) struct Parts {
    pub(crate) warnings: Vec<String>,
    pub(crate) audit_annotations: BTreeMap<String, String>,
    pub(crate) on_admit: Vec<AdmitEffect>,
    pub(crate) shared: http::Extensions,
}

/// Changes one object of type `K` in place.
///
/// `K` is any k8s-openapi resource (`Pod`, `Deployment`, …). Implementations are plain logic: no
/// HTTP, no patches. Return [`MutationError::deny`] to refuse the object. A mutator needs no
/// `Debug`: logs and reports name it by its step's name.
#[async_trait]
pub trait Mutator<K>: Send + Sync + 'static {
    /// Changes `object`; anything it changes ends up in the patch, nothing else does.
    async fn mutate(&self, object: &mut K, ctx: &mut Context<'_>) -> MutationResult;
}

/// Changes the raw JSON of one object in place: for kinds the crate does not know (custom
/// resources) or mutators that want to work on JSON directly.
#[async_trait]
pub trait DynamicMutator: Send + Sync + 'static {
    /// Changes `object` (the JSON the API server sent).
    async fn mutate(&self, object: &mut Value, ctx: &mut Context<'_>) -> MutationResult;
}

/// A [`DynamicMutator`] from a closure over the raw JSON, for mutators that need no state (see
/// [`from_typed_fn`] for a typed object).
pub fn from_fn<F>(f: F) -> FnMutator<F>
where
    F: Fn(&mut Value, &mut Context<'_>) -> MutationResult + Send + Sync + 'static,
{
    FnMutator(f)
}

/// A closure used as a [`DynamicMutator`]; made by [`from_fn`].
pub struct FnMutator<F>(F);

impl<F> fmt::Debug for FnMutator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnMutator")
    }
}

#[async_trait]
impl<F> DynamicMutator for FnMutator<F>
where
    F: Fn(&mut Value, &mut Context<'_>) -> MutationResult + Send + Sync + 'static,
{
    async fn mutate(&self, object: &mut Value, ctx: &mut Context<'_>) -> MutationResult {
        (self.0)(object, ctx)
    }
}

/// A [`Mutator<K>`] from a closure over a typed object, for mutators that need no state: the typed
/// counterpart of [`from_fn`]. The closure's argument type names the kind:
///
/// ```
/// use admission_kit::prelude::*;
/// use k8s_openapi::api::core::v1::Pod;
///
/// let step = Step::new(
///     "default-team",
///     mutator::from_typed_fn(|pod: &mut Pod, _ctx: &mut Context<'_>| {
///         let labels = pod.metadata.labels.get_or_insert_default();
///         labels.entry("team".into()).or_insert_with(|| "unassigned".into());
///         Ok(())
///     }),
/// );
/// assert_eq!(step.target().kind, "Pod");
/// ```
pub fn from_typed_fn<K, F>(f: F) -> TypedFnMutator<K, F>
where
    K: Send + 'static,
    F: Fn(&mut K, &mut Context<'_>) -> MutationResult + Send + Sync + 'static,
{
    TypedFnMutator { f, _kind: PhantomData }
}

/// The JSON object at `parent[key]`, for [`DynamicMutator`]s that add to a map (labels,
/// annotations, `spec`): a missing member, `null` or any other non-object there is replaced by an
/// empty object. A `parent` that is not an object (`null`, …) becomes an empty object first.
///
/// ```
/// # use serde_json::json;
/// let mut pod = json!({"metadata": {"annotations": null}});
/// let annotations = admission_kit::mutator::object_at(&mut pod["metadata"], "annotations");
/// annotations.insert("a".into(), json!("b"));
/// assert_eq!(pod, json!({"metadata": {"annotations": {"a": "b"}}}));
/// ```
pub fn object_at<'a>(parent: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    object_entry(ensure_object(parent), key)
}

/// The JSON object at `map[key]`, as [`object_at`] makes it, for a parent already in hand as a map.
pub fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    ensure_object(map.entry(key).or_insert(Value::Null))
}

fn ensure_object(value: &mut Value) -> &mut Map<String, Value> {
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    match value {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// A closure used as a [`Mutator<K>`]; made by [`from_typed_fn`].
pub struct TypedFnMutator<K, F> {
    f: F,
    _kind: PhantomData<fn(&mut K)>,
}

impl<K, F> fmt::Debug for TypedFnMutator<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TypedFnMutator")
    }
}

#[async_trait]
impl<K, F> Mutator<K> for TypedFnMutator<K, F>
where
    K: Send + 'static,
    F: Fn(&mut K, &mut Context<'_>) -> MutationResult + Send + Sync + 'static,
{
    async fn mutate(&self, object: &mut K, ctx: &mut Context<'_>) -> MutationResult {
        (self.f)(object, ctx)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;

    use super::*;

    /// A mutator unit test as a plugin author writes it: a request and a context built directly,
    /// the mutator called as a plain async function.
    #[tokio::test]
    async fn typed_closures_run_as_mutators_on_a_built_context() {
        let team = from_typed_fn(|pod: &mut Pod, ctx: &mut Context<'_>| {
            let Some(team) = ctx.namespace_labels().and_then(|l| l.get("team")).cloned() else {
                return Err(MutationError::deny("the namespace names no team"));
            };
            pod.metadata.labels.get_or_insert_default().insert("team".into(), team);
            ctx.warn("labelled");
            ctx.audit_annotation("team", "set");
            ctx.on_admit(|| {});
            Ok(())
        });
        let mut pod = Pod::default();
        let request = Request::of(&pod).namespace("apps").build();
        let labels = BTreeMap::from([("team".to_owned(), "payments".to_owned())]);
        let mut ctx = Context::new(&request, NamespaceView::Known(&labels));
        team.mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.unwrap()["team"], "payments");
        assert_eq!(ctx.warnings(), ["labelled"]);
        assert_eq!(ctx.audit_annotations()["team"], "set");
        assert_eq!(ctx.pending_on_admit(), 1);
        assert_eq!(ctx.request().namespace.as_deref(), Some("apps"));

        let mut unknown = Context::new(&request, NamespaceView::unknown());
        let denied = team.mutate(&mut Pod::default(), &mut unknown).await.unwrap_err();
        assert!(matches!(denied, MutationError::Denied { .. }), "{denied:?}");
        assert!(unknown.warnings().is_empty());
    }
}
