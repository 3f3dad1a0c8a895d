//! admission-kit: write Kubernetes mutating admission webhooks in a few lines.
//!
//! A webhook is a [`Pipeline`] of [`Step`]s. Each step runs one [`Mutator`] (typed, over any
//! k8s-openapi resource) or [`DynamicMutator`] (over raw JSON, for kinds the crate does not know),
//! gated by a [`Matcher`]. The mutator changes the object in place; the framework derives the
//! RFC 6902 patch by diffing the original raw JSON against the result, so authors never write patch
//! operations and fields that k8s-openapi does not model survive untouched.
//!
//! The same matchers render the webhook's server-side filters (`namespaceSelector`,
//! `objectSelector`, `matchConditions`), see [`webhook_config`], so the API server filters first and
//! the same definition is checked in-process.
//!
//! [`server`] serves pipelines over HTTPS (rustls, HTTP/1.1 keep-alive, certificate hot reload) with
//! admin endpoints, Prometheus metrics, limits, deadlines and graceful drain; [`app`] is the
//! application shell around it (command line, settings, a shared Kubernetes client, a plugin's
//! asynchronous set-up and subcommands), and [`cli`] its one-line forms. The `testing` feature adds the `testing` module, a kit for plugin
//! authors' tests.
//!
//! ```no_run
//! use admission_kit::prelude::*;
//! use k8s_openapi::api::core::v1::Pod;
//!
//! struct DefaultTeam;
//!
//! #[async_trait]
//! impl Mutator<Pod> for DefaultTeam {
//!     async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
//!         let labels = pod.metadata.labels.get_or_insert_default();
//!         labels.entry("team".into()).or_insert_with(|| "unassigned".into());
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> anyhow::Result<()> {
//! let pipeline = Pipeline::builder("default-team.example.com")
//!     .step(Step::new("default-team", DefaultTeam).when(matcher::namespace_label("team-owned", "true")))
//!     .build()?;
//! admission_kit::cli::run(vec![pipeline]).await
//! # }
//! ```

pub mod app;
pub mod cache;
pub mod cli;
pub mod declarative;
pub mod matcher;
pub mod metrics;
pub mod mutator;
pub mod namespaces;
pub mod patch;
pub mod pipeline;
pub mod policy;
pub mod review;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tls;
pub mod webhook_config;

pub use matcher::Matcher;
pub use mutator::{Context, DynamicMutator, MutationError, MutationResult, Mutator};
pub use pipeline::{FailureMode, Pipeline, Step};
pub use review::{Answer, Request};

/// An error and its sources, `: `-separated, each cause once (a cause whose text the message
/// already holds, as `thiserror`'s `{0}` repeats it, is not added again).
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Re-exports of the crates whose types appear in admission-kit's API, so plugin authors use
/// exactly the versions the framework was built with.
///
/// Derive macros generate paths to their own crate (`clap::Args`, `serde::Deserialize`): a plugin
/// that derives them still depends on those crates directly, at the same versions.
pub mod reexports {
    /// `cli` and `WebhookConfigArgs::render` return `anyhow::Result`.
    pub use anyhow;
    pub use async_trait;
    /// `server::router` returns an `axum::Router`.
    pub use axum;
    /// `cli::run_with` takes the plugin's `clap::Args`.
    pub use clap;
    /// `testing::call_router` answers with an `http::StatusCode`.
    pub use http;
    pub use json_patch;
    pub use k8s_openapi;
    pub use kube;
    /// `metrics::Metrics::registry_mut` hands out the `prometheus_client` registry.
    pub use prometheus_client;
    /// `testing::check_property` takes `proptest` strategies (also at `testing::proptest`).
    #[cfg(feature = "testing")]
    pub use proptest;
    /// `tls::server_config` returns a `rustls::ServerConfig`.
    pub use rustls;
    pub use serde_json;
    /// `Pipeline::review_until` takes a `tokio::time::Instant` deadline.
    pub use tokio;
}

/// The names most plugins need: `use admission_kit::prelude::*;`.
///
/// Enough to write a mutator, its pipeline and a unit test of it:
///
/// ```
/// use admission_kit::prelude::*;
/// use k8s_openapi::api::core::v1::Pod;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let step = Step::new("noop", mutator::from_typed_fn(|_: &mut Pod, _: &mut Context<'_>| Ok(())))
///     .when(matcher::namespace_label("a", "b").and(matcher::has_annotation("c")));
/// assert_eq!(step.target(), &ResourceTarget::of::<Pod>());
/// let pipeline = Pipeline::builder("noop.example.com")
///     .step(step)
///     .failure_policy(FailurePolicy::Ignore)
///     .reinvocation(ReinvocationPolicy::IfNeeded)
///     .build()?;
/// let request = Request::of(&Pod::default()).build();
/// let ctx = Context::new(&request, NamespaceView::unknown());
/// assert!(ctx.namespace_labels().is_none() && pipeline.failure_policy() == FailurePolicy::Ignore);
/// # Ok(()) }
/// ```
pub mod prelude {
    pub use crate::matcher::{self, Matcher, NamespaceView};
    pub use crate::mutator::{self, Context, DynamicMutator, MutationError, MutationResult, Mutator};
    pub use crate::pipeline::{FailureMode, FailurePolicy, Pipeline, ReinvocationPolicy, ResourceTarget, Step};
    pub use crate::review::Request;
    pub use async_trait::async_trait;
    pub use kube::core::admission::Operation;
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("failed to load: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("failed to load")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn error_chains_name_each_cause_once() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(super::error_chain(&Wraps(io())), "failed to load: connection refused");
        assert_eq!(super::error_chain(&Repeats(io())), "failed to load: connection refused");
    }
}
