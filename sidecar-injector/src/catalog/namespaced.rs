//! Catalogs in `ConfigMaps` of the pod's own namespace, as the 2022 generation of the Expedia
//! injector reads them: the `inject` annotation names a `ConfigMap` in the pod's namespace whose
//! `sidecars.yaml` key holds a catalog, and every sidecar in it is injected.
//!
//! `ConfigMaps` come from a kube-runtime watch
//! (<https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>),
//! never from an API call on the admission path. Each is parsed when the watch delivers it, once
//! per change of its catalog text, and what that gave — its sidecars, or the parse error — is kept
//! in an immutable snapshot. Every event that changes what is served swaps in a new snapshot
//! ([`arc_swap::ArcSwap`]), so an admission reads the current one without a lock and never waits
//! for a parse, a writer or another admission. A delete event, or a relist that no longer holds a
//! `ConfigMap`, drops it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use admission_kit::cache::EventSink;
use admission_kit::reexports::kube;
use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use prometheus_client::metrics::counter::Counter;

use super::{SidecarEntry, parse_catalog};

/// What a lookup answers for one `ConfigMap`: its sidecars, or why it has none to give.
type Parsed = Result<Vec<Arc<SidecarEntry>>, String>;

/// What is kept of one `ConfigMap` that has the catalog key.
#[derive(Debug)]
struct Stored {
    /// The catalog text last parsed: the same text delivered again (by a relist, or an update of
    /// another key or of a label) is not parsed again.
    text: String,
    /// The sidecars of the last good text — kept in service while a later text is broken — or,
    /// when no text of this `ConfigMap` was ever good, the parse error, for the denial.
    served: Parsed,
}

/// `ConfigMaps` with the catalog key, by namespace and then name (so a lookup borrows its keys).
type Snapshot = HashMap<String, HashMap<String, Arc<Stored>>>;

/// What the watch (writing) and the admissions (reading) share.
struct Shared {
    key: String,
    snapshot: ArcSwap<Snapshot>,
    /// Only the writer and [`NamespaceCatalogs::counting_failures`] take this lock; never a lookup.
    failures: Mutex<Failures>,
}

/// Broken catalog texts, counted once each.
#[derive(Default)]
struct Failures {
    counter: Option<Counter>,
    /// Those seen before a counter was given (the watch starts before the caller can hand one).
    uncounted: u64,
}

impl Shared {
    fn count_failure(&self) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        match &failures.counter {
            Some(counter) => {
                counter.inc();
            }
            None => failures.uncounted += 1,
        }
    }
}

/// Sidecars defined in `ConfigMaps`, by namespace and `ConfigMap` name: the read side, for the
/// admission path. Filled by a [`NamespaceCatalogWriter`] (what [`NamespaceCatalogs::watch`] runs).
pub struct NamespaceCatalogs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NamespaceCatalogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCatalogs")
            .field("key", &self.shared.key)
            .field("namespaces", &self.shared.snapshot.load().len())
            .finish_non_exhaustive()
    }
}

impl NamespaceCatalogs {
    /// Counts broken `ConfigMap` catalogs, once per broken text (including those already seen).
    #[must_use]
    pub fn counting_failures(self, counter: Counter) -> Self {
        let mut failures = self.shared.failures.lock().unwrap_or_else(PoisonError::into_inner);
        counter.inc_by(std::mem::take(&mut failures.uncounted));
        failures.counter = Some(counter);
        drop(failures);
        self
    }

    /// Starts a `ConfigMap` watch over all namespaces (narrowed by `label_selector` when not empty),
    /// the cache `configmaps`, reading catalogs under data key `key` (`sidecars.yaml`). Returns the
    /// catalogs and the cache's health, for [`admission_kit::server::Server::cache`] (readiness,
    /// metrics). Without the API server the catalogs are served as last seen.
    ///
    /// Needs a tokio runtime; the watch runs in a task of its own for the life of the process.
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
        let writer = NamespaceCatalogWriter::new(key);
        let catalogs = writer.as_reader();
        let health = admission_kit::cache::watch_into(api, config, "configmaps", writer);
        (catalogs, health)
    }

    /// The sidecars of `ConfigMap` `name` in `namespace`: `None` if there is no such `ConfigMap` (or
    /// it lacks the key). A broken update keeps the last good sidecars in service (the error was
    /// logged with the `ConfigMap` and line, and counted, when the watch delivered it);
    /// `Some(Err)` naming the `ConfigMap` only when no version of it was ever good.
    ///
    /// Reads the current snapshot and clones the answer: no lock, no parse.
    #[must_use]
    pub fn lookup(&self, namespace: &str, name: &str) -> Option<Parsed> {
        let snapshot = self.shared.snapshot.load();
        snapshot.get(namespace)?.get(name).map(|stored| stored.served.clone())
    }
}

