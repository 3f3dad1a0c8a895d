//! The pipeline: ordered steps, each a mutator gated by a matcher, an operation filter and a
//! failure mode; the whole turned into one answer with one patch.
//!
//! Steps run in order on a working copy of the object; each later step sees earlier steps' changes.
//! A step that fails leaves no partial change behind. The patch is the diff between the object the
//! API server sent and the final working copy, so the output is deterministic for a given input.

use std::fmt;
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use async_trait::async_trait;
use futures::FutureExt as _;
use kube::core::admission::Operation;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::time::Instant;

use crate::matcher::{Decision, LabelRequirement, MatchInput, Matcher, NamespaceView, ServerFilter};
use crate::mutator::{Context, DynamicMutator, MutationError, MutationResult, Mutator};
use crate::patch;
use crate::review::{Answer, ManagedFields, Review};

/// What a step's error does to the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureMode {
    /// Deny the object, with the error as the message (the default: nothing is admitted half-done).
    #[default]
    Deny,
    /// Admit the object without this step's change and return a warning to the client.
    AllowWithWarning,
}

/// The kind and resource a step serves, e.g. `v1 Pod` / `pods`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceTarget {
    /// API group (`""` for core).
    pub group: String,
    /// API version (`v1`).
    pub version: String,
    /// Kind (`Pod`).
    pub kind: String,
    /// Plural resource name (`pods`), used in the webhook's rules.
    pub plural: String,
    /// How an object of the kind is checked before a step works on it (targets of k8s-openapi types).
    schema: Schema,
}

/// Checks that an object decodes as a kind, naming the field that does not.
type Check = fn(&Value) -> Result<(), String>;

/// A target's [`Check`], if it has one. Part of the target, not of its identity: targets compare
/// by group, version, kind and plural alone.
#[derive(Clone, Copy, Default)]
struct Schema(Option<Check>);

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "typed" } else { "untyped" })
    }
}

impl PartialEq for Schema {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Schema {}

impl std::hash::Hash for Schema {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl PartialOrd for Schema {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Schema {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

/// Decodes `value` as `K`, naming the field (`` `spec.containers`: invalid type: … ``) where
/// decoding failed: the message the pipeline gives for an undecodable object, for plugins that
/// check JSON of their own (a catalog's containers, say) the same way.
pub fn decode_naming_field<K: DeserializeOwned>(value: &Value) -> Result<K, String> {
    // Tracking the path costs more than the decoding itself (about 29 of 51 µs for a 10 KB pod), and
    // an object that decodes needs no path: it is tracked only to name the field of one that does not.
    if let Ok(decoded) = K::deserialize(value) {
        return Ok(decoded);
    }
    serde_path_to_error::deserialize::<_, K>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." { inner.to_string() } else { format!("`{path}`: {inner}") }
    })
}

fn check<K: DeserializeOwned>(value: &Value) -> Result<(), String> {
    decode_naming_field::<K>(value).map(drop)
}

impl ResourceTarget {
    /// A target for a kind.
    pub fn new(
        group: impl Into<String>,
        version: impl Into<String>,
        kind: impl Into<String>,
        plural: impl Into<String>,
    ) -> Self {
        Self {
            group: group.into(),
            version: version.into(),
            kind: kind.into(),
            plural: plural.into(),
            schema: Schema::default(),
        }
    }

    /// The target of a k8s-openapi resource type. Objects are checked against the type before a
    /// step works on them, raw-JSON steps included: one that does not decode (a string where a
    /// list belongs) is denied with code 400, naming the field.
    #[must_use]
    pub fn of<K: k8s_openapi::Resource + DeserializeOwned>() -> Self {
        let mut target = Self::new(K::GROUP, K::VERSION, K::KIND, K::URL_PATH_SEGMENT);
        target.schema = Schema(Some(check::<K>));
        target
    }

    /// Checks `object` against the target's type, when it has one.
    fn check(&self, object: &Value) -> Result<(), String> {
        self.schema.0.map_or(Ok(()), |check| check(object))
    }

    fn matches(&self, review: &crate::review::Request) -> bool {
        review.kind.group == self.group
            && review.kind.version == self.version
            && review.kind.kind == self.kind
            && review.sub_resource.is_none()
    }
}

impl fmt::Display for ResourceTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{} {}", self.version, self.kind)
        } else {
            write!(f, "{}/{} {}", self.group, self.version, self.kind)
        }
    }
}

