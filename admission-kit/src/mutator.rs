//! Mutators: plain logic that changes one object in place, or denies it.
//!
//! A [`Mutator<K>`] works on any k8s-openapi resource `K`; a [`DynamicMutator`] works on the raw JSON
//! of any kind, including custom resources the crate does not know. Neither writes patch
//! operations: the pipeline diffs the object before and after (see [`crate::patch`]).
//! See <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/>.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde_json::Value;

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
pub struct Context<'a> {
    request: &'a Request,
    namespace_labels: Option<&'a BTreeMap<String, String>>,
    warnings: Vec<String>,
    audit_annotations: BTreeMap<String, String>,
    on_admit: Vec<AdmitEffect>,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("request", &self.request)
            .field("namespace_labels", &self.namespace_labels)
            .field("warnings", &self.warnings)
            .field("audit_annotations", &self.audit_annotations)
            .field("on_admit", &self.on_admit.len())
            .finish()
    }
}

impl<'a> Context<'a> {
    pub(crate) fn new(request: &'a Request, namespace_labels: Option<&'a BTreeMap<String, String>>) -> Self {
        Self {
            request,
            namespace_labels,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
            on_admit: Vec::new(),
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
        self.namespace_labels
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

    pub(crate) fn into_parts(self) -> (Vec<String>, BTreeMap<String, String>, Vec<AdmitEffect>) {
        (self.warnings, self.audit_annotations, self.on_admit)
    }
}

/// Changes one object of type `K` in place.
///
/// `K` is any k8s-openapi resource (`Pod`, `Deployment`, …). Implementations are plain logic: no
/// HTTP, no patches. Return [`MutationError::deny`] to refuse the object.
#[async_trait]
pub trait Mutator<K>: Send + Sync + fmt::Debug + 'static {
    /// Changes `object`; anything it changes ends up in the patch, nothing else does.
    async fn mutate(&self, object: &mut K, ctx: &mut Context<'_>) -> MutationResult;
}

/// Changes the raw JSON of one object in place: for kinds the crate does not know (custom
/// resources) or mutators that want to work on JSON directly.
#[async_trait]
pub trait DynamicMutator: Send + Sync + fmt::Debug + 'static {
    /// Changes `object` (the JSON the API server sent).
    async fn mutate(&self, object: &mut Value, ctx: &mut Context<'_>) -> MutationResult;
}

/// A [`DynamicMutator`] from a closure, for mutators that need no state.
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