/// The write side of [`NamespaceCatalogs`]: takes watch events, parses each `ConfigMap` that has
/// the catalog key once per change, and swaps in a new snapshot. Like kube-runtime's reflector
/// `Writer`, it buffers a relist until its `InitDone`, so the snapshot is never half a list.
pub struct NamespaceCatalogWriter {
    shared: Arc<Shared>,
    /// The relist in progress, between `Init` and `InitDone`.
    relist: Option<Snapshot>,
}

impl std::fmt::Debug for NamespaceCatalogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceCatalogWriter")
            .field("key", &self.shared.key)
            .field("relisting", &self.relist.is_some())
            .finish_non_exhaustive()
    }
}

impl NamespaceCatalogWriter {
    /// An empty cache reading catalogs under data key `key` (`sidecars.yaml`).
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        let shared = Shared {
            key: key.into(),
            snapshot: ArcSwap::from_pointee(Snapshot::new()),
            failures: Mutex::new(Failures::default()),
        };
        Self { shared: Arc::new(shared), relist: None }
    }

    /// The read side, for the admission path; it sees every snapshot this writer swaps in.
    #[must_use]
    pub fn as_reader(&self) -> NamespaceCatalogs {
        NamespaceCatalogs { shared: self.shared.clone() }
    }

    /// Takes one watch event.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<ConfigMap>) {
        match event {
            watcher::Event::Apply(config_map) => {
                let Some((namespace, name)) = id(config_map) else { return };
                let current = self.shared.snapshot.load_full();
                let previous = find(&current, namespace, name);
                let next = self.parse(config_map, namespace, name, previous);
                let unchanged = match (previous, &next) {
                    (Some(previous), Some(next)) => Arc::ptr_eq(previous, next),
                    (None, None) => true,
                    _ => false,
                };
                if !unchanged {
                    let mut snapshot = Snapshot::clone(&current);
                    match next {
                        Some(stored) => {
                            snapshot.entry(namespace.to_owned()).or_default().insert(name.to_owned(), stored);
                        }
                        None => remove(&mut snapshot, namespace, name),
                    }
                    self.shared.snapshot.store(Arc::new(snapshot));
                }
            }
            watcher::Event::Delete(config_map) => {
                let Some((namespace, name)) = id(config_map) else { return };
                let current = self.shared.snapshot.load_full();
                if find(&current, namespace, name).is_some() {
                    let mut snapshot = Snapshot::clone(&current);
                    remove(&mut snapshot, namespace, name);
                    self.shared.snapshot.store(Arc::new(snapshot));
                }
            }
            watcher::Event::Init => self.relist = Some(Snapshot::new()),
            watcher::Event::InitApply(config_map) => {
                let Some((namespace, name)) = id(config_map) else { return };
                // Compared with what is in service: an unchanged text is not parsed again, and a
                // broken one keeps the good sidecars it replaces.
                let current = self.shared.snapshot.load();
                let parsed = self.parse(config_map, namespace, name, find(&current, namespace, name));
                if let Some(stored) = parsed {
                    let relist = self.relist.get_or_insert_with(Snapshot::new);
                    relist.entry(namespace.to_owned()).or_default().insert(name.to_owned(), stored);
                }
            }
            watcher::Event::InitDone => {
                // Whatever the relist did not hold was deleted while the watch was down.
                if let Some(relist) = self.relist.take() {
                    self.shared.snapshot.store(Arc::new(relist));
                }
            }
        }
    }

    /// What to keep of `config_map`: `None` without the catalog key; the `previous` entry itself
    /// when its text is unchanged; otherwise the new text parsed, keeping `previous`'s good
    /// sidecars if the new text is broken.
    fn parse(
        &self,
        config_map: &ConfigMap,
        namespace: &str,
        name: &str,
        previous: Option<&Arc<Stored>>,
    ) -> Option<Arc<Stored>> {
        let key = &self.shared.key;
        let text = config_map.data.as_ref()?.get(key)?;
        if let Some(previous) = previous
            && previous.text == *text
        {
            return Some(previous.clone());
        }
        let source = format!("ConfigMap {namespace}/{name} key {key}");
        let served = match parse_catalog(text, &source) {
            Ok(entries) => Ok(entries.into_iter().map(Arc::new).collect()),
            Err(error) => {
                self.shared.count_failure();
                if let Some(Ok(good)) = previous.map(|previous| &previous.served) {
                    tracing::error!(
                        %error,
                        namespace,
                        configmap = name,
                        "namespace catalog not updated; keeping its last good version"
                    );
                    Ok(good.clone())
                } else {
                    tracing::error!(
                        %error,
                        namespace,
                        configmap = name,
                        "namespace catalog is broken; pods asking for it are denied"
                    );
                    Err(error.to_string())
                }
            }
        };
        Some(Arc::new(Stored { text: text.clone(), served }))
    }
}

