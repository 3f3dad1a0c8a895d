//! Catalogs in `ConfigMaps` of the pod's own namespace, as the 2022 generation of the Expedia
//! injector reads them: the `inject` annotation names a `ConfigMap` in the pod's namespace whose
//! `sidecars.yaml` key holds a 2022-format list, and every sidecar in it is injected.
//!
//! `ConfigMaps` come from a kube-runtime reflector (a watch cache), never from an API call on the
//! admission path. Each `ConfigMap` is parsed once per `resourceVersion` and the result is cached,
//! so a busy namespace costs one parse per change, not one per pod.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use admission_kit::reexports::kube;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::{SidecarEntry, parse_catalog};

type Parsed = Result<Vec<Arc<SidecarEntry>>, String>;

/// What is known of one `ConfigMap`: the `resourceVersion` last parsed, what it gave, and the last
/// good sidecars (kept in service when a later version is broken).
#[derive(Default)]
struct Cached {
    version: Option<String>,
    result: Option<Parsed>,
    last_good: Option<Vec<Arc<SidecarEntry>>>,
}

/// Parse results by (namespace, name).
type ParseCache = HashMap<(String, String), Cached>;

/// Sidecars defined in `ConfigMaps`, by namespace and `ConfigMap` name.
pub struct NamespaceCatalogs {
    store: Store<ConfigMap>,
    key: String,
    parsed: Mutex<ParseCache>,
    failures: Option<prometheus_client::metrics::counter::Counter>,
}

impl std::fmt::Debug for NamespaceCatalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCatalogs").field("key", &self.key).finish_non_exhaustive()
    }
}

impl NamespaceCatalogs {
    /// Catalogs read from `store`, under data key `key` (`sidecars.yaml`).
    #[must_use]
    pub fn new(store: Store<ConfigMap>, key: impl Into<String>) -> Self {
        Self { store, key: key.into(), parsed: Mutex::new(HashMap::new()), failures: None }
    }

    /// Counts broken `ConfigMap` catalogs (once per broken version).
    #[must_use]
    pub fn counting_failures(mut self, counter: prometheus_client::metrics::counter::Counter) -> Self {
        self.failures = Some(counter);
        self
    }

    /// Starts a `ConfigMap` watch over all namespaces (narrowed by `label_selector` when not empty),
    /// the cache `configmaps`. Returns the catalogs and the cache's health, for
    /// [`admission_kit::server::Server::cache`] (readiness, metrics). Without the API server the
    /// catalogs are served from the cache as last seen.
    pub fn watch(
        client: kube::Client,
        key: impl Into<String>,
        label_selector: &str,
    ) -> (Self, admission_kit::cache::CacheHealth) {
        let mut config = watcher::Config::default();
        if !label_selector.is_empty() {
            config = config.labels(label_selector);
        }
        let api: kube::Api<ConfigMap> = kube::Api::all(client);
        let (reader, health) = admission_kit::cache::watch(api, config, "configmaps");
        (Self::new(reader, key), health)
    }

    /// The sidecars of `ConfigMap` `name` in `namespace`: `None` if there is no such `ConfigMap` (or
    /// it lacks the key). A broken update keeps the last good sidecars in service (the error is
    /// logged with the `ConfigMap` and line, and counted, once per version); `Some(Err)` naming the
    /// `ConfigMap` only when no version of it was ever good.
    #[must_use]
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Parsed> {
        let config_map = self.store.get(&ObjectRef::new(name).within(namespace))?;
        let text = config_map.data.as_ref()?.get(&self.key)?;
        let version = config_map.metadata.resource_version.clone();
        let mut parsed = self.parsed.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = (namespace.to_owned(), name.to_owned());
        let cached = parsed.entry(id).or_default();
        if version.is_none() || cached.version != version || cached.result.is_none() {
            let source = format!("ConfigMap {namespace}/{name} key {}", self.key);
            let result: Parsed = parse_catalog(text, &source)
                .map(|entries| entries.into_iter().map(Arc::new).collect())
                .map_err(|e| e.to_string());
            match &result {
                Ok(entries) => cached.last_good = Some(entries.clone()),
                Err(error) => {
                    tracing::error!(%error, "namespace catalog not updated; keeping its last good version");
                    if let Some(failures) = &self.failures {
                        failures.inc();
                    }
                }
            }
            cached.version = version;
            cached.result = Some(result);
        }
        match (&cached.result, &cached.last_good) {
            (Some(Err(_)), Some(good)) => Some(Ok(good.clone())),
            (Some(result), _) => Some(result.clone()),
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn config_map(namespace: &str, name: &str, version: &str, text: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            data: Some([("sidecars.yaml".to_owned(), text.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn lookups_follow_the_watch_cache() {
        let mut writer = kube::runtime::reflector::store::Writer::<ConfigMap>::default();
        let failures = prometheus_client::metrics::counter::Counter::default();
        let catalogs = NamespaceCatalogs::new(writer.as_reader(), "sidecars.yaml").counting_failures(failures.clone());
        assert!(catalogs.lookup("team", "busybox").is_none());
        writer.apply_watcher_event(&watcher::Event::Apply(config_map(
            "team",
            "busybox",
            "1",
            "- name: busybox\n  containers: [{name: bb, image: busybox}]\n",
        )));
        let entries = catalogs.lookup("team", "busybox").unwrap().unwrap();
        assert_eq!(entries[0].name, "busybox");
        assert!(catalogs.lookup("other", "busybox").is_none(), "only the pod's own namespace");
        writer.apply_watcher_event(&watcher::Event::Apply(config_map("team", "busybox", "2", "- name: [broken\n")));
        let kept = catalogs.lookup("team", "busybox").unwrap().unwrap();
        assert_eq!(kept[0].name, "busybox", "a broken update keeps the last good version");
        assert_eq!(failures.get(), 1);
        let _ = catalogs.lookup("team", "busybox");
        assert_eq!(failures.get(), 1, "counted once per broken version");
        writer.apply_watcher_event(&watcher::Event::Apply(config_map("team", "never-good", "1", "- name: [broken\n")));
        let error = catalogs.lookup("team", "never-good").unwrap().unwrap_err();
        assert!(error.contains("ConfigMap team/never-good key sidecars.yaml") && error.contains("line"), "{error}");
        writer.apply_watcher_event(&watcher::Event::Delete(config_map("team", "busybox", "2", "")));
        assert!(catalogs.lookup("team", "busybox").is_none());
    }
}