/// Runs a typed [`Mutator`] over raw JSON: decode, mutate, and carry only the change back.
struct Typed<K, M> {
    mutator: M,
    target: ResourceTarget,
    _kind: PhantomData<fn() -> K>,
}

#[async_trait]
impl<K, M> DynamicMutator for Typed<K, M>
where
    K: DeserializeOwned + Serialize + Send + Sync + 'static,
    M: Mutator<K>,
{
    async fn mutate(&self, object: &mut Value, ctx: &mut Context<'_>) -> MutationResult {
        let mut typed = decode_naming_field::<K>(object).map_err(|message| MutationError::Undecodable { message })?;
        let encode = |k: &K| {
            serde_json::to_value(k)
                .map_err(|e| MutationError::caused_by(format!("failed to encode {}", self.target), e))
        };
        let before = encode(&typed)?;
        self.mutator.mutate(&mut typed, ctx).await?;
        let after = encode(&typed)?;
        if before != after {
            *object = patch::carry_changes(object, &before, &after);
        }
        Ok(())
    }
}

/// One step of a pipeline: a mutator and when it applies.
#[must_use]
pub struct Step {
    name: String,
    target: ResourceTarget,
    mutator: Arc<dyn DynamicMutator>,
    gate: Option<Arc<dyn Matcher>>,
    operations: Vec<Operation>,
    on_error: FailureMode,
    policy: Option<Arc<dyn crate::policy::PolicyForm>>,
}

/// The mutator is named by the step's name: mutators need not be `Debug`.
impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("target", &self.target)
            .field("gate", &self.gate)
            .field("operations", &self.operations)
            .field("on_error", &self.on_error)
            .finish_non_exhaustive()
    }
}

impl Step {
    /// A step running a typed mutator over objects of kind `K`.
    pub fn new<K, M>(name: impl Into<String>, mutator: M) -> Self
    where
        K: k8s_openapi::Resource + DeserializeOwned + Serialize + Send + Sync + 'static,
        M: Mutator<K>,
    {
        let target = ResourceTarget::of::<K>();
        // The mutator decodes the object itself, naming the field that does not decode: the
        // pipeline need not check it first.
        let unchecked = ResourceTarget { schema: Schema::default(), ..target.clone() };
        Self::dynamic(name, unchecked, Typed { mutator, target, _kind: PhantomData::<fn() -> K> })
    }

    /// A step running a mutator over the raw JSON of objects of `target`'s kind.
    pub fn dynamic(name: impl Into<String>, target: ResourceTarget, mutator: impl DynamicMutator) -> Self {
        Self {
            name: name.into(),
            target,
            mutator: Arc::new(mutator),
            gate: None,
            operations: vec![Operation::Create],
            on_error: FailureMode::Deny,
            policy: None,
        }
    }

    /// Applies only when `matcher` matches (default: always). Called again, it adds a condition:
    /// `.when(a).when(b)` applies when both match, as `.when(a.and(b))` does.
    pub fn when(mut self, matcher: impl Matcher + 'static) -> Self {
        self.gate = Some(match self.gate.take() {
            None => Arc::new(matcher),
            Some(earlier) => Arc::new(crate::matcher::All(vec![Box::new(earlier), Box::new(matcher)])),
        });
        self
    }

    /// Applies only to these operations (default: CREATE).
    pub fn operations(mut self, operations: impl IntoIterator<Item = Operation>) -> Self {
        self.operations = operations.into_iter().collect();
        self
    }

    /// What the step is as a `MutatingAdmissionPolicy`, for webhook-less mode (see [`crate::policy`]).
    /// A step without one cannot be rendered: its mutator is Rust code the API server cannot run.
    pub fn policy_form(mut self, form: impl crate::policy::PolicyForm) -> Self {
        self.policy = Some(Arc::new(form));
        self
    }

    /// The step's policy form, if it has one.
    #[must_use]
    pub fn policy(&self) -> Option<&dyn crate::policy::PolicyForm> {
        self.policy.as_deref()
    }

    /// What an error of this step does (default: [`FailureMode::Deny`]).
    pub fn on_error(mut self, mode: FailureMode) -> Self {
        self.on_error = mode;
        self
    }

    /// The step's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kind the step serves.
    #[must_use]
    pub fn target(&self) -> &ResourceTarget {
        &self.target
    }

