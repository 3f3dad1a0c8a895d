//! Pod mutations written as data: one value runs in-process (a [`DynamicMutator`], in webhook
//! mode) and renders as a `MutatingAdmissionPolicy` (a [`PolicyForm`], in webhook-less mode), with
//! the same result.
//!
//! A [`PodMutation`] appends containers, init containers (native sidecars, `restartPolicy: Always`,
//! placed first), volumes and image pull secrets whose names the pod does not have; adds labels and
//! annotations the pod does not have; sets fields; copies the values of allowed annotations under a
//! prefix into env vars of the containers it adds; and, with a guard annotation, runs once per pod.
//!
//! ```
//! use admission_kit::declarative::PodMutation;
//! use admission_kit::prelude::*;
//! use admission_kit::pipeline::ResourceTarget;
//! use k8s_openapi::api::core::v1::Pod;
//!
//! let mutation: PodMutation = serde_json::from_value(serde_json::json!({
//!     "guard": "logs.example.com/injected",
//!     "containers": [{"name": "shipper", "image": "shipper:1"}],
//!     "labels": {"logs.example.com/shipped": "true"},
//!     "envFromAnnotations": {"prefix": "logs.example.com", "allow": ["level", "format"], "containers": ["shipper"]},
//! })).unwrap();
//! mutation.validate().unwrap();
//! let step = Step::dynamic("shipper", ResourceTarget::of::<Pod>(), mutation.clone()).policy_form(mutation);
//! ```

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::mutator::{Context, DynamicMutator, MutationResult, object_at, object_entry};
use crate::policy::cel::{self, glob_regex};
use crate::policy::{PolicyForm, PolicyParts, StepPolicy};

/// A pod mutation as data (see the [module](self) docs). Deserialises from camelCase keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct PodMutation {
    /// An annotation the mutation writes (`"true"`), and whose presence makes it do nothing: the
    /// mutation then runs once per pod, whatever reinvokes it.
    pub guard: Option<String>,
    /// Containers appended unless a container or init container has the name.
    pub containers: Vec<Value>,
    /// Init containers: those with `restartPolicy: Always` (native sidecars) first, in order; the
    /// others appended. Each unless a container or init container has the name.
    pub init_containers: Vec<Value>,
    /// Volumes appended unless the pod has one of the name.
    pub volumes: Vec<Value>,
    /// Image pull secrets appended unless the pod lists the name.
    pub image_pull_secrets: Vec<Value>,
    /// Labels added where the pod has none of the key.
    pub labels: BTreeMap<String, String>,
    /// Annotations added where the pod has none of the key.
    pub annotations: BTreeMap<String, String>,
    /// Fields set, in order (`path` a JSON pointer under `/spec` or `/metadata`; missing parent
    /// objects are created); a value already there is replaced.
    pub set: Vec<SetField>,
    /// Env vars from the pod's annotations, in the containers this mutation adds.
    pub env_from_annotations: Option<EnvFromAnnotations>,
}

/// A field set to a value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SetField {
    /// A JSON pointer, e.g. `/spec/priorityClassName`; each token a plain field name.
    pub path: String,
    /// The value.
    pub value: Value,
}

/// Annotations `<prefix>/<key>` whose key matches `allow` become env var `<key>` with the
/// annotation's value in the named containers (a var the container already has is replaced; the
/// others are appended in key order). Nothing is allowed unless listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct EnvFromAnnotations {
    /// The annotation prefix (without `/`).
    pub prefix: String,
    /// Glob patterns of the keys (after `<prefix>/`) that may become env vars.
    pub allow: Vec<String>,
    /// Names of containers (or init containers) of this mutation that receive them.
    pub containers: Vec<String>,
    /// `allow` as regular expressions, compiled at the first review (not per review).
    #[serde(skip)]
    compiled: CompiledAllow,
}

/// The compiled `allow` patterns; a cache, so it takes no part in comparisons.
#[derive(Clone, Default)]
struct CompiledAllow(std::sync::OnceLock<Vec<regex::Regex>>);

impl PartialEq for CompiledAllow {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for CompiledAllow {}

impl std::fmt::Debug for CompiledAllow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompiledAllow")
    }
}

impl EnvFromAnnotations {
    /// The `allow` patterns as the regular expressions the policy's CEL uses too.
    fn allow(&self) -> &[regex::Regex] {
        self.compiled.0.get_or_init(|| {
            self.allow
                .iter()
                .filter_map(|p| glob_regex(p, false).ok())
                .filter_map(|r| regex::Regex::new(&r).ok())
                .collect()
        })
    }
}

