//! The knobs of injection, as the mutators see them (read from [`crate::config::Config`]).

use serde::{Deserialize, Serialize};

use crate::env_rules::AnnotationEnv;

/// What to do when a pod asks for a sidecar the catalog does not have.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UnknownSidecarPolicy {
    /// Deny the pod, naming the unknown sidecar and the known ones (default: a typo fails loudly).
    #[default]
    Deny,
    /// Admit the pod without it, with a warning.
    Warn,
}

/// What to do when a sidecar's container or volume name is already used in the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CollisionPolicy {
    /// Deny the pod, naming the collision (default).
    #[default]
    Deny,
    /// Leave the pod's own item and skip the sidecar's, with a warning.
    Skip,
}

/// How annotation keys become env var names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum EnvNames {
    /// The key as is (`some-api-key`), as the Expedia injector does.
    #[default]
    AsIs,
    /// C-identifier form (`SOME_API_KEY`), for clusters with strict env-name validation.
    CIdentifier,
}

/// Where native sidecars go among the pod's init containers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NativePlacement {
    /// Before the pod's own init containers, so those can use them (default).
    #[default]
    First,
    /// After the pod's own init containers.
    Last,
}

/// Caps on what one pod may ask of the injector, so that a hostile pod costs bounded work and is
/// denied with a message naming the cap. The defaults are far above what a real pod carries (the
/// API server itself allows 256 KiB of annotations in all, but checks that only after mutating
/// webhooks ran, so the webhook may be sent more).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct Limits {
    /// Most distinct sidecar names in the `inject` annotation.
    pub max_inject_names: usize,
    /// Most env var annotations (`<prefix>/<key>` other than `inject` and `status`).
    pub max_env_annotations: usize,
    /// Most bytes in the annotations the injector reads (`inject` and the env annotations), keys
    /// and values together.
    pub max_annotation_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_inject_names: 64, max_env_annotations: 1000, max_annotation_bytes: 256 * 1024 }
    }
}

/// Everything the mutators need to know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct InjectionSettings {
    /// Annotation prefix: `<prefix>/inject`, `<prefix>/status`, and `<prefix>/<key>` env vars.
    pub annotation_prefix: String,
    /// The name under the prefix of the annotation listing the sidecars (`inject`).
    pub inject_annotation_name: String,
    /// Unknown sidecar names.
    pub unknown_sidecar: UnknownSidecarPolicy,
    /// Name collisions.
    pub on_collision: CollisionPolicy,
    /// Whether catalog annotations and labels replace the pod's own of the same key.
    pub override_pod_metadata: bool,
    /// Env var names from annotation keys.
    pub env_names: EnvNames,
    /// Native sidecar placement.
    pub native_sidecar_placement: NativePlacement,
    /// Write `$` as `$$` in env values, so that kubelet's `$(VAR)` expansion leaves annotation
    /// values exactly as written (values are data, never interpreted).
    pub literal_env_values: bool,
    /// Caps on one pod's requests.
    pub limits: Limits,
    /// Which env vars annotations may set in injected containers, unless a catalog entry sets its own.
    pub annotation_env: AnnotationEnv,
}

impl Default for InjectionSettings {
    fn default() -> Self {
        Self {
            annotation_prefix: "sidecar-injector.expedia.com".to_owned(),
            inject_annotation_name: "inject".to_owned(),
            unknown_sidecar: UnknownSidecarPolicy::Deny,
            on_collision: CollisionPolicy::Deny,
            override_pod_metadata: false,
            env_names: EnvNames::AsIs,
            native_sidecar_placement: NativePlacement::First,
            literal_env_values: true,
            limits: Limits::default(),
            annotation_env: AnnotationEnv::default(),
        }
    }
}
