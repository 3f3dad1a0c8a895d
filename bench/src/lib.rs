//! The benchmark harness: sidecar-injector against the Go (controller-runtime)
//! baseline, over loopback TLS and HTTP/1.1 keep-alive, as the API server calls webhooks.
//!
//! - [`corpus`]: the deterministic `AdmissionReview` corpus (2 KB, 10 KB, 100 KB, 1 MB).
//! - [`gate`]: the correctness gate (same pod from every server's patch) run before any timing.
//! - [`inprocess`]: sidecar-injector through the public API the server's handler calls.
//! - [`client`], [`load`], [`vegeta`], [`oha`]: the HTTPS client; the harness's own open-loop
//!   driver (the fault tests in `integration-tests/faults/`, which check every answer's patch) and
//!   the max-throughput search; vegeta, which sends the fixed-rate runs; oha, which sends the
//!   search's probes.
//! - [`servers`]: the servers as pinned child processes, measured through `/proc`.
//! - [`tool`]: finding and running the load generators' binaries.
//! - [`runner`], [`report`], [`regress`]: `bench run`, its result files, `bench check`/`accept`.
//! - [`plots`]: the pictures of the results, as SVG.
//! - [`layout`]: `bench layout`, the functions that run at start-up and serving, for the linker.
//!
//! See `bench/README.md`.

pub mod client;
pub mod corpus;
pub mod gate;
pub mod inprocess;
pub mod layout;
pub mod load;
pub mod oha;
pub mod plots;
pub mod regress;
pub mod report;
pub mod runner;
pub mod servers;
pub mod tool;
pub mod vegeta;