/// Env var names every Kubernetes release accepts.
const ENV_NAME: &str = "^[-._a-zA-Z][-._a-zA-Z0-9]*$";

/// [`ENV_NAME`], compiled once.
static VALID_ENV_NAME: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(ENV_NAME).unwrap_or_else(|_| unreachable!("a valid expression")));

fn name(item: &Value) -> &str {
    item.get("name").and_then(Value::as_str).unwrap_or_default()
}

fn is_native(container: &Value) -> bool {
    container.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

fn names_in(spec: &Map<String, Value>, key: &str) -> HashSet<String> {
    spec.get(key).and_then(Value::as_array).into_iter().flatten().map(|i| name(i).to_owned()).collect()
}

/// A pointer's tokens, each a plain field name (a letter, then letters, digits, `_`): never a
/// list index.
fn field_tokens(path: &str) -> Option<Vec<&str>> {
    let tokens: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    let plain = |t: &&str| {
        t.starts_with(|c: char| c.is_ascii_alphabetic()) && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    (tokens.len() >= 2 && matches!(tokens[0], "spec" | "metadata") && tokens.iter().all(plain)).then_some(tokens)
}

impl PodMutation {
    /// Checks the mutation: every item named, no name twice, env containers among the mutation's,
    /// allow patterns that are globs, set paths that are plain field pointers.
    ///
    /// # Errors
    /// What is wrong, naming the item.
    pub fn validate(&self) -> Result<(), String> {
        let mut containers = HashSet::new();
        for item in self.containers.iter().chain(&self.init_containers) {
            let n = name(item);
            if n.is_empty() || !containers.insert(n) {
                return Err(format!("container `{n}`: every container needs a name, used once"));
            }
        }
        for (what, items) in [("volume", &self.volumes), ("image pull secret", &self.image_pull_secrets)] {
            let mut seen = HashSet::new();
            for item in items {
                if name(item).is_empty() || !seen.insert(name(item)) {
                    return Err(format!("{what} `{}`: every {what} needs a name, used once", name(item)));
                }
            }
        }
        for field in &self.set {
            if field_tokens(&field.path).is_none() {
                return Err(format!(
                    "set `{}`: a path is a JSON pointer of plain field names under /spec or /metadata",
                    field.path
                ));
            }
        }
        if let Some(env) = &self.env_from_annotations {
            for pattern in &env.allow {
                glob_regex(pattern, false)?;
            }
            if let Some(missing) = env.containers.iter().find(|c| !containers.contains(c.as_str())) {
                return Err(format!("envFromAnnotations: `{missing}` is not a container of this mutation"));
            }
        }
        Ok(())
    }

    /// The env vars the annotations give, by name (the annotation key after the prefix): allowed
    /// keys that are env var names Kubernetes accepts.
    fn env(&self, annotations: &Map<String, Value>) -> BTreeMap<String, String> {
        let Some(env) = &self.env_from_annotations else { return BTreeMap::new() };
        let prefix = format!("{}/", env.prefix);
        let (allow, valid) = (env.allow(), &*VALID_ENV_NAME);
        annotations
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, v.as_str()?)))
            .filter(|(key, _)| {
                allow.iter().any(|r| r.is_match(key)) && valid.is_match(key) && *key != "." && !key.starts_with("..")
            })
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }

    fn receives_env(&self, container: &Value) -> bool {
        self.env_from_annotations.as_ref().is_some_and(|e| e.containers.iter().any(|c| c == name(container)))
    }

    /// `container` as added: with the env vars when it receives them and there are any.
    fn with_env(&self, container: &Value, env: &BTreeMap<String, String>) -> Value {
        if !self.receives_env(container) || env.is_empty() {
            return container.clone();
        }
        let mut container = container.clone();
        let own = container["env"].as_array().cloned().unwrap_or_default();
        let own_names: HashSet<&str> = own.iter().map(name).collect();
        let mut vars: Vec<Value> = own
            .iter()
            .map(|v| env.get(name(v)).map_or_else(|| v.clone(), |value| json!({"name": name(v), "value": value})))
            .collect();
        vars.extend(
            env.iter().filter(|(k, _)| !own_names.contains(k.as_str())).map(|(k, v)| json!({"name": k, "value": v})),
        );
        container["env"] = Value::Array(vars);
        container
    }
}

