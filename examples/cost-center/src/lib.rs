//! cost-center: every pod gets the label `cost-center` of its namespace, from a `ConfigMap` the
//! platform team keeps (`cost-centers`: each data key a namespace, each value its cost center).
//!
//! The example of admission-kit's application shell ([`admission_kit::app`]): the webhook is a
//! [`Plugin`](admission_kit::app::Plugin) ([`plugin::CostCenterWebhook`]) whose asynchronous set-up
//! watches the `ConfigMap` on the shell's shared Kubernetes client (readiness waits for its first
//! list), and which adds a subcommand of its own, `lint`, that checks such a `ConfigMap` before it
//! is applied. `serve` and `webhook-config` come from the shell.
#![warn(missing_docs)]

pub mod plugin;

use std::collections::BTreeMap;
use std::sync::Arc;

use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::Pod;

/// The webhook's name.
pub const WEBHOOK_NAME: &str = "cost-center.admission-kit.dev";

/// The label pods get.
pub const LABEL: &str = "cost-center";

/// Where cost centers come from: the watched `ConfigMap` when serving, a fixed table in tests and
/// when rendering the webhook configuration.
pub trait CostCenters: Send + Sync + 'static {
    /// The cost center of `namespace`, if it has one.
    fn of(&self, namespace: &str) -> Option<String>;
}

impl CostCenters for BTreeMap<String, String> {
    fn of(&self, namespace: &str) -> Option<String> {
        self.get(namespace).cloned()
    }
}

/// Labels a pod with its namespace's cost center. A pod that names one keeps it; a pod in a
/// namespace without one is admitted as it is, with a warning.
pub struct LabelCostCenter {
    table: Arc<dyn CostCenters>,
}

impl std::fmt::Debug for LabelCostCenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LabelCostCenter").finish_non_exhaustive()
    }
}

impl LabelCostCenter {
    /// The mutator, reading cost centers from `table`.
    #[must_use]
    pub fn new(table: Arc<dyn CostCenters>) -> Self {
        Self { table }
    }
}

#[async_trait]
impl Mutator<Pod> for LabelCostCenter {
    async fn mutate(&self, pod: &mut Pod, ctx: &mut Context<'_>) -> MutationResult {
        if pod.metadata.labels.as_ref().is_some_and(|labels| labels.contains_key(LABEL)) {
            return Ok(());
        }
        let namespace = ctx.request().namespace.clone().unwrap_or_default();
        match self.table.of(&namespace) {
            Some(center) => {
                pod.metadata.labels.get_or_insert_default().insert(LABEL.to_owned(), center);
            }
            None => ctx.warn(format!("{WEBHOOK_NAME}: namespace `{namespace}` has no cost center; pod not labelled")),
        }
        Ok(())
    }
}

/// The webhook: pods on CREATE, every namespace but the system ones.
///
/// # Errors
/// Never with this fixed definition; the builder checks names.
pub fn pipeline(table: Arc<dyn CostCenters>) -> Result<Pipeline, admission_kit::pipeline::PipelineError> {
    Pipeline::builder(WEBHOOK_NAME)
        .step(Step::new("cost-center", LabelCostCenter::new(table)).when(matcher::namespace_not_in([
            "kube-system",
            "kube-public",
            "kube-node-lease",
        ])))
        .build()
}

/// What is wrong with a cost-center table, one line per entry: keys must be namespace names
/// (DNS labels), values label values (at most 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends).
/// The API server would reject a pod labelled with a bad value, so a bad entry would block pod
/// creation in its namespace: `lint` catches it before the `ConfigMap` is applied.
#[must_use]
pub fn lint(table: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (namespace, center) in table {
        let dns_label = !namespace.is_empty()
            && namespace.len() <= 63
            && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !namespace.starts_with('-')
            && !namespace.ends_with('-');
        if !dns_label {
            problems.push(format!("`{namespace}` is not a namespace name (lowercase letters, digits and `-`)"));
        }
        let alphanumeric_ends = center.starts_with(|c: char| c.is_ascii_alphanumeric())
            && center.ends_with(|c: char| c.is_ascii_alphanumeric());
        let label_value = center.len() <= 63
            && alphanumeric_ends
            && center.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !label_value {
            problems.push(format!(
                "`{namespace}: {center}`: `{center}` is not a label value (at most 63 of letters, digits, `-`, `_`, `.`, alphanumeric at both ends)"
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use admission_kit::testing::{Harness, review};

    fn table() -> Arc<dyn CostCenters> {
        Arc::new(BTreeMap::from([("shop".to_owned(), "retail-42".to_owned())]))
    }

    #[tokio::test]
    async fn the_mutator_alone_labels_from_the_table_and_keeps_a_named_center() {
        let mut pod = Pod::default();
        let request = Request::of(&pod).namespace("shop").build();
        let mut ctx = Context::new(&request, NamespaceView::unknown());
        LabelCostCenter::new(table()).mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[LABEL], "retail-42");
        assert!(ctx.warnings().is_empty());

        pod.metadata.labels = Some([(LABEL.to_owned(), "own-1".to_owned())].into());
        LabelCostCenter::new(table()).mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.unwrap()[LABEL], "own-1");
    }

    #[tokio::test]
    async fn a_namespace_without_a_center_is_admitted_with_a_warning() {
        let harness = Harness::new(pipeline(table()).unwrap());
        let checked = harness.check(&review(&Pod::default()).namespace("elsewhere").build()).await;
        checked.assert_unchanged();
        let warnings = &checked.answer().warnings;
        assert!(warnings.iter().any(|w| w.contains("namespace `elsewhere` has no cost center")), "{warnings:?}");
        let checked = harness.check(&review(&Pod::default()).namespace("shop").build()).await;
        assert_eq!(checked.patched()["metadata"]["labels"][LABEL], "retail-42");
    }

    #[test]
    fn lint_names_each_bad_entry() {
        let good = BTreeMap::from([("shop".to_owned(), "retail-42".to_owned())]);
        assert!(lint(&good).is_empty());
        let bad = BTreeMap::from([
            ("Shop_Team".to_owned(), "ok".to_owned()),
            ("payments".to_owned(), "fin 7".to_owned()),
            ("search".to_owned(), "-x".to_owned()),
        ]);
        let problems = lint(&bad);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("`Shop_Team` is not a namespace name"), "{problems:?}");
        assert!(problems[1].contains("`fin 7` is not a label value"), "{problems:?}");
    }
}
