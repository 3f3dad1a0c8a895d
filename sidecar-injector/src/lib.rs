//! sidecar-injector: inject sidecars into pods, as `ExpediaGroup`'s kubernetes-sidecar-injector does,
//! without its faults — built only on admission-kit's public API.
//!
//! A pod in a namespace labelled `kubernetes-sidecar-injector: enabled` with the annotation
//! `sidecar-injector.expedia.com/inject: "a, b"` gets the catalog's sidecars `a` and `b`, in that
//! order, and every other `sidecar-injector.expedia.com/<key>` annotation becomes env var `<key>` in
//! the injected containers. See [`config::Config`] for every knob.

pub mod catalog;
pub mod config;
pub mod env_rules;
pub mod expedia;
pub mod inject;
pub mod metrics;
pub mod offline;
pub mod plugin;
pub mod policy;
pub mod settings;

use std::sync::Arc;

use admission_kit::matcher::{self, Matcher};
use admission_kit::pipeline::{PipelineError, ResourceTarget};
use admission_kit::{Pipeline, Step};
use k8s_openapi::api::core::v1::Pod;

use crate::catalog::CatalogStore;
use crate::config::Config;
use crate::inject::{Annotations, EnvFromAnnotations, SidecarMutator};

/// The embedded default configuration: the Expedia defaults plus one example sidecar, so that
/// `sidecar-injector serve` with no arguments has something to inject.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

/// The matcher both steps share: opted-in namespace, not an excluded one, and the `inject`
/// annotation present. The namespace label and the exclusions render as the webhook's
/// `namespaceSelector`, the annotation as its `matchConditions`.
// ANCHOR: selection
#[must_use]
pub fn selection(config: &Config) -> matcher::All {
    let annotations = Annotations::of(&config.injection());
    matcher::namespace_label(&config.namespace_label_key, &config.namespace_label_value)
        .and(matcher::namespace_not_in(config.excluded_namespaces.iter().cloned()))
        .and(matcher::has_annotation(annotations.inject))
}
// ANCHOR_END: selection

/// The admission pipeline: sidecars, then env from annotations; pod CREATE only.
pub fn pipeline(
    config: &Config,
    catalog: Arc<CatalogStore>,
    metrics: Option<&metrics::InjectorMetrics>,
) -> Result<Pipeline, PipelineBuildError> {
    pipeline_with(config, catalog, None, metrics)
}

/// [`pipeline`], also reading sidecars from `ConfigMaps` in the pod's namespace.
pub fn pipeline_with(
    config: &Config,
    catalog: Arc<CatalogStore>,
    namespaced: Option<Arc<catalog::NamespaceCatalogs>>,
    metrics: Option<&metrics::InjectorMetrics>,
) -> Result<Pipeline, PipelineBuildError> {
    let settings = Arc::new(config.injection());
    let policy = policy::InjectorPolicy::new(
        settings.clone(),
        catalog.clone(),
        namespaced.is_some() || config.namespace_catalogs,
    );
    let mut sidecars = SidecarMutator::new(catalog, settings.clone());
    if let Some(namespaced) = namespaced {
        sidecars = sidecars.with_namespace_catalogs(namespaced);
    }
    if let Some(metrics) = metrics {
        sidecars = sidecars.counting(metrics.counter());
    }
    let pod = ResourceTarget::of::<Pod>();
    Ok(Pipeline::builder(&config.webhook_name)
        .step(Step::dynamic("sidecars", pod.clone(), sidecars).when(selection(config)).policy_form(policy))
        .step(
            Step::dynamic("env-from-annotations", pod, EnvFromAnnotations::new(&settings))
                .when(selection(config))
                .policy_form(policy::EnvWithinSidecars),
        )
        // A pod that arrives injected (reinvoked after another webhook or admission plugin changed it,
        // or created with the status annotation) is left alone, and the API server asked not to call.
        .leave_alone(matcher::has_annotation(Annotations::of(&settings).status))
        // Neither step nor the matchers read or write the API server's field-ownership records.
        .set_aside_managed_fields()
        .failure_policy(config.failure_policy)
        .reinvocation(config.reinvocation_policy)
        .timeout_seconds(config.timeout_seconds)
        .match_conditions(config.match_conditions)
        .build()?)
}

/// Why the pipeline could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineBuildError {
    /// A configuration value.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The pipeline itself (e.g. a webhook name that is not fully qualified).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}