    /// The operations the step serves.
    #[must_use]
    pub fn served_operations(&self) -> &[Operation] {
        &self.operations
    }

    fn filter(&self) -> ServerFilter {
        self.gate.as_ref().map_or_else(ServerFilter::none, super::matcher::Matcher::server_filter)
    }

    /// What the API server can check of the step's matcher; a step without one applies to every
    /// object, which the API server checks exactly.
    pub(crate) fn exact_filter(&self) -> ServerFilter {
        match &self.gate {
            None => ServerFilter { exact: true, ..ServerFilter::none() },
            Some(gate) => gate.server_filter(),
        }
    }
}

/// `failurePolicy` of the rendered webhook: what the API server does when it cannot reach us.
/// Deserialises from Kubernetes' spelling (`Fail`, `Ignore`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Reject the API request (safe for must-have mutations; blocks creates while the webhook is down).
    #[default]
    Fail,
    /// Admit unmutated (keeps the cluster working; silently skips the mutation).
    Ignore,
}

/// `reinvocationPolicy` of the rendered webhook. Deserialises from Kubernetes' spelling (`Never`,
/// `IfNeeded`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ReinvocationPolicy {
    /// Called once per admission.
    #[default]
    Never,
    /// Called again if a later mutating webhook changed the object (mutators must be idempotent).
    IfNeeded,
}

/// Why a pipeline could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum PipelineError {
    /// Webhook names must be fully qualified (at least three DNS labels), as the API server requires.
    #[error(
        "failed to build pipeline: webhook name `{0}` must be a fully qualified DNS name like `inject.example.com`"
    )]
    BadName(String),
    /// A pipeline needs at least one step.
    #[error("failed to build pipeline `{0}`: it has no steps")]
    NoSteps(String),
    /// Step names identify steps in metrics and reports.
    #[error("failed to build pipeline `{pipeline}`: step name `{step}` is used twice")]
    DuplicateStep {
        /// The pipeline.
        pipeline: String,
        /// The repeated step name.
        step: String,
    },
    /// `timeoutSeconds` must be within 1–30.
    #[error("failed to build pipeline `{0}`: timeoutSeconds must be between 1 and 30, got {1}")]
    BadTimeout(String, i32),
    /// Paths are routes on the webhook server.
    #[error("failed to build pipeline `{0}`: path `{1}` must start with `/`")]
    BadPath(String, String),
    /// The matcher of [`PipelineBuilder::leave_alone`] must be one the API server checks exactly
    /// from the object alone, as the webhook's `matchConditions` carry its negation.
    #[error(
        "failed to build pipeline `{pipeline}`: leave_alone({matcher}) must be checked exactly by the API server from the object alone (annotations, object labels, CEL), not namespace labels or in-process logic"
    )]
    InexactLeaveAlone {
        /// The pipeline.
        pipeline: String,
        /// The matcher, described.
        matcher: String,
    },
}

/// Builds a [`Pipeline`].
#[derive(Debug)]
#[must_use]
pub struct PipelineBuilder {
    name: String,
    path: String,
    steps: Vec<Step>,
    failure_policy: FailurePolicy,
    reinvocation: ReinvocationPolicy,
    timeout_seconds: i32,
    match_conditions: bool,
    leave_alone: Option<Arc<dyn Matcher>>,
    managed_fields: ManagedFields,
}

impl PipelineBuilder {
    /// Adds a step; steps run in the order added.
    pub fn step(mut self, step: Step) -> Self {
        self.steps.push(step);
        self
    }

    /// The HTTP path the webhook is served on (default `/mutate`).
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The rendered `failurePolicy` (default `Fail`).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// The rendered `reinvocationPolicy` (default `Never`).
    pub fn reinvocation(mut self, policy: ReinvocationPolicy) -> Self {
        self.reinvocation = policy;
        self
    }

    /// The rendered `timeoutSeconds` (1–30, default 10); also the server's deadline when the API
    /// server does not send `?timeout=`.
    pub fn timeout_seconds(mut self, seconds: i32) -> Self {
        self.timeout_seconds = seconds;
        self
    }

    /// Whether to render `matchConditions` (CEL; Kubernetes ≥ 1.30). Default on.
    pub fn match_conditions(mut self, enabled: bool) -> Self {
        self.match_conditions = enabled;
        self
    }

