//! A complete admission-kit webhook: pods in namespaces labelled `default-labels=enabled` get the
//! label `team: unassigned` unless they already name a team. Run it with
//! `cargo run -p default-labels`; print its webhook configuration with
//! `cargo run -p default-labels -- webhook-config --url https://127.0.0.1:8443`.
use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::Pod;

/// Adds `team: unassigned` when the pod has no `team` label.
#[derive(Debug)]
struct DefaultLabels;

#[async_trait]
impl Mutator<Pod> for DefaultLabels {
    async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.entry("team".into()).or_insert_with(|| "unassigned".into());
        Ok(())
    }
}

fn pipeline() -> Pipeline {
    Pipeline::builder("default-labels.admission-kit.dev")
        .step(Step::new("default-labels", DefaultLabels).when(matcher::namespace_label("default-labels", "enabled")))
        .build()
        .expect("the pipeline is valid")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    admission_kit::cli::run(vec![pipeline()]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use admission_kit::testing::{Harness, review};

    fn harness() -> Harness {
        Harness::new(pipeline()).namespace("on", [("default-labels", "enabled")]).namespace("off", [("other", "x")])
    }

    #[tokio::test]
    async fn labels_pods_in_enabled_namespaces_only() {
        let checked = harness().check(&review(&Pod::default()).namespace("on").build()).await;
        assert_eq!(checked.patched()["metadata"]["labels"]["team"], "unassigned");
        harness().check(&review(&Pod::default()).namespace("off").build()).await.assert_unchanged();
    }

    #[tokio::test]
    async fn keeps_the_team_a_pod_names() {
        let mut pod = Pod::default();
        pod.metadata.labels = Some([("team".into(), "payments".into())].into());
        harness().check(&review(&pod).namespace("on").build()).await.assert_unchanged();
    }
}
