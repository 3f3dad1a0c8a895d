//! The injector's own metrics, registered in admission-kit's registry (prefix
//! `admission_kit_sidecar_injector_`): injections by sidecar and outcome, catalog reloads by
//! result, and catalog size.

use std::sync::Arc;

use admission_kit::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::inject::InjectionCounter;

/// Labels of an injection outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InjectionLabels {
    /// The catalog's name of the sidecar; `(unknown)` for a name in no catalog and
    /// `(namespace ConfigMap)` for a sidecar from a namespace `ConfigMap` (requested names are user
    /// input and never become label values).
    pub sidecar: String,
    /// `injected`, `unknown`, `not_allowed` or `collision` (counted under either collision policy).
    pub outcome: String,
}

/// Labels of a catalog reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: String,
}

/// The injector's metrics.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct InjectorMetrics {
    /// Injections by sidecar and outcome.
    pub injections: Family<InjectionLabels, Counter>,
    /// Catalog reloads by result.
    pub catalog_reloads: Family<ReloadLabels, Counter>,
    /// Sidecars in the catalog in service.
    pub catalog_sidecars: Gauge,
    /// 1 while the last reload failed (the previous catalog is still served), else 0.
    pub catalog_stale: Gauge,
    /// Broken versions of `ConfigMap` catalogs in pods' namespaces (their last good version is served).
    pub namespace_catalog_failures: Counter,
}

impl InjectorMetrics {
    /// Creates the metrics and registers them in `metrics`' registry.
    #[must_use]
    pub fn register(metrics: &mut Metrics) -> Self {
        let this = Self::default();
        let registry = metrics.registry_mut().sub_registry_with_prefix("sidecar_injector");
        registry.register("injections", "Sidecar injections by sidecar and outcome", this.injections.clone());
        registry.register("catalog_reloads", "Catalog reloads by result", this.catalog_reloads.clone());
        registry.register("catalog_sidecars", "Sidecars in the catalog in service", this.catalog_sidecars.clone());
        registry.register("catalog_stale", "1 while the last catalog reload failed", this.catalog_stale.clone());
        registry.register(
            "namespace_catalog_failures",
            "Broken ConfigMap catalogs in pods' namespaces",
            this.namespace_catalog_failures.clone(),
        );
        this
    }

    /// A counter for the sidecar mutator.
    #[must_use]
    pub fn counter(&self) -> InjectionCounter {
        let injections = self.injections.clone();
        Arc::new(move |sidecar: &str, outcome: &'static str| {
            injections
                .get_or_create(&InjectionLabels { sidecar: sidecar.to_owned(), outcome: outcome.to_owned() })
                .inc();
        })
    }

    /// Records a reload attempt.
    pub fn reloaded(&self, ok: bool, sidecars: usize) {
        let result = if ok { "success" } else { "failure" };
        self.catalog_reloads.get_or_create(&ReloadLabels { result: result.to_owned() }).inc();
        self.catalog_stale.set(i64::from(!ok));
        if ok {
            self.catalog_sidecars.set(i64::try_from(sidecars).unwrap_or(i64::MAX));
        }
    }
}