    /// Objects that *arrive* matching `matcher` are admitted unchanged, no step run; the webhook's
    /// `matchConditions` exclude them too, so the API server does not call the webhook for them.
    ///
    /// The matcher sees the object as the API server sends it, before any step: it is how a
    /// pipeline that marks what it did (an annotation, a label) asks not to be called again for an
    /// object it already handled. With `reinvocationPolicy: IfNeeded` that saves the second call the
    /// API server makes after another mutating webhook or admission plugin changed the object.
    /// The matcher must be one the API server checks exactly from the object ([`has_annotation`],
    /// object labels, CEL), or [`PipelineBuilder::build`] fails.
    ///
    /// [`has_annotation`]: crate::matcher::has_annotation
    pub fn leave_alone(mut self, matcher: impl Matcher + 'static) -> Self {
        self.leave_alone = Some(Arc::new(matcher));
        self
    }

    /// Promises that no step, matcher or `leave_alone` reads or writes `metadata.managedFields`
    /// (the API server's record of which client set which field), so the server decodes reviews
    /// for this pipeline without them ([`ManagedFields::SetAside`]). In a pod made by a Deployment
    /// they are about a third of the object's bytes, and every step after the decode (the typed
    /// check, the copy, the comparisons, the diff) then works on a smaller object: 8.6% less of
    /// the server's CPU for the injector's 10 KB benchmark pod.
    ///
    /// The patch is derived from objects without them, so it never touches them: the API server
    /// keeps them as they were. A step that writes `metadata.managedFields` into such an object
    /// would replace them all, so it fails, and its failure mode decides. Reviews built in tests
    /// ([`Request::builder`](crate::Request::builder)) or decoded with [`ManagedFields::Keep`]
    /// still carry them, and the steps see them there.
    pub fn set_aside_managed_fields(mut self) -> Self {
        self.managed_fields = ManagedFields::SetAside;
        self
    }

    /// Checks and builds the pipeline.
    pub fn build(self) -> Result<Pipeline, PipelineError> {
        let qualified = self.name.split('.').filter(|s| !s.is_empty()).count() >= 3
            && self.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !qualified {
            return Err(PipelineError::BadName(self.name));
        }
        if self.steps.is_empty() {
            return Err(PipelineError::NoSteps(self.name));
        }
        if !(1..=30).contains(&self.timeout_seconds) {
            return Err(PipelineError::BadTimeout(self.name, self.timeout_seconds));
        }
        if !self.path.starts_with('/') {
            return Err(PipelineError::BadPath(self.name, self.path));
        }
        let mut seen = std::collections::BTreeSet::new();
        for step in &self.steps {
            if !seen.insert(step.name.as_str()) {
                return Err(PipelineError::DuplicateStep { pipeline: self.name.clone(), step: step.name.clone() });
            }
        }
        let mut filter = webhook_filter(&self.steps);
        if let Some(matcher) = &self.leave_alone {
            let exact = matcher.server_filter();
            let Some(cel) = exact.as_cel().filter(|_| exact.exact) else {
                return Err(PipelineError::InexactLeaveAlone { pipeline: self.name, matcher: matcher.describe() });
            };
            let parts: Vec<String> = filter.condition.take().into_iter().chain([format!("!({cel})")]).collect();
            filter.condition = crate::matcher::join_cel(&parts, " && ");
        }
        Ok(Pipeline {
            inner: Arc::new(Inner {
                name: self.name,
                path: self.path,
                steps: self.steps,
                filter,
                failure_policy: self.failure_policy,
                reinvocation: self.reinvocation,
                timeout_seconds: self.timeout_seconds,
                match_conditions: self.match_conditions,
                leave_alone: self.leave_alone,
                managed_fields: self.managed_fields,
            }),
        })
    }
}

/// What the webhook as a whole can ask the API server to filter: a condition necessary for *some*
/// step to apply. Namespace and object requirements shared by every step, and the OR of the steps'
/// CEL conditions when every step has one.
fn webhook_filter(steps: &[Step]) -> ServerFilter {
    let filters: Vec<ServerFilter> = steps.iter().map(Step::filter).collect();
    let Some((first, rest)) = filters.split_first() else {
        return ServerFilter::none();
    };
    let common = |pick: fn(&ServerFilter) -> &Vec<LabelRequirement>| -> Vec<LabelRequirement> {
        let mut out: Vec<LabelRequirement> = Vec::new();
        for r in pick(first) {
            if rest.iter().all(|f| pick(f).contains(r)) && !out.contains(r) {
                out.push(r.clone());
            }
        }
        out
    };
    let conditions: Option<Vec<String>> = filters.iter().map(|f| f.condition.clone()).collect();
    let condition = conditions.and_then(|mut c| {
        c.dedup();
        crate::matcher::join_cel(&c, " || ")
    });
    ServerFilter { namespace: common(|f| &f.namespace), object: common(|f| &f.object), condition, exact: false }
}

