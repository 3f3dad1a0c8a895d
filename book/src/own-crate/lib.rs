//! my-webhook: pods without a `team` label get `team: unassigned`.

use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::Pod;

/// The mutator: plain logic over a typed pod.
pub struct DefaultTeam;

#[async_trait]
impl Mutator<Pod> for DefaultTeam {
    async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.entry("team".into()).or_insert_with(|| "unassigned".into());
        Ok(())
    }
}

/// The webhook: its name (yours, fully qualified) is in its metrics and its configuration.
pub fn pipeline() -> anyhow::Result<Pipeline> {
    Ok(Pipeline::builder("default-team.my-company.example").step(Step::new("default-team", DefaultTeam)).build()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pod_without_a_team_gets_one_and_a_named_team_stays() {
        let mut pod = Pod::default();
        let request = Request::of(&pod).namespace("shop").build();
        let mut ctx = Context::new(&request, NamespaceView::unknown());
        DefaultTeam.mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["team"], "unassigned");

        pod.metadata.labels = Some([("team".into(), "payments".into())].into());
        DefaultTeam.mutate(&mut pod, &mut ctx).await.unwrap();
        assert_eq!(pod.metadata.labels.unwrap()["team"], "payments");
    }

    #[test]
    fn the_pipeline_builds() {
        pipeline().unwrap();
    }
}
