//! default-labels: the smallest complete admission-kit webhook. Pods created in namespaces
//! labelled `default-labels=enabled` get the label `team: unassigned` unless they already name a
//! team.
//!
//! The namespace requirement renders as the webhook's `namespaceSelector`, so the API server only
//! calls the webhook for enabled namespaces. The pipeline asks to be called again
//! (`reinvocationPolicy: IfNeeded`) when a later webhook changes the pod; the mutator is
//! idempotent, so a second call changes nothing. See
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#reinvocation-policy>.
#![warn(missing_docs)]

use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::Pod;

// ANCHOR: mutator
/// Adds `team: unassigned` when the pod has no `team` label.
#[derive(Debug)]
pub struct DefaultLabels;

#[async_trait]
impl Mutator<Pod> for DefaultLabels {
    async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.entry("team".into()).or_insert_with(|| "unassigned".into());
        Ok(())
    }
}
// ANCHOR_END: mutator

// ANCHOR: pipeline
/// The webhook `default-labels.admission-kit.dev`: [`DefaultLabels`] on pods created in namespaces
/// labelled `default-labels=enabled`.
///
/// # Panics
/// Never: its name and steps are constants, and a test builds it.
#[must_use]
pub fn pipeline() -> Pipeline {
    Pipeline::builder("default-labels.admission-kit.dev")
        .step(Step::new("default-labels", DefaultLabels).when(matcher::namespace_label("default-labels", "enabled")))
        .reinvocation(ReinvocationPolicy::IfNeeded)
        .build()
        .expect("the pipeline is valid")
}
// ANCHOR_END: pipeline

#[cfg(test)]
mod tests {
    use super::*;
    use admission_kit::reexports::serde_json;
    use admission_kit::testing::{Harness, review};
    use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook};

    fn harness() -> Harness {
        Harness::new(pipeline()).namespace("on", [("default-labels", "enabled")]).namespace("off", [("other", "x")])
    }

    // ANCHOR: test
    #[tokio::test]
    async fn labels_pods_in_enabled_namespaces_only() {
        let checked = harness().check(&review(&Pod::default()).namespace("on").build()).await;
        assert_eq!(checked.patched()["metadata"]["labels"]["team"], "unassigned");
        harness().check(&review(&Pod::default()).namespace("off").build()).await.assert_unchanged();
    }
    // ANCHOR_END: test

    // ANCHOR: unit_test
    #[tokio::test]
    async fn the_mutator_alone_labels_a_pod_and_keeps_a_named_team() {
        let mut pod = Pod::default();
        let request = Request::of(&pod).namespace("on").build();
        let mut ctx = Context::new(&request, NamespaceView::unknown());
        DefaultLabels.mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["team"], "unassigned");

        pod.metadata.labels = Some([("team".into(), "payments".into())].into());
        DefaultLabels.mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.unwrap()["team"], "payments");
    }
    // ANCHOR_END: unit_test

    #[tokio::test]
    async fn keeps_the_team_a_pod_names() {
        let mut pod = Pod::default();
        pod.metadata.labels = Some([("team".into(), "payments".into())].into());
        harness().check(&review(&pod).namespace("on").build()).await.assert_unchanged();
    }

    #[test]
    fn registers_for_enabled_namespaces_and_reinvocation() {
        let target = ClientTarget::Url("https://127.0.0.1:8443".into());
        let webhook = render_webhook(&pipeline(), &WebhookConfigOptions::new("default-labels", target));
        assert_eq!(webhook.reinvocation_policy.as_deref(), Some("IfNeeded"));
        let selector = serde_json::to_value(webhook.namespace_selector).unwrap();
        assert_eq!(
            selector["matchExpressions"],
            serde_json::json!([{"key": "default-labels", "operator": "In", "values": ["enabled"]}])
        );
    }
}