#[derive(Debug)]
struct Inner {
    name: String,
    path: String,
    steps: Vec<Step>,
    filter: ServerFilter,
    failure_policy: FailurePolicy,
    reinvocation: ReinvocationPolicy,
    timeout_seconds: i32,
    match_conditions: bool,
    leave_alone: Option<Arc<dyn Matcher>>,
    managed_fields: ManagedFields,
}

/// An ordered set of steps served as one webhook. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

/// What happened to one step during a review.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepResult {
    /// Not run: another kind, a subresource, another operation, or the matcher said no.
    Skipped(String),
    /// Ran; `changed` tells whether it changed the object.
    Applied {
        /// Whether the step changed the object; `None` when not tracked. [`Pipeline::review`] and
        /// [`Pipeline::review_until`] (what the server calls) tell it exactly up to and including
        /// the first step that changes the object (one comparison with the original), and not for
        /// the steps after it, which would cost a pass over the whole object before and after
        /// each; [`Pipeline::review_reporting_changes`] tells it for every step.
        changed: Option<bool>,
    },
    /// The mutator denied the object.
    Denied(String),
    /// The step failed; `mode` decided the outcome.
    Failed {
        /// The error.
        message: String,
        /// The failure mode that applied.
        mode: FailureMode,
    },
    /// The mutator panicked; the object was denied.
    Panicked(String),
    /// The object does not decode as the step's kind; denied with code 400.
    Undecodable(String),
}

/// One step's part in a review.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// The step's name.
    pub step: String,
    /// What happened.
    pub result: StepResult,
}

/// The answer and what each step did, for metrics, logs and `explain`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The answer to send.
    pub answer: Answer,
    /// What each step did, in order (steps after a denial are absent).
    pub steps: Vec<StepReport>,
    /// The object after all steps (`None` when there was no object), as the steps saw it: without
    /// `metadata.managedFields` when the review was decoded with them set aside
    /// ([`ManagedFields::SetAside`]), like the review's own `object`, which the patch applies to.
    pub mutated: Option<Value>,
}

impl Pipeline {
    /// Starts a pipeline for the webhook `name` (a fully qualified name such as `inject.example.com`).
    pub fn builder(name: impl Into<String>) -> PipelineBuilder {
        PipelineBuilder {
            name: name.into(),
            path: "/mutate".to_owned(),
            steps: Vec::new(),
            failure_policy: FailurePolicy::Fail,
            reinvocation: ReinvocationPolicy::Never,
            timeout_seconds: 10,
            match_conditions: true,
            leave_alone: None,
            managed_fields: ManagedFields::Keep,
        }
    }