#[async_trait::async_trait]
impl DynamicMutator for PodMutation {
    async fn mutate(&self, pod: &mut Value, _ctx: &mut Context<'_>) -> MutationResult {
        let annotations = pod.pointer("/metadata/annotations").and_then(Value::as_object).cloned().unwrap_or_default();
        if self.guard.as_ref().is_some_and(|g| annotations.contains_key(g)) {
            return Ok(());
        }
        let env = self.env(&annotations);
        let spec = object_at(pod, "spec");
        let mut containers = names_in(spec, "containers");
        containers.extend(names_in(spec, "initContainers"));
        let absent = |items: &[Value], taken: &HashSet<String>| -> Vec<Value> {
            items.iter().filter(|i| !taken.contains(name(i))).cloned().collect()
        };
        let regular = absent(&self.containers, &containers);
        let (native, init): (Vec<Value>, Vec<Value>) =
            absent(&self.init_containers, &containers).into_iter().partition(is_native);
        let volumes = absent(&self.volumes, &names_in(spec, "volumes"));
        let secrets = absent(&self.image_pull_secrets, &names_in(spec, "imagePullSecrets"));
        for (key, items) in
            [("containers", regular), ("initContainers", init), ("volumes", volumes), ("imagePullSecrets", secrets)]
        {
            if items.is_empty() {
                continue;
            }
            let list = spec.entry(key).or_insert_with(|| Value::Array(Vec::new()));
            if !list.is_array() {
                *list = Value::Array(Vec::new());
            }
            if let Some(list) = list.as_array_mut() {
                list.extend(items.iter().map(|c| self.with_env(c, &env)));
            }
        }
        if !native.is_empty() {
            let list = spec.entry("initContainers").or_insert_with(|| Value::Array(Vec::new()));
            if let Some(list) = list.as_array_mut() {
                list.splice(0..0, native.iter().map(|c| self.with_env(c, &env)));
            }
        }
        let metadata = object_at(pod, "metadata");
        for (field, values) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            if values.is_empty() {
                continue;
            }
            let map = object_entry(metadata, field);
            for (k, v) in values {
                map.entry(k.clone()).or_insert_with(|| Value::String(v.clone()));
            }
        }
        for field in &self.set {
            let Some(tokens) = field_tokens(&field.path) else { continue };
            let (last, parents) = tokens.split_last().unwrap_or_else(|| unreachable!("two tokens or more"));
            let mut at = object_at(pod, parents[0]);
            for token in &parents[1..] {
                at = object_entry(at, token);
            }
            at.insert((*last).to_owned(), field.value.clone());
        }
        if let Some(guard) = &self.guard {
            object_entry(object_at(pod, "metadata"), "annotations")
                .insert(guard.clone(), Value::String("true".to_owned()));
        }
        Ok(())
    }
}

impl PolicyForm for PodMutation {
    fn render(&self) -> Result<StepPolicy, String> {
        self.validate()?;
        let mut parts = PolicyParts::new()
            .variable(
                "podContainers",
                "(has(object.spec.containers) ? object.spec.containers.map(c, c.name) : []) + (has(object.spec.initContainers) ? object.spec.initContainers.map(c, c.name) : [])",
            )
            .variable("podVolumes", "has(object.spec.volumes) ? object.spec.volumes.map(v, v.name) : []")
            .variable("podPullSecrets", "has(object.spec.imagePullSecrets) ? object.spec.imagePullSecrets.map(s, s.name) : []")
            .variable("env", self.env_cel());
        if let Some(guard) = &self.guard {
            parts = parts.condition(
                "not-yet-applied",
                format!(
                    "!has(object.metadata.annotations) || !({} in object.metadata.annotations)",
                    cel::string(guard)
                ),
            );
        }
        let mut ops = vec![
            self.append_cel("containers", &self.containers, "variables.podContainers"),
            self.init_cel(),
            self.append_cel("volumes", &self.volumes, "variables.podVolumes"),
            self.append_cel("imagePullSecrets", &self.image_pull_secrets, "variables.podPullSecrets"),
        ];
        let mut guard_annotations = self.annotations.clone();
        if let Some(guard) = &self.guard {
            // Written last, as in-process: over an annotation of the same key in `annotations`.
            guard_annotations.remove(guard);
        }
        ops.push(metadata_cel("labels", &self.labels, None));
        ops.push(metadata_cel("annotations", &guard_annotations, self.guard.as_deref()));
        ops.extend(self.set.iter().map(set_cel));
        Ok(StepPolicy::Parts(parts.mutation(ops.join(" + "))))
    }
}

impl PodMutation {
    /// `[[name, value], …]` of the env vars, in name order (CEL).
    fn env_cel(&self) -> String {
        let Some(env) = &self.env_from_annotations else { return "[]".to_owned() };
        let prefix = format!("{}/", env.prefix);
        let allow: Vec<String> = env.allow.iter().filter_map(|p| glob_regex(p, false).ok()).collect();
        format!(
            "has(object.metadata.annotations) ? object.metadata.annotations.filter(k, k.startsWith({p}) && {allow}.exists(r, k.substring({n}).matches(r)) && k.substring({n}).matches({valid}) && k.substring({n}) != \".\" && !k.substring({n}).startsWith(\"..\")).map(k, [dyn(k.substring({n})), dyn(object.metadata.annotations[k])]).sortBy(e, e[0]) : []",
            p = cel::string(&prefix),
            allow = cel::strings(&allow),
            n = prefix.chars().count(),
            valid = cel::string(ENV_NAME)
        )
    }

