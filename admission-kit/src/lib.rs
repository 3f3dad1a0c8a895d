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
//! #[derive(Debug)]
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
pub mod matcher;
pub mod metrics;
pub mod mutator;
pub mod namespaces;
pub mod patch;
pub mod pipeline;
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

/// Re-exports of the crates whose types appear in admission-kit's API, so plugin authors use
/// exactly the versions the framework was built with.
pub mod reexports {
    pub use async_trait;
    pub use json_patch;
    pub use k8s_openapi;
    pub use kube;
    pub use serde_json;
}

/// The names most plugins need: `use admission_kit::prelude::*;`.
pub mod prelude {
    pub use crate::matcher::{self, Matcher};
    pub use crate::mutator::{Context, DynamicMutator, MutationError, MutationResult, Mutator};
    pub use crate::pipeline::{FailureMode, Pipeline, Step};
    pub use async_trait::async_trait;
    pub use kube::core::admission::Operation;
}