    /// The webhook name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The HTTP path.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.inner.path
    }

    /// The steps, in order.
    pub fn steps(&self) -> &[Step] {
        &self.inner.steps
    }

    /// The server-side filter rendered into the webhook configuration.
    #[must_use]
    pub fn server_filter(&self) -> &ServerFilter {
        &self.inner.filter
    }

    /// What makes an arriving object be left alone ([`PipelineBuilder::leave_alone`]), if anything.
    #[must_use]
    pub fn leave_alone(&self) -> Option<&dyn Matcher> {
        self.inner.leave_alone.as_deref()
    }

    /// How the server decodes reviews for this pipeline
    /// ([`PipelineBuilder::set_aside_managed_fields`]).
    #[must_use]
    pub fn managed_fields(&self) -> ManagedFields {
        self.inner.managed_fields
    }

    /// The rendered `failurePolicy`.
    #[must_use]
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.failure_policy
    }

    /// The rendered `reinvocationPolicy`.
    #[must_use]
    pub fn reinvocation(&self) -> ReinvocationPolicy {
        self.inner.reinvocation
    }

    /// The rendered `timeoutSeconds`.
    #[must_use]
    pub fn timeout_seconds(&self) -> i32 {
        self.inner.timeout_seconds
    }

    /// Whether `matchConditions` are rendered.
    #[must_use]
    pub fn renders_match_conditions(&self) -> bool {
        self.inner.match_conditions
    }

    /// Whether any step's matcher needs namespace labels that the API server does not enforce
    /// (so the server must know namespace labels to decide), and which requirements are trusted.
    #[must_use]
    pub fn namespace_label_needs(&self) -> (Vec<LabelRequirement>, Vec<LabelRequirement>) {
        // Name requirements are decided from the request's namespace, never from labels.
        let by_label = |r: &LabelRequirement| r.key != crate::matcher::NAMESPACE_NAME_LABEL;
        let trusted: Vec<LabelRequirement> =
            self.inner.filter.namespace.iter().filter(|r| by_label(r)).cloned().collect();
        let mut unchecked = Vec::new();
        for step in &self.inner.steps {
            let needed = step.gate.as_ref().map(super::matcher::Matcher::namespace_requirements).unwrap_or_default();
            for r in needed {
                if by_label(&r) && !trusted.contains(&r) && !unchecked.contains(&r) {
                    unchecked.push(r);
                }
            }
        }
        (trusted, unchecked)
    }

    /// Answers one review without a deadline.
    ///
    /// `namespace` is what is known of the request's namespace: `NamespaceView::Known(&labels)`
    /// (an empty map for a namespace without labels), or [`NamespaceView::unknown`] when there is
    /// no namespace cache. For an unknown namespace the pipeline trusts the requirements its own
    /// rendered `namespaceSelector` enforces, whatever `enforced` the view lists: the API server
    /// checked exactly those before calling.
    pub async fn review(&self, review: &Review, namespace: NamespaceView<'_>) -> Outcome {
        self.review_until(review, namespace, None).await
    }

    /// Answers one review without a deadline, as [`Pipeline::review`], and tells of every step
    /// that ran whether it changed the object ([`StepResult::Applied`]), also after the first
    /// change: for explaining a review (`explain`, tests), at the cost of a pass over the object
    /// after each such step.
    pub async fn review_reporting_changes(&self, review: &Review, namespace: NamespaceView<'_>) -> Outcome {
        self.run(review, namespace, None, ChangeTracker::every_step()).await
    }

    /// Answers one review; each step must finish before `deadline`, or it fails (and its failure
    /// mode decides). `namespace` as for [`Pipeline::review`].
    pub async fn review_until(
        &self,
        review: &Review,
        namespace: NamespaceView<'_>,
        deadline: Option<Instant>,
    ) -> Outcome {
        self.run(review, namespace, deadline, ChangeTracker::default()).await
    }

    async fn run(
        &self,
        review: &Review,
        namespace: NamespaceView<'_>,
        deadline: Option<Instant>,
        mut tracker: ChangeTracker,
    ) -> Outcome {
        let request = &review.request;
        let mut answer = Answer::allow(&review.api_version, &request.uid);
        let mut reports = Vec::with_capacity(self.inner.steps.len());
        let Some(original) = request.object.as_ref() else {
            for step in &self.inner.steps {
                reports.push(StepReport {
                    step: step.name.clone(),
                    result: StepResult::Skipped("request has no object".to_owned()),
                });
            }
            return Outcome { answer, steps: reports, mutated: None };
        };
        let namespace = match namespace {
            known @ NamespaceView::Known(_) => known,
            NamespaceView::Unknown { .. } => NamespaceView::Unknown { enforced: &self.inner.filter.namespace },
        };
        if let Some(matcher) = &self.inner.leave_alone
            && matcher.evaluate(&MatchInput { request, object: Some(original), namespace }) == Decision::Match
        {
            let reason = format!("the object arrived matching leave_alone: {}", matcher.describe());
            for step in &self.inner.steps {
                reports.push(StepReport { step: step.name.clone(), result: StepResult::Skipped(reason.clone()) });
            }
            return Outcome { answer, steps: reports, mutated: Some(original.clone()) };
        }
        let mut current = original.clone();
        // Whether the object's managedFields were set aside: then no step may write new ones.
        let set_aside = review.set_aside_managed_fields().is_some();
        let mut on_admit = Vec::new();
        let mut shared = http::Extensions::new();
        // Whether the object the API server sent decodes as the steps' kind: checked once, before
        // the first step that applies (a target whose kind matches the request's has its schema).
        let mut decodes: Option<Result<(), String>> = None;
        for step in &self.inner.steps {
            let input = MatchInput { request, object: Some(&current), namespace };
            let result = match applies(step, &input) {
                Gate::Skip(reason) => StepResult::Skipped(reason),
                Gate::Undecidable(why) => {
                    self.failed(step, format!("cannot decide whether it applies: {why}"), &mut answer)
                }
                Gate::Apply if decodes.get_or_insert_with(|| step.target.check(original)).is_err() => {
                    let why = decodes.clone().and_then(Result::err).unwrap_or_default();
                    StepResult::Undecodable(why)
                }
                Gate::Apply if deadline.is_some_and(|d| Instant::now() >= d) => {
                    self.failed(step, "the API server's deadline passed before it could run".to_owned(), &mut answer)
                }
                Gate::Apply => {
                    let run = Run { request, namespace, deadline, original, set_aside };
                    let left = Left { on_admit: &mut on_admit, shared: &mut shared };
                    self.run_step(step, &mut current, &mut tracker, &mut answer, left, run).await
                }
            };
            let denial = match &result {
                StepResult::Denied(message) => Some((403, message.clone())),
                StepResult::Failed { message, mode: FailureMode::Deny } => {
                    Some((500, format!("{} failed: {message}", step.name)))
                }
                StepResult::Undecodable(why) => {
                    Some((400, format!("{}: the object does not decode as {}: {why}", step.name, step.target)))
                }
                StepResult::Panicked(message) => Some((
                    500,
                    format!(
                        "{} panicked, so the object was not admitted (a bug in the webhook; see its logs): {message}",
                        step.name
                    ),
                )),
                _ => None,
            };
            reports.push(StepReport { step: step.name.clone(), result });
            if let Some((code, message)) = denial {
                let mut denied = Answer::deny(&review.api_version, &request.uid, code, message);
                denied.warnings = answer.warnings;
                return Outcome { answer: denied, steps: reports, mutated: None };
            }
        }
        let patch = patch::diff(original, &current);
        if !patch.0.is_empty() {
            answer.patch = Some(patch);
        }
        // The verdict is in: admitted.
        for effect in on_admit {
            effect();
        }
        Outcome { answer, steps: reports, mutated: Some(current) }
    }

    /// Runs one step's mutator on `current`. On success `current` carries the step's change; on a
    /// failure that admits the object ([`FailureMode::AllowWithWarning`]) `current` is put back as
    /// it was before the step. Other failures deny the object, so `current` is thrown away and the
    /// step needs no copy to roll back to: the common path clones nothing.
    async fn run_step(
        &self,
        step: &Step,
        current: &mut Value,
        tracker: &mut ChangeTracker,
        answer: &mut Answer,
        left: Left<'_>,
        run: Run<'_>,
    ) -> StepResult {
        let rollback = (step.on_error == FailureMode::AllowWithWarning).then(|| current.clone());
        let before = tracker.before_step(current);
        // The step works on a copy of the shared values (an empty map costs nothing to copy), so a
        // step that fails leaves them as they were.
        let mut ctx = Context::new(run.request, run.namespace).with_shared(left.shared.clone());
        if let Some(deadline) = run.deadline {
            ctx = ctx.with_deadline(deadline);
        }
        let mutation = AssertUnwindSafe(step.mutator.mutate(current, &mut ctx)).catch_unwind();
        let ran = match run.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, mutation).await.ok(),
            None => Some(mutation.await),
        };
        let parts = ctx.into_parts();
        let result = match ran {
            None => self.failed(step, "did not finish before the API server's deadline".to_owned(), answer),
            Some(Err(panic)) => StepResult::Panicked(panic_message(&*panic)),
            Some(Ok(Ok(()))) if run.set_aside && current.pointer("/metadata/managedFields").is_some() => self.failed(
                step,
                "wrote metadata.managedFields, which its pipeline sets aside (set_aside_managed_fields): the patch \
                 would replace the API server's"
                    .to_owned(),
                answer,
            ),
            Some(Ok(Ok(()))) => {
                answer.warnings.extend(parts.warnings);
                answer.audit_annotations.extend(parts.audit_annotations);
                left.on_admit.extend(parts.on_admit);
                *left.shared = parts.shared;
                return StepResult::Applied { changed: tracker.after_step(before, current, run.original) };
            }
            Some(Ok(Err(MutationError::Denied { message }))) => StepResult::Denied(message),
            Some(Ok(Err(MutationError::Undecodable { message }))) => StepResult::Undecodable(message),
            Some(Ok(Err(e @ (MutationError::Failed { .. } | MutationError::Invalid { .. })))) => {
                self.failed(step, crate::error_chain(&e), answer)
            }
            Some(Ok(Err(e @ MutationError::DeadlineExceeded))) => self.failed(step, e.to_string(), answer),
        };
        if let Some(previous) = rollback {
            *current = previous;
        }
        result
    }

    fn failed(&self, step: &Step, message: String, answer: &mut Answer) -> StepResult {
        if step.on_error == FailureMode::AllowWithWarning {
            answer
                .warnings
                .push(format!("{}: {} failed, admitted without its change: {message}", self.inner.name, step.name));
        }
        StepResult::Failed { message, mode: step.on_error }
    }
}

