//! Watch caches: what mutators and matchers read on the admission path instead of calling the API
//! server (no GET per admission; see
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes>).
//!
//! A kube-runtime reflector fills a [`Store`]; the watch restarts with backoff on errors; the
//! returned future resolves after the first full list, for [`crate::server::Server::ready_when`].

use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde::de::DeserializeOwned;

/// Starts a reflector over `api` with `config` (label selectors, …). Returns the store and a
/// future resolving once the first list has been loaded. `what` names the cache in logs.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: &'static str,
) -> (Store<K>, impl Future<Output = ()> + Send + 'static)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff().applied_objects();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(error) = event {
                tracing::warn!(%error, cache = what, "watch failed; retrying with backoff");
            }
        }
    });
    let ready_reader = reader.clone();
    let ready = async move {
        if ready_reader.wait_until_ready().await.is_err() {
            tracing::error!(cache = what, "watch ended before its first list");
        }
    };
    (reader, ready)
}
