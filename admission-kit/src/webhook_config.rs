//! Rendering the `MutatingWebhookConfiguration` that registers pipelines with the API server.
//!
//! Implements <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#configure-admission-webhooks-on-the-fly>:
//! rules from the steps' kinds and operations, selectors and `matchConditions` from their matchers,
//! `sideEffects: None`, `admissionReviewVersions: [v1]`, and the client config with its `caBundle`.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MatchCondition, MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
    WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::matcher::LabelRequirement;
use crate::pipeline::{FailurePolicy, Pipeline, ReinvocationPolicy, ResourceTarget};

/// Where the API server sends reviews.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientTarget {
    /// A Service in the cluster (the pipeline's path is appended).
    Service {
        /// The Service's namespace.
        namespace: String,
        /// The Service's name.
        name: String,
        /// The Service port (443 by default in Kubernetes).
        port: i32,
    },
    /// A URL, e.g. `https://127.0.0.1:8443` for out-of-cluster development (the path is appended).
    Url(String),
}

/// What the rendering needs besides the pipelines.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WebhookConfigOptions {
    /// `metadata.name` of the configuration.
    pub name: String,
    /// Where the API server sends reviews.
    pub target: ClientTarget,
    /// PEM of the CA that signed the serving certificate (omit when cert-manager injects it).
    pub ca_bundle: Option<Vec<u8>>,
    /// Namespaces the webhook must never be called for (its own, to avoid deadlocks); rendered as
    /// a `kubernetes.io/metadata.name NotIn` requirement on every webhook.
    pub exclude_namespaces: Vec<String>,
}

impl WebhookConfigOptions {
    /// Options with no CA bundle and no exclusions.
    pub fn new(name: impl Into<String>, target: ClientTarget) -> Self {
        Self { name: name.into(), target, ca_bundle: None, exclude_namespaces: Vec::new() }
    }

    /// Sets the CA bundle (PEM).
    #[must_use]
    pub fn ca_bundle(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_bundle = Some(pem.into());
        self
    }

    /// Never call the webhook for these namespaces.
    #[must_use]
    pub fn exclude_namespaces<S: Into<String>>(mut self, names: impl IntoIterator<Item = S>) -> Self {
        self.exclude_namespaces.extend(names.into_iter().map(Into::into));
        self
    }
}

fn selector(requirements: &[LabelRequirement]) -> LabelSelector {
    LabelSelector {
        match_expressions: (!requirements.is_empty())
            .then(|| requirements.iter().map(LabelRequirement::to_k8s).collect()),
        match_labels: None,
    }
}

/// Renders one webhook entry for a pipeline.
#[must_use]
pub fn render_webhook(pipeline: &Pipeline, options: &WebhookConfigOptions) -> MutatingWebhook {
    let mut rules: BTreeMap<ResourceTarget, Vec<&'static str>> = BTreeMap::new();
    for step in pipeline.steps() {
        let ops = rules.entry(step.target().clone()).or_default();
        for op in step.served_operations() {
            let name = crate::review::operation_name(op);
            if !ops.contains(&name) {
                ops.push(name);
            }
        }
    }
    let rules = rules
        .into_iter()
        .map(|(t, ops)| RuleWithOperations {
            api_groups: Some(vec![t.group]),
            api_versions: Some(vec![t.version]),
            resources: Some(vec![t.plural]),
            operations: Some(ops.into_iter().map(str::to_owned).collect()),
            scope: Some("*".to_owned()),
        })
        .collect();

    let filter = pipeline.server_filter();
    let mut namespace = filter.namespace.clone();
    if !options.exclude_namespaces.is_empty() {
        namespace.push(LabelRequirement::new(
            crate::matcher::NAMESPACE_NAME_LABEL,
            crate::matcher::LabelOp::NotIn(options.exclude_namespaces.clone()),
        ));
    }
    let match_conditions = match (&filter.condition, pipeline.renders_match_conditions()) {
        // DELETE requests carry no object; the condition lets them through to be decided in-process.
        (Some(condition), true) => Some(vec![MatchCondition {
            name: "admission-kit-matchers".to_owned(),
            expression: format!("object == null || ({condition})"),
        }]),
        _ => None,
    };
    let path = pipeline.path().to_owned();
    let client_config = WebhookClientConfig {
        ca_bundle: options.ca_bundle.clone().map(ByteString),
        service: match &options.target {
            ClientTarget::Service { namespace, name, port } => Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path.clone()),
                port: Some(*port),
            }),
            ClientTarget::Url(_) => None,
        },
        url: match &options.target {
            ClientTarget::Url(base) => Some(format!("{}{path}", base.trim_end_matches('/'))),
            ClientTarget::Service { .. } => None,
        },
    };
    MutatingWebhook {
        name: pipeline.name().to_owned(),
        admission_review_versions: vec!["v1".to_owned()],
        client_config,
        failure_policy: Some(
            match pipeline.failure_policy() {
                FailurePolicy::Fail => "Fail",
                FailurePolicy::Ignore => "Ignore",
            }
            .to_owned(),
        ),
        match_policy: Some("Equivalent".to_owned()),
        match_conditions,
        namespace_selector: Some(selector(&namespace)),
        object_selector: Some(selector(&filter.object)),
        reinvocation_policy: Some(
            match pipeline.reinvocation() {
                ReinvocationPolicy::Never => "Never",
                ReinvocationPolicy::IfNeeded => "IfNeeded",
            }
            .to_owned(),
        ),
        rules: Some(rules),
        side_effects: "None".to_owned(),
        timeout_seconds: Some(pipeline.timeout_seconds()),
    }
}

/// Renders the `MutatingWebhookConfiguration` for `pipelines`, one webhook each, in order.
#[must_use]
pub fn render_webhook_config(pipelines: &[Pipeline], options: &WebhookConfigOptions) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta { name: Some(options.name.clone()), ..ObjectMeta::default() },
        webhooks: Some(pipelines.iter().map(|p| render_webhook(p, options)).collect()),
    }
}
