//! Webhook-less mode: steps rendered as `MutatingAdmissionPolicy` objects, which the API server
//! runs itself as CEL (`admissionregistration.k8s.io/v1`, generally available and on by default
//! since Kubernetes 1.36). No webhook Deployment, no certificates, no network hop.
//!
//! A step renders when it carries a [`PolicyForm`] (see [`Step::policy_form`]): the mutations as
//! `JSONPatch` expressions, the variables they share, and the denials a mutating policy cannot give
//! (rendered as a `ValidatingAdmissionPolicy`). The step's matcher becomes the policy's
//! `matchConstraints` (rules, `namespaceSelector`, `objectSelector`) and `matchConditions`, as it
//! becomes the webhook's; a matcher the API server cannot check exactly keeps the step in-process.
//! [`render_policies`] renders every step or says, step by step, why one cannot be: a Rust mutator
//! never can, so a user knows what keeps the webhook.

pub mod cel;

use std::fmt;

use serde_json::{Value, json};

use crate::matcher::{LabelRequirement, ServerFilter};
use crate::pipeline::{FailurePolicy, Pipeline, ReinvocationPolicy, Step};

/// The `apiVersion` of the rendered objects.
pub const API_VERSION: &str = "admissionregistration.k8s.io/v1";

/// What a step is as a policy. Implemented by mutators written as data (their mutations can be
/// expressed in CEL); a step whose effect an earlier step's policy already renders says so.
pub trait PolicyForm: Send + Sync + 'static {
    /// The step's policy, or why it has none.
    ///
    /// # Errors
    /// Why this step, as configured, cannot be a policy (the text is shown to the user).
    fn render(&self) -> Result<StepPolicy, String>;
}

/// A step's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepPolicy {
    /// The step's own policy.
    Parts(PolicyParts),
    /// Nothing of its own: the text says which earlier step's policy renders its effect.
    Within(String),
}

/// The parts of a step's mutating policy (and of its validating policy, for denials).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyParts {
    /// `matchConditions` (name, CEL) after the step matcher's own.
    pub conditions: Vec<(String, String)>,
    /// `variables` (name, CEL), in order; later ones may use earlier ones as `variables.<name>`.
    pub variables: Vec<(String, String)>,
    /// `JSONPatch` mutations, each a CEL expression yielding a list of `JSONPatch{…}`, applied in order.
    pub mutations: Vec<String>,
    /// Denials: rendered as a `ValidatingAdmissionPolicy`, which sees the object as mutated.
    pub validations: Vec<Validation>,
}

impl PolicyParts {
    /// Parts with no mutations yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a variable.
    #[must_use]
    pub fn variable(mut self, name: impl Into<String>, expression: impl Into<String>) -> Self {
        self.variables.push((name.into(), expression.into()));
        self
    }

    /// Adds a match condition.
    #[must_use]
    pub fn condition(mut self, name: impl Into<String>, expression: impl Into<String>) -> Self {
        self.conditions.push((name.into(), expression.into()));
        self
    }

    /// Adds a `JSONPatch` mutation.
    #[must_use]
    pub fn mutation(mut self, expression: impl Into<String>) -> Self {
        self.mutations.push(expression.into());
        self
    }

    /// Adds a denial.
    #[must_use]
    pub fn validation(mut self, validation: Validation) -> Self {
        self.validations.push(validation);
        self
    }
}

/// One check of the validating policy: the object passes when `expression` is true; otherwise the
/// request is denied with `message_expression`'s text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Validation {
    /// `matchConditions` of the validating policy (name, CEL): when any is false, nothing is checked.
    pub conditions: Vec<(String, String)>,
    /// True when the object may pass.
    pub expression: String,
    /// The denial's message (CEL yielding a string).
    pub message_expression: String,
}

impl Validation {
    /// A check.
    #[must_use]
    pub fn new(expression: impl Into<String>, message_expression: impl Into<String>) -> Self {
        Self { conditions: Vec::new(), expression: expression.into(), message_expression: message_expression.into() }
    }

