//! sidecar-injector in-process, through the public API the server uses.
//!
//! The axum handler (`admission-kit/src/server/webhook.rs`, private `review`) calls three public
//! functions: [`Review::decode`] (decode, setting aside what the pipeline asks to), [`admission_kit::Pipeline::review_until`] (match,
//! mutate, diff; with no namespace labels under `namespaceCache: never`, and the deadline from
//! `?timeout=`), and [`admission_kit::Answer::to_review_json`] (encode). [`Injector::review`] makes
//! exactly those calls. [`Injector::route`] goes through the whole router instead
//! ([`admission_kit::server::router`] with [`admission_kit::testing::call_router`]), adding axum,
//! the body limit, the timeout layer, tracing spans and metrics: the handler's full cost without
//! sockets or TLS.

use std::sync::Arc;
use std::time::Duration;

use admission_kit::matcher::NamespaceView;
use admission_kit::namespaces::NamespaceSource;
use admission_kit::review::Review;
use admission_kit::server::ServerConfig;
use anyhow::Context as _;
use sidecar_injector::catalog::{CatalogSource, CatalogStore};
use sidecar_injector::config::Config;

/// The deadline the API server's `?timeout=10s` gives the handler (less its 10% margin).
const DEADLINE: Duration = Duration::from_secs(9);

/// The injector as `sidecar-injector serve` builds it from the embedded default configuration.
#[derive(Debug)]
pub struct Injector {
    pipeline: admission_kit::Pipeline,
    router: axum::Router,
}

impl Injector {
    /// Builds the pipeline and router from the embedded default configuration with
    /// `server.namespaceCache: never` and `annotationEnv.locked: []`, as the runner starts the server.
    pub fn new() -> anyhow::Result<Self> {
        let overrides = [
            ("server.namespaceCache".to_owned(), "never".into()),
            ("annotationEnv.locked".to_owned(), serde_json::json!([])),
        ];
        let config = Config::load(None, &overrides)?;
        let store = Arc::new(CatalogStore::load(vec![CatalogSource::inline(config.sidecars.clone())])?);
        let pipeline = sidecar_injector::pipeline(&config, store, None)?;
        let router = admission_kit::server::router(
            ServerConfig::local(),
            std::slice::from_ref(&pipeline),
            NamespaceSource::Unknown,
        );
        Ok(Self { pipeline, router })
    }

    /// Decode → match → mutate → diff → encode, as the handler does. Returns the response body.
    pub async fn review(&self, body: &[u8]) -> anyhow::Result<Vec<u8>> {
        let review = Review::decode(body, self.pipeline.managed_fields())?;
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let outcome = self.pipeline.review_until(&review, NamespaceView::unknown(), Some(deadline)).await;
        outcome.answer.to_review_json().context("failed to encode the answer")
    }