/// What the steps before leave to the steps after, in [`Pipeline::run_step`].
struct Left<'a> {
    on_admit: &'a mut Vec<crate::mutator::AdmitEffect>,
    shared: &'a mut http::Extensions,
}

/// What [`Pipeline::run_step`] needs of the request.
#[derive(Clone, Copy)]
struct Run<'a> {
    request: &'a crate::review::Request,
    namespace: NamespaceView<'a>,
    deadline: Option<Instant>,
    original: &'a Value,
    /// The object's managedFields were set aside: a step must not write new ones.
    set_aside: bool,
}

/// Tells whether a step changed the object without copying the object before each step.
///
/// While no step has changed anything, the object equals the one the API server sent, so a step's
/// change is `object != original`: exact, one comparison. After the first change it is told, when
/// asked for ([`Pipeline::review_reporting_changes`]), by a 64-bit fingerprint of the object before
/// and after the step (a wrong "unchanged" has a 2⁻⁶⁴ chance); otherwise it is not told (`None`):
/// the fingerprints were two passes over the whole object per review, about 5% of a 10 KB review's
/// CPU in the server, for a debug log line. It never feeds the patch, which is always the exact
/// diff against the original.
#[derive(Default)]
struct ChangeTracker {
    /// Tell every step's change, also after the first.
    every_step: bool,
    /// Some step has changed the object.
    diverged: bool,
    /// The fingerprint of the object now, when known.
    print: Option<u64>,
}