    /// Checks only objects for which `expression` holds.
    #[must_use]
    pub fn when(mut self, name: impl Into<String>, expression: impl Into<String>) -> Self {
        self.conditions.push((name.into(), expression.into()));
        self
    }
}

/// A step that cannot be rendered, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unrenderable {
    /// The pipeline's name.
    pub pipeline: String,
    /// The step's name.
    pub step: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Unrenderable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step `{}` of `{}`: {}", self.step, self.pipeline, self.reason)
    }
}

/// Why the pipelines could not be rendered: every step that cannot be, each with its reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} step(s) cannot run as a policy and need the webhook:\n{}", .0.len(), .0.iter().map(|u| format!("  - {u}")).collect::<Vec<_>>().join("\n"))]
pub struct RenderError(pub Vec<Unrenderable>);

/// What the rendering needs besides the pipelines.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct PolicyOptions {
    /// Namespaces the policies never apply to, as `kubernetes.io/metadata.name NotIn` (as for the
    /// webhook).
    pub exclude_namespaces: Vec<String>,
}

impl PolicyOptions {
    /// No exclusions.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Never apply to these namespaces.
    #[must_use]
    pub fn exclude_namespaces<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.exclude_namespaces.extend(names.into_iter().map(Into::into));
        self
    }
}

/// Renders every step of `pipelines` as a `MutatingAdmissionPolicy` and its binding (plus a
/// `ValidatingAdmissionPolicy` and binding for a step with denials), in pipeline and step order.
///
/// # Errors
/// [`RenderError`] listing every step that cannot be rendered: one without a [`PolicyForm`], one
/// whose form refuses, one whose matcher the API server cannot check exactly.
pub fn render_policies(pipelines: &[Pipeline], options: &PolicyOptions) -> Result<Vec<Value>, RenderError> {
    let mut objects = Vec::new();
    let mut unrenderable = Vec::new();
    for pipeline in pipelines {
        for step in pipeline.steps() {
            match render_step(pipeline, step, options) {
                Ok(rendered) => objects.extend(rendered),
                Err(reason) => unrenderable.push(Unrenderable {
                    pipeline: pipeline.name().to_owned(),
                    step: step.name().to_owned(),
                    reason,
                }),
            }
        }
    }
    if unrenderable.is_empty() { Ok(objects) } else { Err(RenderError(unrenderable)) }
}

