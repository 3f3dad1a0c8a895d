//! pod-defaults: give pods what they lack — resource requests and limits for containers that set
//! none, tolerations, and a topology spread across zones over the pod's own labels.
//!
//! Everything comes from a small typed configuration ([`config::Config`]): the built-in defaults
//! ([`config::DEFAULT_CONFIG`]) or a YAML file. The mutator only adds: it never changes a value a
//! pod sets, so a second call (`reinvocationPolicy: IfNeeded`, for containers that later webhooks
//! inject) changes nothing. See
//! <https://kubernetes.io/docs/concepts/configuration/manage-resources-containers/>,
//! <https://kubernetes.io/docs/concepts/scheduling-eviction/taint-and-toleration/> and
//! <https://kubernetes.io/docs/concepts/scheduling-eviction/topology-spread-constraints/>.
#![warn(missing_docs)]

pub mod config;

use std::collections::BTreeMap;

use admission_kit::pipeline::ReinvocationPolicy;
use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::{Container, Pod, ResourceRequirements, TopologySpreadConstraint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::config::{Config, ResourceDefaults, TopologySpreadDefault};

/// The webhook's name.
pub const WEBHOOK_NAME: &str = "pod-defaults.admission-kit.dev";

/// Adds the configured defaults that a pod lacks.
#[derive(Debug)]
pub struct PodDefaults {
    config: Config,
}

impl PodDefaults {
    /// A mutator applying `config`.
    #[must_use]
    pub fn new(config: Config) -> Self {
        Self { config }
    }
}

#[async_trait]
impl Mutator<Pod> for PodDefaults {
    async fn mutate(&self, pod: &mut Pod, ctx: &mut Context<'_>) -> MutationResult {
        let spread = self.config.topology_spread.as_ref().and_then(|s| spread_for(pod, s));
        let Some(spec) = pod.spec.as_mut() else { return Ok(()) };
        // With pod-level resources the containers share the pod's budget; defaults would fight it.
        if let Some(resources) = self.config.resources.as_ref().filter(|_| spec.resources.is_none()) {
            let containers = spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten());
            let defaulted: Vec<String> =
                containers.filter_map(|c| default_resources(c, resources).then(|| c.name.clone())).collect();
            if !defaulted.is_empty() {
                ctx.warn(format!(
                    "{WEBHOOK_NAME}: set default resources on containers that had none: {}",
                    defaulted.join(", ")
                ));
            }
        }
        for toleration in &self.config.tolerations {
            let tolerations = spec.tolerations.get_or_insert_default();
            if !tolerations.iter().any(|existing| toleration.is(existing)) {
                tolerations.push(toleration.to_k8s());
            }
        }
        if let Some(spread) = spread {
            spec.topology_spread_constraints.get_or_insert_default().push(spread);
        }
        Ok(())
    }
}

/// Gives `container` the default requests and limits if it sets neither; says whether it did.
fn default_resources(container: &mut Container, defaults: &ResourceDefaults) -> bool {
    let unset = |m: Option<&BTreeMap<_, _>>| m.is_none_or(BTreeMap::is_empty);
    let sets_none = container.resources.as_ref().is_none_or(|r| unset(r.requests.as_ref()) && unset(r.limits.as_ref()));
    let ResourceRequirements { requests, limits, .. } = defaults.to_k8s();
    if !sets_none || (requests.is_none() && limits.is_none()) {
        return false;
    }
    let resources = container.resources.get_or_insert_default();
    // Only fill what the defaults name, so an empty `requests: {}` the pod wrote is not removed.
    if requests.is_some() {
        resources.requests = requests;
    }
    if limits.is_some() {
        resources.limits = limits;
    }
    true
}

/// The spread constraint `pod` should get, if any: not for pods that already spread over the
/// key, `DaemonSet` pods (one per node: a zone spread could only leave them pending), pods already
/// bound to a node, or pods with no workload labels.
fn spread_for(pod: &Pod, spread: &TopologySpreadDefault) -> Option<TopologySpreadConstraint> {
    let spec = pod.spec.as_ref()?;
    let spreads_already =
        spec.topology_spread_constraints.iter().flatten().any(|c| c.topology_key == spread.topology_key);
    let daemon = pod.metadata.owner_references.iter().flatten().any(|o| o.kind == "DaemonSet");
    if spreads_already || daemon || spec.node_name.is_some() {
        return None;
    }
    let labels: BTreeMap<String, String> = pod
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(key, _)| !spread.exclude_labels.contains(key))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (!labels.is_empty()).then(|| TopologySpreadConstraint {
        label_selector: Some(LabelSelector { match_labels: Some(labels), match_expressions: None }),
        max_skew: spread.max_skew,
        topology_key: spread.topology_key.clone(),
        when_unsatisfiable: format!("{:?}", spread.when_unsatisfiable),
        ..TopologySpreadConstraint::default()
    })
}

/// The webhook [`WEBHOOK_NAME`]: [`PodDefaults`] on pods created outside the configuration's
/// `excludedNamespaces` (rendered as the webhook's `namespaceSelector`).
///
/// # Panics
/// Never: the name and step are constants, and tests build it.
#[must_use]
pub fn pipeline(config: Config) -> Pipeline {
    let excluded = matcher::namespace_not_in(config.excluded_namespaces.clone());
    Pipeline::builder(WEBHOOK_NAME)
        .step(Step::new("pod-defaults", PodDefaults::new(config)).when(excluded))
        .reinvocation(ReinvocationPolicy::IfNeeded)
        .build()
        .expect("the pipeline is valid")
}

#[cfg(test)]
mod tests;