    /// The cost of each step the handler's path repeats, measured alone on `body` over `budget`
    /// each, in µs per call: what a profile of [`Injector::review`] is made of.
    pub async fn breakdown(&self, body: &[u8], budget: Duration) -> anyhow::Result<Vec<(&'static str, f64)>> {
        use std::hint::black_box;
        // The review as the server decodes it for the injector's pipeline: without
        // `metadata.managedFields`, which no step reads. The pod rows are the pod as steps see it.
        let managed_fields = self.pipeline.managed_fields();
        let review = Review::decode(body, managed_fields)?;
        let outcome = self.pipeline.review(&review, NamespaceView::unknown()).await;
        let pod = review.request.object.clone().context("the review has no object")?;
        let whole_pod = Review::from_slice(body)?.request.object.context("the review has no object")?;
        let mutated = outcome.mutated.clone().context("the review was not mutated")?;
        let twin = pod.clone();
        let per_call = |f: &mut dyn FnMut()| {
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while start.elapsed() < budget || n < 3 {
                f();
                n += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        };
        let mut out = vec![
            (
                "serde_json parse to Value (reference)",
                per_call(&mut || drop(black_box(serde_json::from_slice::<serde_json::Value>(body)))),
            ),
            (
                "Review::from_slice (decode, keeping managedFields)",
                per_call(&mut || drop(black_box(Review::from_slice(body)))),
            ),
            (
                "Review::decode as the server does (managedFields set aside)",
                per_call(&mut || drop(black_box(Review::decode(body, managed_fields)))),
            ),
            ("clone of the pod + its drop", per_call(&mut || drop(black_box(pod.clone())))),
            ("clone + drop, the pod with managedFields", per_call(&mut || drop(black_box(whole_pod.clone())))),
            (
                "== of two equal pods",
                per_call(&mut || {
                    black_box(black_box(&pod) == black_box(&twin));
                }),
            ),
            (
                "typed check of the pod (decode_naming_field::<Pod>)",
                per_call(&mut || {
                    drop(black_box(admission_kit::pipeline::decode_naming_field::<
                        admission_kit::reexports::k8s_openapi::api::core::v1::Pod,
                    >(black_box(&pod))));
                }),
            ),
            (
                "typed check, the pod with managedFields",
                per_call(&mut || {
                    drop(black_box(admission_kit::pipeline::decode_naming_field::<
                        admission_kit::reexports::k8s_openapi::api::core::v1::Pod,
                    >(black_box(&whole_pod))));
                }),
            ),
            (
                "patch::diff(original, mutated)",
                per_call(&mut || drop(black_box(admission_kit::patch::diff(&pod, &mutated)))),
            ),
            ("Answer::to_review_json (encode)", per_call(&mut || drop(black_box(outcome.answer.to_review_json())))),
        ];
        let start = std::time::Instant::now();
        let mut n = 0u32;
        while start.elapsed() < budget || n < 3 {
            drop(black_box(self.pipeline.review(&review, NamespaceView::unknown()).await));
            n += 1;
        }
        out.push(("Pipeline::review (match, mutate, diff)", start.elapsed().as_secs_f64() * 1e6 / f64::from(n)));
        out.push(("the handler's path (Injector::review)", {
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while start.elapsed() < budget || n < 3 {
                drop(black_box(self.review(body).await?));
                n += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        }));
        out.push(("the whole router (Injector::route: axum, limits, metrics)", {
            let start = std::time::Instant::now();
            let mut n = 0u32;
            while start.elapsed() < budget || n < 3 {
                drop(black_box(self.route(body.to_vec()).await?));
                n += 1;
            }
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        }));
        Ok(out)
    }

    /// The whole router in-process. Returns the response body.
    pub async fn route(&self, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        let (status, body) = admission_kit::testing::call_router(&self.router, "/mutate?timeout=10s", body).await;
        anyhow::ensure!(status == http::StatusCode::OK, "router answered {status}");
        Ok(body)
    }

    /// Reviews per second of `body` through the whole router in-process on `threads` threads at
    /// once, for `seconds`: each thread drives its own current-thread runtime, and all share one
    /// router (its pipeline, metrics and limits), as a server's threads share its state. What two
    /// threads make of it against one is how the server's own code scales with cores, without the
    /// sockets, TLS and kernel a load generator would need a third core for.
    pub fn router_throughput(&self, body: &[u8], threads: usize, seconds: f64) -> anyhow::Result<f64> {
        let threads = threads.max(1);
        let run_for = Duration::from_secs_f64(seconds);
        // A review that is not answered stops the measurement here, before any thread starts.
        tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(self.route(body.to_vec()))?;
        let start = std::sync::Barrier::new(threads);
        let rates = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| -> anyhow::Result<f64> {
                        // Every thread reaches the barrier, whatever fails after it.
                        start.wait();
                        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        let began = std::time::Instant::now();
                        let mut reviews = 0u32;
                        while began.elapsed() < run_for {
                            rt.block_on(self.route(body.to_vec()))?;
                            reviews += 1;
                        }
                        Ok(f64::from(reviews) / began.elapsed().as_secs_f64())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a review thread panicked"))))
                .collect::<anyhow::Result<Vec<f64>>>()
        })?;
        Ok(rates.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::Injector;
    use crate::corpus::{Size, entry};

    #[test]
    fn threads_share_one_router_and_a_review_it_refuses_is_an_error_not_a_rate() {
        let injector = Injector::new().expect("the embedded default configuration builds");
        let rate = injector.router_throughput(&entry(Size::K2).body, 2, 0.2).expect("every review is answered");
        assert!(rate > 0.0, "{rate}");
        let refused = injector.router_throughput(b"{\"not\": \"a review\"}", 2, 0.2);
        assert!(refused.is_err_and(|e| e.to_string().contains("400")), "a refused review stops the measurement");
    }
}