fn render_step(pipeline: &Pipeline, step: &Step, options: &PolicyOptions) -> Result<Vec<Value>, String> {
    let Some(form) = step.policy() else {
        return Err("its mutator is Rust code, which the API server cannot run (it has no policy form)".to_owned());
    };
    let parts = match form.render()? {
        StepPolicy::Parts(parts) => parts,
        StepPolicy::Within(_) => return Ok(Vec::new()),
    };
    let filter = step.exact_filter();
    if !filter.exact {
        return Err(
            "its matcher decides on more than the API server can check (a selector or CEL condition), so a policy would apply too widely".to_owned(),
        );
    }
    let name = policy_name(pipeline.name(), step.name())?;
    let constraints = match_constraints(step, &filter, options);
    let mut conditions = Vec::new();
    if let Some(condition) = &filter.condition {
        conditions.push(json!({"name": "admission-kit-matchers", "expression": condition}));
    }
    // Exact and namespace-free: the pipeline would not have been built otherwise.
    if let Some(cel) = pipeline.leave_alone().and_then(|m| m.server_filter().as_cel()) {
        conditions.push(json!({"name": "admission-kit-leave-alone", "expression": format!("!({cel})")}));
    }
    conditions.extend(parts.conditions.iter().map(|(n, e)| json!({"name": n, "expression": e})));
    let failure = match pipeline.failure_policy() {
        FailurePolicy::Fail => "Fail",
        FailurePolicy::Ignore => "Ignore",
    };
    let mut mutating = json!({
        "apiVersion": API_VERSION,
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": failure,
            "reinvocationPolicy": match pipeline.reinvocation() {
                ReinvocationPolicy::Never => "Never",
                ReinvocationPolicy::IfNeeded => "IfNeeded",
            },
            "matchConstraints": constraints,
            "variables": parts.variables.iter().map(|(n, e)| json!({"name": n, "expression": e})).collect::<Vec<_>>(),
            "mutations": parts.mutations.iter()
                .map(|e| json!({"patchType": "JSONPatch", "jsonPatch": {"expression": e}}))
                .collect::<Vec<_>>(),
        },
    });
    if !conditions.is_empty() {
        mutating["spec"]["matchConditions"] = Value::Array(conditions.clone());
    }
    let mut objects = vec![
        mutating,
        json!({
            "apiVersion": API_VERSION,
            "kind": "MutatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name},
        }),
    ];
    if !parts.validations.is_empty() {
        let validation_conditions: Vec<Value> = parts
            .validations
            .iter()
            .flat_map(|v| v.conditions.iter())
            .map(|(n, e)| json!({"name": n, "expression": e}))
            .collect();
        let mut validating = json!({
            "apiVersion": API_VERSION,
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": failure,
                "matchConstraints": constraints,
                "validations": parts.validations.iter()
                    .map(|v| json!({"expression": v.expression, "messageExpression": v.message_expression}))
                    .collect::<Vec<_>>(),
            },
        });
        // The variables, when a check reads them (unused ones would only cost compiling).
        if parts.validations.iter().any(|v| format!("{} {}", v.expression, v.message_expression).contains("variables."))
        {
            validating["spec"]["variables"] =
                parts.variables.iter().map(|(n, e)| json!({"name": n, "expression": e})).collect::<Vec<_>>().into();
        }
        let all_conditions: Vec<Value> = conditions.into_iter().chain(validation_conditions).collect();
        if !all_conditions.is_empty() {
            validating["spec"]["matchConditions"] = Value::Array(all_conditions);
        }
        objects.push(validating);
        objects.push(json!({
            "apiVersion": API_VERSION,
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"]},
        }));
    }
    Ok(objects)
}

/// `<pipeline>.<step>`, which must be a DNS subdomain (lower case, digits, `-` and `.`).
fn policy_name(pipeline: &str, step: &str) -> Result<String, String> {
    let name = format!("{pipeline}.{step}");
    let valid = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if valid {
        Ok(name)
    } else {
        Err(format!("the policy name `{name}` (pipeline and step name) is not a DNS subdomain"))
    }
}

fn match_constraints(step: &Step, filter: &ServerFilter, options: &PolicyOptions) -> Value {
    let target = step.target();
    let operations: Vec<&str> = step.served_operations().iter().map(crate::review::operation_name).collect();
    let mut namespace = filter.namespace.clone();
    if !options.exclude_namespaces.is_empty() {
        namespace.push(LabelRequirement::new(
            crate::matcher::NAMESPACE_NAME_LABEL,
            crate::matcher::LabelOp::NotIn(options.exclude_namespaces.clone()),
        ));
    }
    let selector = |requirements: &[LabelRequirement]| -> Value {
        let expressions: Vec<Value> =
            requirements.iter().map(|r| serde_json::to_value(r.to_k8s()).unwrap_or(Value::Null)).collect();
        if expressions.is_empty() { json!({}) } else { json!({"matchExpressions": expressions}) }
    };
    json!({
        "resourceRules": [{
            "apiGroups": [target.group],
            "apiVersions": [target.version],
            "resources": [target.plural],
            "operations": operations,
        }],
        "namespaceSelector": selector(&namespace),
        "objectSelector": selector(&filter.object),
        "matchPolicy": "Equivalent",
    })
}

#[cfg(test)]
mod tests;
