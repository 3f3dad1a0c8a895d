//! service-owner: give every Service an owner label (`example.com/owner` by default), with a
//! configured value, unless it names its owner already.
//!
//! The mutator is *dynamic*: a [`DynamicMutator`] over the object's raw JSON, registered with
//! [`Step::dynamic`] and a [`ResourceTarget`] (group, version, kind and plural resource) instead
//! of a k8s-openapi type. It only touches `metadata.labels`, which every Kubernetes object has,
//! so the same mutator serves any kind, including custom resources that no Rust type describes:
//!
//! ```
//! use admission_kit::pipeline::ResourceTarget;
//! use service_owner::{OwnerLabel, pipeline_for, services};
//!
//! let owner = OwnerLabel::new("example.com/owner".parse()?, "platform".parse()?);
//! // A custom resource: group `example.com`, version `v1`, kind `Widget`, resource `widgets`.
//! let widgets = ResourceTarget::new("example.com", "v1", "Widget", "widgets");
//! // Another built-in kind: `apps/v1` Deployments.
//! let deployments = ResourceTarget::new("apps", "v1", "Deployment", "deployments");
//! let pipeline = pipeline_for(&owner, [services(), widgets, deployments])?;
//! assert_eq!(pipeline.steps().len(), 3); // one step, and one webhook rule, per kind
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The API server only sends the kinds listed in the webhook's rules, which admission-kit renders
//! from the steps' targets; see
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#matching-requests-rules>
//! and, for label syntax, <https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#syntax-and-character-set>.
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use admission_kit::pipeline::{PipelineError, ResourceTarget};
use admission_kit::prelude::*;
use serde_json::{Map, Value};

/// The webhook's name.
pub const WEBHOOK_NAME: &str = "service-owner.admission-kit.dev";

/// The label key used unless configured otherwise.
pub const DEFAULT_OWNER_LABEL: &str = "example.com/owner";

/// Why a label key or value is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    /// The key breaks the label key syntax.
    #[error(
        "`{0}` is not a label key: an optional DNS-subdomain prefix and `/`, then at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
    )]
    Key(String),
    /// The value breaks the label value syntax, or is empty.
    #[error(
        "`{0}` is not an owner: at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
    )]
    Value(String),
}

/// A label key such as `example.com/owner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelKey(String);

impl FromStr for LabelKey {
    type Err = LabelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (prefix, name) = text.rsplit_once('/').map_or((None, text), |(p, n)| (Some(p), n));
        let prefix_ok = prefix.is_none_or(|p| {
            p.len() <= 253
                && p.split('.').all(|c| {
                    c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                        && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                        && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
                })
        });
        if prefix_ok && is_label_name(name) { Ok(Self(text.to_owned())) } else { Err(LabelError::Key(text.to_owned())) }
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An owner: a non-empty label value such as `team-payments`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner(String);

impl FromStr for Owner {
    type Err = LabelError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if is_label_name(text) { Ok(Self(text.to_owned())) } else { Err(LabelError::Value(text.to_owned())) }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, at most 63 characters, not empty.
fn is_label_name(text: &str) -> bool {
    let edge = |c: char| c.is_ascii_alphanumeric();
    text.len() <= 63
        && text.starts_with(edge)
        && text.ends_with(edge)
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Adds `key: owner` to objects that have no `key` label, whatever their kind.
#[derive(Clone, Debug)]
pub struct OwnerLabel {
    key: LabelKey,
    owner: Owner,
}

impl OwnerLabel {
    /// Labels objects without `key` with `owner`.
    #[must_use]
    pub fn new(key: LabelKey, owner: Owner) -> Self {
        Self { key, owner }
    }
}

#[async_trait]
impl DynamicMutator for OwnerLabel {
    async fn mutate(&self, object: &mut Value, _ctx: &mut Context<'_>) -> MutationResult {
        let invalid = |message: &str| MutationError::Invalid { message: message.to_owned() };
        let object = object.as_object_mut().ok_or_else(|| invalid("the object is not a JSON object"))?;
        let metadata = object.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
        let metadata = metadata.as_object_mut().ok_or_else(|| invalid("metadata is not a JSON object"))?;
        let labels = metadata.entry("labels").or_insert(Value::Null);
        if labels.is_null() {
            *labels = Value::Object(Map::new());
        }
        let labels = labels.as_object_mut().ok_or_else(|| invalid("metadata.labels is not a JSON object"))?;
        match labels.get(&self.key.0) {
            None => {
                labels.insert(self.key.0.clone(), Value::String(self.owner.0.clone()));
                Ok(())
            }
            // An explicit empty owner is a mistake to fix, not a value to overwrite silently.
            Some(Value::String(owner)) if owner.is_empty() => Err(MutationError::deny(format!(
                "label `{}` is empty: set it to the owning team, or remove it to get the default owner `{}`",
                self.key, self.owner
            ))),
            Some(_) => Ok(()),
        }
    }
}

/// The target of core `v1` Services (`services`).
#[must_use]
pub fn services() -> ResourceTarget {
    ResourceTarget::new("", "v1", "Service", "services")
}

/// The webhook [`WEBHOOK_NAME`]: `owner` on Services, when created or updated (so the label
/// cannot be dropped by an update either).
///
/// # Panics
/// Never: the name and the single step are constants, and tests build it.
#[must_use]
pub fn pipeline(owner: &OwnerLabel) -> Pipeline {
    pipeline_for(owner, [services()]).expect("the pipeline is valid")
}

/// The webhook [`WEBHOOK_NAME`] serving `owner` on each of `targets` (one step per kind, named
/// after its resource, such as `owner-label-services` or `owner-label-widgets.example.com`).
pub fn pipeline_for(
    owner: &OwnerLabel,
    targets: impl IntoIterator<Item = ResourceTarget>,
) -> Result<Pipeline, PipelineError> {
    targets
        .into_iter()
        .fold(Pipeline::builder(WEBHOOK_NAME), |builder, target| {
            let name = if target.group.is_empty() {
                format!("owner-label-{}", target.plural)
            } else {
                format!("owner-label-{}.{}", target.plural, target.group)
            };
            builder.step(Step::dynamic(name, target, owner.clone()).operations([Operation::Create, Operation::Update]))
        })
        .build()
}

#[cfg(test)]
mod tests;
