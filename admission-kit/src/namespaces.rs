//! Where namespace labels come from: a watch cache when the server has cluster access, a fixed map
//! in tests and offline use, or nowhere (then the API server's `namespaceSelector` is trusted).
//!
//! The cache is a kube-runtime reflector over namespace *metadata* (`PartialObjectMeta`), so the
//! admission path never calls the API server and memory stays small in clusters with many
//! namespaces. See <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Namespace;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, core::PartialObjectMeta};

static EMPTY: BTreeMap<String, String> = BTreeMap::new();

/// Labels of one namespace, borrowed from wherever they live.
#[derive(Debug, Clone)]
pub enum NamespaceLabels {
    /// From the watch cache.
    Cached(Arc<PartialObjectMeta<Namespace>>),
    /// From a fixed map.
    Fixed(Arc<BTreeMap<String, String>>),
}

impl NamespaceLabels {
    /// The labels.
    #[must_use]
    pub fn get(&self) -> &BTreeMap<String, String> {
        match self {
            Self::Cached(ns) => ns.metadata.labels.as_ref().unwrap_or(&EMPTY),
            Self::Fixed(labels) => labels,
        }
    }
}

/// A source of namespace labels for matchers.
#[derive(Clone, Debug, Default)]
pub enum NamespaceSource {
    /// No cluster access: labels are unknown; the webhook's `namespaceSelector` is trusted.
    #[default]
    Unknown,
    /// A fixed map from namespace name to labels (tests, offline rendering).
    Fixed(Arc<BTreeMap<String, Arc<BTreeMap<String, String>>>>),
    /// A reflector cache of namespace metadata.
    Cache(Store<PartialObjectMeta<Namespace>>),
}

impl NamespaceSource {
    /// A fixed map of namespaces and their labels.
    pub fn fixed<N, K, V, L>(namespaces: impl IntoIterator<Item = (N, L)>) -> Self
    where
        N: Into<String>,
        K: Into<String>,
        V: Into<String>,
        L: IntoIterator<Item = (K, V)>,
    {
        Self::Fixed(Arc::new(
            namespaces
                .into_iter()
                .map(|(n, l)| (n.into(), Arc::new(l.into_iter().map(|(k, v)| (k.into(), v.into())).collect())))
                .collect(),
        ))
    }

    /// The labels of `namespace`, if known. A namespace missing from the cache (created a moment
    /// ago, before the watch delivered it) is unknown rather than label-less.
    #[must_use]
    pub fn labels(&self, namespace: &str) -> Option<NamespaceLabels> {
        match self {
            Self::Unknown => None,
            Self::Fixed(map) => map.get(namespace).cloned().map(NamespaceLabels::Fixed),
            Self::Cache(store) => store.get(&ObjectRef::new(namespace)).map(NamespaceLabels::Cached),
        }
    }

    /// Whether this source can know labels at all.
    #[must_use]
    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Unknown)
    }

    /// Starts a namespace metadata watch (the cache `namespaces`). Returns the source and the
    /// cache's health: give it to [`crate::server::Server::cache`] (readiness until the first list,
    /// then while in contact with the API server; metrics).
    #[must_use]
    pub fn watch(client: kube::Client) -> (Self, crate::cache::CacheHealth) {
        // Only the metadata is kept in the store.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client);
        let (store, health) = crate::cache::watch(api, watcher::Config::default(), "namespaces");
        (Self::Cache(store), health)
    }
}