impl EventSink<ConfigMap> for NamespaceCatalogWriter {
    fn apply(&mut self, event: &watcher::Event<ConfigMap>) {
        self.apply_watcher_event(event);
    }
}

/// A `ConfigMap`'s namespace and name (the API server always sets both).
fn id(config_map: &ConfigMap) -> Option<(&str, &str)> {
    Some((config_map.metadata.namespace.as_deref()?, config_map.metadata.name.as_deref()?))
}

fn find<'a>(snapshot: &'a Snapshot, namespace: &str, name: &str) -> Option<&'a Arc<Stored>> {
    snapshot.get(namespace)?.get(name)
}

fn remove(snapshot: &mut Snapshot, namespace: &str, name: &str) {
    if let Some(names) = snapshot.get_mut(namespace) {
        names.remove(name);
        if names.is_empty() {
            snapshot.remove(namespace);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use watcher::Event;

    use super::*;

    const GOOD: &str = "- name: busybox\n  containers: [{name: bb, image: busybox}]\n";
    const BETTER: &str = "- name: busybox\n  containers: [{name: bb, image: busybox:1.37}]\n";
    const BROKEN: &str = "- name: busybox\n  contianers: []\n";

    /// A `ConfigMap` as the watch delivers it, with the catalog key when `text` is given. No
    /// `resourceVersion`: nothing here depends on one.
    fn config_map(namespace: &str, name: &str, text: Option<&str>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            data: text.map(|text| [("sidecars.yaml".to_owned(), text.to_owned())].into()),
            ..ConfigMap::default()
        }
    }

    fn apply(namespace: &str, name: &str, text: &str) -> Event<ConfigMap> {
        Event::Apply(config_map(namespace, name, Some(text)))
    }

    /// The one entry `ConfigMap` `name` in namespace `team` serves.
    fn served(catalogs: &NamespaceCatalogs, name: &str) -> Arc<SidecarEntry> {
        let entries = catalogs.lookup("team", name).expect("the ConfigMap is known").expect("it has good sidecars");
        assert_eq!(entries.len(), 1);
        entries[0].clone()
    }

    fn image(entry: &SidecarEntry) -> &str {
        entry.containers[0]["image"].as_str().unwrap_or_default()
    }

    #[test]
    fn each_text_is_parsed_once_when_the_watch_delivers_it_not_per_lookup() {
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        let catalogs = writer.as_reader();
        assert!(catalogs.lookup("team", "busybox").is_none());
        writer.apply_watcher_event(&apply("team", "busybox", GOOD));
        let first = served(&catalogs, "busybox");
        // A parse makes new entries, so the same allocation across lookups means no parse.
        assert!(Arc::ptr_eq(&first, &served(&catalogs, "busybox")), "a lookup does not parse");
        let snapshot = writer.shared.snapshot.load_full();
        // An update that leaves the catalog text alone (another key, a label) changes nothing.
        let mut relabelled = config_map("team", "busybox", Some(GOOD));
        relabelled.data.get_or_insert_default().insert("other".into(), "x".into());
        writer.apply_watcher_event(&Event::Apply(relabelled));
        assert!(Arc::ptr_eq(&snapshot, &writer.shared.snapshot.load_full()), "no new snapshot for no change");
        // Nor does a relist that delivers the same text.
        for event in [Event::Init, Event::InitApply(config_map("team", "busybox", Some(GOOD))), Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        assert!(Arc::ptr_eq(&first, &served(&catalogs, "busybox")), "a relist of the same text does not parse");
        // A new text is parsed, once.
        writer.apply_watcher_event(&apply("team", "busybox", BETTER));
        let second = served(&catalogs, "busybox");
        assert_eq!(image(&second), "busybox:1.37");
        assert!(Arc::ptr_eq(&second, &served(&catalogs, "busybox")));
        assert!(catalogs.lookup("other", "busybox").is_none(), "only the pod's own namespace");
    }

    #[test]
    fn a_broken_update_keeps_the_last_good_sidecars_and_is_counted_once() {
        let failures = Counter::default();
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        let catalogs = writer.as_reader().counting_failures(failures.clone());
        writer.apply_watcher_event(&apply("team", "busybox", GOOD));
        let good = served(&catalogs, "busybox");
        writer.apply_watcher_event(&apply("team", "busybox", BROKEN));
        assert!(Arc::ptr_eq(&good, &served(&catalogs, "busybox")), "the last good sidecars stay in service");
        assert_eq!(failures.get(), 1);
        // The same broken text again — a lookup, a repeated event, a relist — is not counted again.
        let _ = catalogs.lookup("team", "busybox");
        writer.apply_watcher_event(&apply("team", "busybox", BROKEN));
        for event in [Event::Init, Event::InitApply(config_map("team", "busybox", Some(BROKEN))), Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        assert!(Arc::ptr_eq(&good, &served(&catalogs, "busybox")), "kept across a relist too");
        assert_eq!(failures.get(), 1, "counted once per broken text");
        // A fix replaces it.
        writer.apply_watcher_event(&apply("team", "busybox", BETTER));
        assert_eq!(image(&served(&catalogs, "busybox")), "busybox:1.37");
    }

    #[test]
    fn a_config_map_never_good_is_answered_with_its_parse_error() {
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        let catalogs = writer.as_reader();
        writer.apply_watcher_event(&apply("team", "never-good", BROKEN));
        let error = catalogs.lookup("team", "never-good").expect("known").expect_err("never good");
        assert!(error.contains("ConfigMap team/never-good key sidecars.yaml"), "{error}");
        assert!(error.contains("unknown field `contianers`") && error.contains("at line 2, column 3"), "{error}");
        // Kept, not parsed again, for every lookup.
        assert_eq!(catalogs.lookup("team", "never-good"), Some(Err(error)));
    }

    #[test]
    fn a_delete_evicts_and_so_does_a_relist_without_it() {
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        let catalogs = writer.as_reader();
        let text = |name: &str| GOOD.replace("busybox", name);
        for name in ["a", "b", "c"] {
            writer.apply_watcher_event(&apply("team", name, &text(name)));
        }
        writer.apply_watcher_event(&apply("gone", "d", &text("d")));
        writer.apply_watcher_event(&Event::Delete(config_map("team", "a", None)));
        assert!(catalogs.lookup("team", "a").is_none(), "deleted");
        assert_eq!(served(&catalogs, "b").name, "b");
        // A relist that no longer holds `team/c` nor anything in `gone` (deleted while the watch was
        // down) evicts them, but only once the list is complete: until then the previous snapshot
        // is served whole.
        let b = served(&catalogs, "b");
        writer.apply_watcher_event(&Event::Init);
        writer.apply_watcher_event(&Event::InitApply(config_map("team", "b", Some(&text("b")))));
        assert_eq!(served(&catalogs, "c").name, "c", "half a list is not served");
        writer.apply_watcher_event(&Event::InitDone);
        assert!(catalogs.lookup("team", "c").is_none(), "evicted by the relist");
        assert!(catalogs.lookup("gone", "d").is_none(), "evicted by the relist, with its namespace");
        assert!(Arc::ptr_eq(&b, &served(&catalogs, "b")), "kept by the relist, unparsed");
        // Losing the key is the same as being deleted; the namespace goes when its last one does.
        writer.apply_watcher_event(&Event::Apply(config_map("team", "b", None)));
        assert!(catalogs.lookup("team", "b").is_none());
        assert!(writer.shared.snapshot.load().is_empty(), "{:?}", writer.shared.snapshot.load());
    }

    #[test]
    fn failures_before_the_counter_is_given_are_counted() {
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        let catalogs = writer.as_reader();
        writer.apply_watcher_event(&apply("team", "x", BROKEN));
        let failures = Counter::default();
        let _catalogs = catalogs.counting_failures(failures.clone());
        assert_eq!(failures.get(), 1);
        writer.apply_watcher_event(&apply("team", "y", BROKEN));
        assert_eq!(failures.get(), 2);
    }

    #[test]
    fn a_lookup_takes_no_lock() {
        let mut writer = NamespaceCatalogWriter::new("sidecars.yaml");
        writer.apply_watcher_event(&apply("team", "busybox", GOOD));
        let catalogs = writer.as_reader();
        // The only lock is the failure counter's, which the writer takes while it parses a broken
        // text. Held here, lookups on another thread still answer.
        let held = writer.shared.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let (done, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let found = (0..1000).all(|_| catalogs.lookup("team", "busybox").is_some_and(|r| r.is_ok()));
            let _ = done.send(found);
        });
        let answer = answered.recv_timeout(Duration::from_secs(10));
        drop(held);
        assert_eq!(answer, Ok(true), "lookups waited on the writer's lock");
    }
}
