//! A real Kubernetes control plane on this machine, for proving webhooks end to end: `etcd`,
//! `kube-apiserver` and `kube-controller-manager` processes (no nodes, so pods stay Pending), with
//! generated certificates, an admin kubeconfig, readiness waits, logs on failure and cleanup on
//! every exit path; and, where pods must run, [`node::Cluster`]: the same control plane with a
//! scheduler and a real node (containerd, kubelet, kube-proxy) in a network namespace of its own.
//!
//! Binaries are found, in order: `TEST_ASSET_ETCD` / `TEST_ASSET_KUBE_APISERVER` /
//! `TEST_ASSET_KUBE_CONTROLLER_MANAGER`; `$KUBEBUILDER_ASSETS/<name>` (what `setup-envtest` gives);
//! the project's cache; else `integration-tests/build-control-plane.sh` builds them from the Go
//! module proxy into that cache.

pub mod control_plane;
pub mod helm;
pub mod images;
pub mod node;
pub mod podman;
pub mod scenarios;
pub mod webhook;

pub use control_plane::{Binaries, ControlPlane, ControlPlaneOptions};