    /// A container as added (CEL): with the env vars when it receives them and there are any.
    fn container_cel(&self, container: &Value) -> String {
        if self.receives_env(container) {
            cel::container_with_env(container, "variables.env", "e", "e[0]", "e[1]")
        } else {
            cel::value(container)
        }
    }

    /// Appends the items whose names `taken` lacks to `/spec/<key>`, creating the list (CEL).
    fn append_cel(&self, key: &str, items: &[Value], taken: &str) -> String {
        if items.is_empty() {
            return "[]".to_owned();
        }
        let added: Vec<String> = items
            .iter()
            .map(|i| format!("(({} in {taken}) ? [] : [{}])", cel::string(name(i)), self.container_cel(i)))
            .collect();
        let added = added.join(" + ");
        format!(
            "((!has(object.spec.{key}) && size({added}) > 0) ? [JSONPatch{{op: \"add\", path: \"/spec/{key}\", value: []}}] : []) + ({added}).map(c, JSONPatch{{op: \"add\", path: \"/spec/{key}/-\", value: c}})"
        )
    }

    /// Init containers: the others appended, native sidecars inserted first (CEL).
    fn init_cel(&self) -> String {
        if self.init_containers.is_empty() {
            return "[]".to_owned();
        }
        let list = |native: bool| -> String {
            let items: Vec<String> = self
                .init_containers
                .iter()
                .filter(|c| is_native(c) == native)
                .map(|c| {
                    format!(
                        "(({} in variables.podContainers) ? [] : [{}])",
                        cel::string(name(c)),
                        self.container_cel(c)
                    )
                })
                .collect();
            if items.is_empty() { "[]".to_owned() } else { format!("({})", items.join(" + ")) }
        };
        let (native, init) = (list(true), list(false));
        format!(
            "((!has(object.spec.initContainers) && size({init}) + size({native}) > 0) ? [JSONPatch{{op: \"add\", path: \"/spec/initContainers\", value: []}}] : []) + {init}.map(c, JSONPatch{{op: \"add\", path: \"/spec/initContainers/-\", value: c}}) + {native}.transformList(k, c, JSONPatch{{op: \"add\", path: \"/spec/initContainers/\" + string(k), value: c}})"
        )
    }
}

/// Adds the `values` the pod lacks to `/metadata/<field>`, creating the map, then `guard` (CEL).
fn metadata_cel(field: &str, values: &BTreeMap<String, String>, guard: Option<&str>) -> String {
    if values.is_empty() && guard.is_none() {
        return "[]".to_owned();
    }
    let mut ops: Vec<String> = values
        .iter()
        .map(|(k, v)| {
            format!(
                "((has(object.metadata.{field}) && {key} in object.metadata.{field}) ? [] : [JSONPatch{{op: \"add\", path: \"/metadata/{field}/{token}\", value: {value}}}])",
                key = cel::string(k),
                token = cel::pointer_token(k),
                value = cel::string(v)
            )
        })
        .collect();
    if let Some(guard) = guard {
        ops.push(format!(
            "[JSONPatch{{op: \"add\", path: \"/metadata/{field}/{}\", value: \"true\"}}]",
            cel::pointer_token(guard)
        ));
    }
    format!(
        "(!has(object.metadata.{field}) ? [JSONPatch{{op: \"add\", path: \"/metadata/{field}\", value: {{}}}}] : []) + {}",
        ops.join(" + ")
    )
}

/// Sets a field, creating missing parent objects (CEL).
fn set_cel(field: &SetField) -> String {
    let Some(tokens) = field_tokens(&field.path) else { return "[]".to_owned() };
    let mut ops = Vec::new();
    for depth in 2..tokens.len() {
        let parent = &tokens[..depth];
        ops.push(format!(
            "(!has(object.{}) ? [JSONPatch{{op: \"add\", path: \"/{}\", value: {{}}}}] : [])",
            parent.join("."),
            parent.join("/")
        ));
    }
    ops.push(format!(
        "[JSONPatch{{op: \"add\", path: {}, value: {}}}]",
        cel::string(&field.path),
        cel::value(&field.value)
    ));
    ops.join(" + ")
}

#[cfg(test)]
mod tests;