/// What [`ChangeTracker::before_step`] knows for [`ChangeTracker::after_step`].
#[derive(Clone, Copy)]
enum Before {
    /// Nothing has changed yet: compare with the original.
    Original,
    /// The object's fingerprint before the step.
    Print(u64),
    /// Not tracked.
    Untracked,
}

impl ChangeTracker {
    fn every_step() -> Self {
        Self { every_step: true, ..Self::default() }
    }

    fn before_step(&mut self, current: &Value) -> Before {
        if !self.diverged {
            Before::Original
        } else if self.every_step {
            Before::Print(*self.print.get_or_insert_with(|| patch::fingerprint(current)))
        } else {
            Before::Untracked
        }
    }

    fn after_step(&mut self, before: Before, current: &Value, original: &Value) -> Option<bool> {
        match before {
            Before::Original => {
                let changed = current != original;
                self.diverged = changed;
                self.print = None;
                Some(changed)
            }
            Before::Print(before) => {
                let now = patch::fingerprint(current);
                self.print = Some(now);
                Some(now != before)
            }
            Before::Untracked => None,
        }
    }
}

enum Gate {
    Apply,
    Skip(String),
    Undecidable(String),
}

/// Whether a step applies, and why not when it does not.
fn applies(step: &Step, input: &MatchInput<'_>) -> Gate {
    if !step.target.matches(input.request) {
        return Gate::Skip(format!("serves {}, not this kind or subresource", step.target));
    }
    if !step.operations.contains(&input.request.operation) {
        return Gate::Skip(format!("does not serve {:?}", input.request.operation));
    }
    let Some(gate) = step.gate.as_ref() else {
        return Gate::Apply;
    };
    match gate.evaluate(input) {
        Decision::Match => Gate::Apply,
        Decision::NoMatch => Gate::Skip(format!("matcher did not match: {}", gate.describe())),
        Decision::Unknown(why) => Gate::Undecidable(why),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(ToString::to_string)
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}

#[cfg(test)]
mod tests;
