//! Webhook-less mode: the catalog and configuration rendered as a `MutatingAdmissionPolicy` that
//! the API server runs itself, and a `ValidatingAdmissionPolicy` for the denials a mutating policy
//! cannot give.
//!
//! One policy does what both webhook steps do, in the same order, with the same results: the
//! sidecars a pod's `inject` annotation names (in its order, first of repeats kept) are appended
//! with their containers, native sidecars placed as `nativeSidecarPlacement` says, init containers,
//! volumes, pull secrets (each once) and metadata; the status annotation records them in the
//! webhook's words; env vars from the pod's annotations go into the containers added, under the
//! same `annotationEnv` rules. Every denial the webhook gives (limits, unknown or restricted
//! sidecars, collisions, env names and rules) is computed in the same order and written by the
//! mutating policy into the [`DENIAL_ANNOTATION`]; the validating policy denies any pod carrying
//! it, with its text as the message. A pod so marked is refused, so the mark is never stored.
//!
//! What a policy cannot do is refused at rendering with the reason, never dropped: sidecars from
//! namespace `ConfigMaps`, warnings (`unknownSidecar: warn`, `onCollision: skip`,
//! `annotationEnv.onViolation: skip`), and names that would need escaping in the status JSON.

use admission_kit::policy::cel::{self, Template};
use admission_kit::policy::{PolicyForm, PolicyParts, StepPolicy, Validation};
use serde_json::Value;

use std::sync::Arc;

use crate::catalog::{Catalog, CatalogStore, SidecarEntry};
use crate::env_rules::{AnnotationEnv, DENIED, OnViolation, SidecarEnvRules};
use crate::inject::Annotations;
use crate::settings::{CollisionPolicy, EnvNames, InjectionSettings, NativePlacement, UnknownSidecarPolicy};

/// The annotation the mutating policy writes a denial into, for the validating policy to refuse the
/// pod with its text.
pub const DENIAL_ANNOTATION: &str = "admission-kit/denial";

/// The injector as a policy: the configuration, and the catalog as it is when rendered (a policy
/// does not follow catalog files: render and apply it again when they change).
pub struct InjectorPolicy {
    settings: Arc<InjectionSettings>,
    catalog: Arc<CatalogStore>,
    namespace_catalogs: bool,
}

impl std::fmt::Debug for InjectorPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InjectorPolicy").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl InjectorPolicy {
    /// The policy for `settings` over `catalog`; `namespace_catalogs` says whether the configuration
    /// also reads sidecars from namespace `ConfigMaps` (which a policy cannot).
    #[must_use]
    pub fn new(settings: Arc<InjectionSettings>, catalog: Arc<CatalogStore>, namespace_catalogs: bool) -> Self {
        Self { settings, catalog, namespace_catalogs }
    }
}

/// The env step's form: its effect is part of the sidecar step's policy.
#[derive(Debug)]
pub struct EnvWithinSidecars;

impl PolicyForm for EnvWithinSidecars {
    fn render(&self) -> Result<StepPolicy, String> {
        Ok(StepPolicy::Within("env from annotations is rendered in the `sidecars` step's policy".to_owned()))
    }
}

impl PolicyForm for InjectorPolicy {
    fn render(&self) -> Result<StepPolicy, String> {
        let catalog = self.catalog.current();
        self.refusals(&catalog)?;
        Ok(StepPolicy::Parts(Renderer::new(&self.settings, &catalog)?.parts()))
    }
}

impl InjectorPolicy {
    /// Every setting a policy cannot honour, together.
    fn refusals(&self, catalog: &Catalog) -> Result<(), String> {
        let s = &self.settings;
        let mut reasons = Vec::new();
        if self.namespace_catalogs {
            reasons.push(
                "`namespaceCatalogs` reads sidecars from ConfigMaps in the pod's namespace per request, which a policy cannot read",
            );
        }
        if s.unknown_sidecar == UnknownSidecarPolicy::Warn {
            reasons.push("`unknownSidecar: warn` admits with a warning, which a mutating policy cannot give");
        }
        if s.on_collision == CollisionPolicy::Skip {
            reasons.push("`onCollision: skip` admits with a warning, which a mutating policy cannot give");
        }
        let entry_skips = catalog
            .names()
            .iter()
            .filter_map(|n| catalog.get(n))
            .any(|e| e.annotation_env.as_ref().and_then(|r| r.on_violation) == Some(OnViolation::Skip));
        if s.annotation_env.on_violation == OnViolation::Skip || entry_skips {
            reasons.push("`annotationEnv.onViolation: skip` admits with warnings, which a mutating policy cannot give");
        }
        if reasons.is_empty() { Ok(()) } else { Err(reasons.join("; ")) }
    }
}

/// A name as it appears in the status JSON: only names that need no escaping are rendered.
fn json_safe(name: &str, what: &str) -> Result<(), String> {
    if name.chars().all(|c| !c.is_control() && c != '"' && c != '\\') {
        Ok(())
    } else {
        Err(format!("{what} `{}` would need escaping in the status annotation", name.escape_debug()))
    }
}

struct Renderer<'a> {
    settings: &'a InjectionSettings,
    annotations: Annotations,
    entries: Vec<&'a SidecarEntry>,
    catalog: &'a Catalog,
}

/// `cond ? then : else` for CEL text.
fn ternary(cond: &str, then: &str, otherwise: &str) -> String {
    format!("({cond}) ? ({then}) : ({otherwise})")
}

/// A map literal from each entry's name to an expression, evaluated only for selected entries.
fn per_entry(entries: &[&SidecarEntry], empty: &str, mut value: impl FnMut(&SidecarEntry) -> String) -> String {
    let items: Vec<String> = entries
        .iter()
        .map(|e| {
            let name = cel::string(&e.name);
            format!("{name}: ({name} in variables.sel) ? ({}) : {empty}", value(e))
        })
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn item_name(item: &Value) -> &str {
    item.get("name").and_then(Value::as_str).unwrap_or_default()
}

impl<'a> Renderer<'a> {
    fn new(settings: &'a InjectionSettings, catalog: &'a Catalog) -> Result<Self, String> {
        let entries: Vec<&SidecarEntry> =
            catalog.names().iter().filter_map(|n| catalog.get(n)).map(AsRef::as_ref).collect();
        for entry in &entries {
            json_safe(&entry.name, "sidecar")?;
            for name in entry.container_names() {
                json_safe(name, "container")?;
            }
        }
        Ok(Self { settings, annotations: Annotations::of(settings), entries, catalog })
    }

    fn parts(&self) -> PolicyParts {
        let a = &self.annotations;
        let ann = "object.metadata.annotations";
        // A pod that arrives with the status annotation is excluded by the pipeline's `leave_alone`,
        // rendered as a match condition of its own.
        let mut parts = PolicyParts::new()
            .variable("ann", ann)
            .variable(
                "requested",
                format!("variables.ann[{}].split(\",\").map(n, n.trim()).filter(n, n != \"\").distinct()", cel::string(&a.inject)),
            )
            .variable(
                "annotationBytes",
                format!(
                    "variables.ann.filter(k, k.startsWith({p}) && k != {s}).map(k, size(bytes(k)) + size(bytes(variables.ann[k]))).sum()",
                    p = cel::string(&a.prefix),
                    s = cel::string(&a.status)
                ),
            )
            .variable(
                "envKeys",
                format!(
                    "variables.ann.filter(k, k.startsWith({p}) && k != {i} && k != {s} && size(k) > {n})",
                    p = cel::string(&a.prefix),
                    i = cel::string(&a.inject),
                    s = cel::string(&a.status),
                    n = a.prefix.chars().count()
                ),
            )
            // [annotation key, env var name, value] for each env annotation.
            .variable(
                "envAll",
                format!(
                    "variables.envKeys.map(k, [dyn(k), dyn({}), dyn(variables.ann[k])])",
                    self.env_name(&format!("k.substring({})", a.prefix.chars().count()))
                ),
            )
            // The annotations by name, then key: each name's annotations are next to each other.
            .variable("envByName", format!("variables.envAll.sortBy(e, e[1] + {} + e[0])", cel::string("\u{1}")))
            // The annotations (in key order) whose name Kubernetes refuses, or which give a name the
            // annotation before them gave with another value: the first of them is the first the
            // webhook meets. Linear, as the API server's CEL cost budget needs.
            .variable(
                "envOffending",
                "variables.envByName.transformList(i, e, !(e[1].matches(\"^[-._a-zA-Z][-._a-zA-Z0-9]*$\") && e[1] != \".\" && !e[1].startsWith(\"..\")) || (i > 0 && variables.envByName[i - 1][1] == e[1] && variables.envByName[i - 1][2] != e[2]), e).sortBy(e, e[0])",
            )
            // One var per name (the last key's, as a later annotation replaces an earlier one),
            // in name order.
            .variable(
                "env",
                "variables.envByName.transformList(i, e, i == size(variables.envByName) - 1 || variables.envByName[i + 1][1] != e[1], e)",
            )
            .variable("known", cel::strings(&self.catalog.names()))
            .variable("restricted", self.restricted())
            .variable(
                "refused",
                "variables.requested.filter(n, !(n in variables.known) || (n in variables.restricted && !(request.namespace in variables.restricted[n])))",
            )
            .variable("sel", "variables.requested.filter(n, n in variables.known)")
            .variable(
                "podContainers",
                "object.spec.containers.map(c, c.name) + (has(object.spec.initContainers) ? object.spec.initContainers.map(c, c.name) : [])",
            )
            .variable("podVolumes", "has(object.spec.volumes) ? object.spec.volumes.map(v, v.name) : []")
            .variable("podPullSecrets", "has(object.spec.imagePullSecrets) ? object.spec.imagePullSecrets.map(s, s.name) : []")
            // [sidecar, what, item] for each item a selected sidecar adds whose name the pod has.
            .variable("collisions", format!("variables.sel.map(n, {}[n]).flatten()", self.collisions()))
            // The built-in deny-list as [pattern, regex, reason], and for each var the entries it matches.
            .variable("builtin", builtin())
            .variable("envBuiltin", "variables.env.map(v, variables.builtin.filter(p, v[1].matches(p[1])))")
            .variable("violations", self.violations())
            .variable("denial", self.denial());
        parts = self.added_variables(parts).mutation(self.mutation());
        let key = cel::string(DENIAL_ANNOTATION);
        parts.validation(
            Validation::new(
                format!("!has(object.metadata.annotations) || !({key} in object.metadata.annotations)"),
                format!("string(object.metadata.annotations[{key}])"),
            )
            .when(
                "marked-for-denial",
                format!("has(object.metadata.annotations) && {key} in object.metadata.annotations"),
            ),
        )
    }

    /// The env var name of an annotation key (CEL text over `key`, a string expression).
    fn env_name(&self, key: &str) -> String {
        match self.settings.env_names {
            EnvNames::AsIs => key.to_owned(),
            EnvNames::CIdentifier => {
                let upper = format!(
                    "({key}).split(\"\").map(c, c.matches(\"^[a-zA-Z0-9]$\") ? c.upperAscii() : \"_\").join(\"\")"
                );
                format!("(({upper}).matches(\"^[0-9]\") ? \"_\" + ({upper}) : ({upper}))")
            }
        }
    }

    fn restricted(&self) -> String {
        let items: Vec<String> = self
            .entries
            .iter()
            .filter_map(|e| e.namespaces.as_ref().map(|ns| format!("{}: {}", cel::string(&e.name), cel::strings(ns))))
            .collect();
        if items.is_empty() { "{}".to_owned() } else { format!("{{{}}}", items.join(", ")) }
    }

    fn collisions(&self) -> String {
        per_entry(&self.entries, "[]", |e| {
            let name = cel::string(&e.name);
            let mut lists = Vec::new();
            for (what, items, pod) in [
                ("container", &e.containers, "variables.podContainers"),
                ("init container", &e.init_containers, "variables.podContainers"),
                ("volume", &e.volumes, "variables.podVolumes"),
            ] {
                for item in items {
                    let item = cel::string(item_name(item));
                    lists.push(format!("(({item} in {pod}) ? [[{name}, {}, {item}]] : [])", cel::string(what)));
                }
            }
            if lists.is_empty() { "[]".to_owned() } else { lists.join(" + ") }
        })
    }

    /// The first denial, in the webhook's order, or "".
    fn denial(&self) -> String {
        let a = &self.annotations;
        let limits = &self.settings.limits;
        let bytes = Template::new(&format!(
            "the pod's `inject` and env annotations under `{}` hold {{bytes}} bytes; the limit is {} (configuration key `limits.maxAnnotationBytes`)",
            a.prefix, limits.max_annotation_bytes
        ))
        .cel(&[("bytes", "string(variables.annotationBytes)")]);
        let env_count = Template::new(&format!(
            "the pod has {{n}} env var annotations under `{}`; the limit is {} (configuration key `limits.maxEnvAnnotations`)",
            a.prefix, limits.max_env_annotations
        ))
        .cel(&[("n", "string(size(variables.envKeys))")]);
        let names = Template::new(&format!(
            "annotation `{}` names {{n}} sidecars; the limit is {} (configuration key `limits.maxInjectNames`)",
            a.inject, limits.max_inject_names
        ))
        .cel(&[("n", "string(size(variables.requested))")]);
        let unknown = Template::new(&format!("sidecar `{{name}}` is not in the catalog; known: {}", self.catalog))
            .cel(&[("name", "variables.refused[0]")]);
        let not_allowed = Template::new(
            "sidecar `{name}` may not be injected in namespace `{namespace}`; it is allowed in: {allowed}",
        )
        .cel(&[
            ("name", "variables.refused[0]"),
            ("namespace", "request.namespace"),
            ("allowed", "variables.restricted[variables.refused[0]].join(\", \")"),
        ]);
        let collision =
            Template::new("sidecar `{name}` adds {what} `{item}`, but the pod already has one with that name").cel(&[
                ("name", "variables.collisions[0][0]"),
                ("what", "variables.collisions[0][1]"),
                ("item", "variables.collisions[0][2]"),
            ]);
        let invalid = Template::new(&format!(
            "annotation `{}{{key}}` would become env var `{{name}}`, which Kubernetes rejects; rename it, or set envNames: cIdentifier",
            a.prefix
        ))
        .cel(&[("key", &format!("o[0].substring({})", a.prefix.chars().count())), ("name", "o[1]")]);
        let twice = Template::new(&format!(
            "two annotations under `{}` become env var `{{name}}` with different values",
            a.prefix
        ))
        .cel(&[("name", "o[1]")]);
        let offending = format!(
            "variables.envOffending.map(o, (o[1].matches(\"^[-._a-zA-Z][-._a-zA-Z0-9]*$\") && o[1] != \".\" && !o[1].startsWith(\"..\")) ? ({twice}) : ({invalid}))[0]"
        );
        let limits_cel = [
            (format!("variables.annotationBytes > {}", limits.max_annotation_bytes), bytes),
            (format!("size(variables.envKeys) > {}", limits.max_env_annotations), env_count),
        ];
        let sidecar_step = [
            (format!("size(variables.requested) > {}", limits.max_inject_names), names),
            (
                "size(variables.refused) > 0".to_owned(),
                ternary("variables.refused[0] in variables.known", &not_allowed, &unknown),
            ),
            ("size(variables.collisions) > 0".to_owned(), collision),
        ];
        // The env step runs when a sidecar was injected (the status annotation written).
        let env_step = [
            ("size(variables.sel) > 0 && size(variables.envOffending) > 0".to_owned(), offending),
            (
                "size(variables.sel) > 0 && size(variables.violations) > 0".to_owned(),
                "variables.violations[0]".to_owned(),
            ),
        ];
        let mut expression = "\"\"".to_owned();
        for (cond, message) in limits_cel.into_iter().chain(sidecar_step).chain(env_step).rev() {
            expression = ternary(&cond, &message, &expression);
        }
        expression
    }

    /// The groups of added containers in the pod's order (init containers first): the order in
    /// which the env step meets them.
    fn groups_in_pod_order(&self) -> [Group; 3] {
        match self.settings.native_sidecar_placement {
            NativePlacement::First => [Group::Native, Group::Init, Group::Regular],
            NativePlacement::Last => [Group::Init, Group::Native, Group::Regular],
        }
    }

    /// Every env rule violation, in the order the env step meets them: containers in pod order, vars
    /// in name order.
    fn violations(&self) -> String {
        let groups: Vec<String> = self
            .groups_in_pod_order()
            .iter()
            .map(|group| {
                let map = per_entry(&self.entries, "[]", |e| {
                    let lists: Vec<String> = group
                        .members(e)
                        .iter()
                        .map(|c| {
                            let name = cel::string(item_name(c));
                            format!("({name} in variables.podContainers) ? [] : ({})", self.container_violations(e, c))
                        })
                        .collect();
                    if lists.is_empty() { "[]".to_owned() } else { lists.join(" + ") }
                });
                format!("variables.sel.map(n, {map}[n]).flatten()")
            })
            .collect();
        format!("size(variables.env) == 0 ? [] : ({})", groups.join(" + "))
    }

    /// The messages of the vars that break `entry`'s rules in `container` (CEL list of strings):
    /// for each var in name order, the first rule it breaks, in the order the webhook checks them.
    fn container_violations(&self, entry: &SidecarEntry, container: &Value) -> String {
        let rules = Rules::of(&self.settings.annotation_env, entry.annotation_env.as_ref());
        let own: Vec<&str> = container
            .get("env")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| v.get("name").and_then(Value::as_str))
            .collect();
        let prefix = &self.annotations.prefix;
        let key = format!("v[0].substring({})", prefix.chars().count());
        // [pattern, regex, whose] lists, first match wins.
        let tagged = |patterns: &[(Vec<String>, &str)], ignore_case: bool| -> String {
            let items: Vec<String> = patterns
                .iter()
                .flat_map(|(texts, whose)| {
                    texts.iter().map(move |t| {
                        let regex = cel::glob_regex(t, ignore_case).unwrap_or_default();
                        format!("[{}, {}, {}]", cel::string(t), cel::string(&regex), cel::string(whose))
                    })
                })
                .collect();
            format!("[{}]", items.join(", "))
        };
        let deny = tagged(&rules.deny, true);
        let locked = tagged(&[(rules.locked.0.clone(), rules.locked.1)], false);
        let checks: Vec<(String, String)> = vec![
            (
                format!("i >= {}", rules.max_vars.0),
                cel::string(&format!(
                    "annotations would set more than {} env vars in this container ({} `annotationEnv.maxVars`)",
                    rules.max_vars.0, rules.max_vars.1
                )),
            ),
            (
                format!("size(bytes(v[2])) > {}", rules.max_value_bytes.0),
                Template::new(&format!(
                    "its value is {{bytes}} bytes, over the limit of {} ({} `annotationEnv.maxValueBytes`)",
                    rules.max_value_bytes.0, rules.max_value_bytes.1
                ))
                .cel(&[("bytes", "string(size(bytes(v[2])))")]),
            ),
            (
                format!("!{}.exists(r, ({key}).matches(r))", regexes(&rules.allow.0, false)),
                cel::string(&format!(
                    "the key matches none of {} `annotationEnv.allow` ({})",
                    rules.allow.1,
                    rules.allow.0.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
                )),
            ),
            (
                format!("{deny}.exists(p, v[1].matches(p[1]))"),
                Template::new("it matches `{pattern}` of {whose} `annotationEnv.deny`").cel(&[
                    ("pattern", &format!("{deny}.filter(p, v[1].matches(p[1]))[0][0]")),
                    ("whose", &format!("{deny}.filter(p, v[1].matches(p[1]))[0][2]")),
                ]),
            ),
            (
                format!("size(variables.envBuiltin[i]) > 0 && !{}.exists(r, v[1].matches(r))", regexes(&rules.exempt, false)),
                Template::new(
                    "it matches `{pattern}` of the built-in deny-list ({reason}); `annotationEnv.exempt` lifts it for the sidecars that must take it",
                )
                .cel(&[("pattern", "variables.envBuiltin[i][0][0]"), ("reason", "variables.envBuiltin[i][0][2]")]),
            ),
            (
                format!("v[1] in {} && {locked}.exists(p, v[1].matches(p[1]))", cel::strings(&own)),
                Template::new("the sidecar sets this var itself and {whose} `annotationEnv.locked` (`{pattern}`) keeps it").cel(&[
                    ("whose", &cel::string(rules.locked.1)),
                    ("pattern", &format!("{locked}.filter(p, v[1].matches(p[1]))[0][0]")),
                ]),
            ),
        ];
        let mut reason = "\"\"".to_owned();
        for (cond, text) in checks.into_iter().rev() {
            reason = ternary(&cond, &text, &reason);
        }
        let head = Template::new(&format!(
            "sidecar `{}` (container `{}`): annotation `{prefix}{{key}}` may not set env var `{{name}}`: ",
            entry.name,
            item_name(container)
        ))
        .cel(&[("key", &key), ("name", "v[1]")]);
        // `[reason].map(r, …)[0]` names the reason once (the API server's CEL has no `cel.bind`).
        format!(
            "variables.env.transformList(i, v, [{reason}].map(r, r == \"\" ? \"\" : {head} + r)[0]).filter(m, m != \"\")"
        )
    }

    /// The variables the mutation uses: what is added, in order.
    fn added_variables(&self, parts: PolicyParts) -> PolicyParts {
        let containers = |group: Group| -> String {
            let map = per_entry(&self.entries, "[]", |e| {
                let items: Vec<String> = group
                    .members(e)
                    .iter()
                    .map(|c| {
                        let name = cel::string(item_name(c));
                        format!("(({name} in variables.podContainers) ? [] : [{}])", self.container_value(c))
                    })
                    .collect();
                if items.is_empty() { "[]".to_owned() } else { items.join(" + ") }
            });
            format!("variables.sel.map(n, {map}[n]).flatten()")
        };
        let volumes = per_entry(&self.entries, "[]", |e| {
            let items: Vec<String> = e
                .volumes
                .iter()
                .map(|v| {
                    format!("(({} in variables.podVolumes) ? [] : [{}])", cel::string(item_name(v)), cel::value(v))
                })
                .collect();
            if items.is_empty() { "[]".to_owned() } else { items.join(" + ") }
        });
        let secrets = per_entry(&self.entries, "[]", |e| {
            let items: Vec<String> = e.image_pull_secrets.iter().map(cel::value).collect();
            format!("[{}]", items.join(", "))
        });
        let pairs = |field: &str| {
            let map = per_entry(&self.entries, "[]", |e| {
                let values = if field == "labels" { &e.labels } else { &e.annotations };
                let items: Vec<String> =
                    values.iter().map(|(k, v)| format!("[{}, {}]", cel::string(k), cel::string(v))).collect();
                format!("[{}]", items.join(", "))
            });
            format!("variables.sel.map(n, {map}[n]).flatten()")
        };
        let status_containers = per_entry(&self.entries, "[]", |e| {
            let items: Vec<String> = e
                .containers
                .iter()
                .chain(&e.init_containers)
                .map(|c| {
                    let name = cel::string(item_name(c));
                    format!("(({name} in variables.podContainers) ? [] : [{name}])")
                })
                .collect();
            if items.is_empty() { "[]".to_owned() } else { items.join(" + ") }
        });
        parts
            .variable("nativeAdded", containers(Group::Native))
            .variable("initAdded", containers(Group::Init))
            .variable("regularAdded", containers(Group::Regular))
            .variable("volumesAdded", format!("variables.sel.map(n, {volumes}[n]).flatten()"))
            .variable("secretsAll", format!("variables.sel.map(n, {secrets}[n]).flatten()"))
            .variable(
                "secretNames",
                "variables.secretsAll.map(s, s.name).filter(x, !(x in variables.podPullSecrets)).distinct()",
            )
            .variable("labelPairs", pairs("labels"))
            .variable("annotationPairs", pairs("annotations"))
            .variable("statusContainers", format!("variables.sel.map(n, {status_containers}[n]).flatten()"))
    }

    /// The one mutation: the denial mark, or every change.
    fn mutation(&self) -> String {
        let a = &self.annotations;
        let mark = format!(
            "[JSONPatch{{op: \"add\", path: \"/metadata/annotations/{}\", value: variables.denial}}]",
            cel::pointer_token(DENIAL_ANNOTATION)
        );
        // `add …/-` needs the list: it is created first when the pod has none.
        let append = |key: &str, list: &str| -> String {
            format!(
                "((!has(object.spec.{key}) && size({list}) > 0) ? [JSONPatch{{op: \"add\", path: \"/spec/{key}\", value: []}}] : []) + {list}.map(c, JSONPatch{{op: \"add\", path: \"/spec/{key}/-\", value: c}})"
            )
        };
        let native_ops = match self.settings.native_sidecar_placement {
            NativePlacement::First => "variables.nativeAdded.transformList(k, c, JSONPatch{op: \"add\", path: \"/spec/initContainers/\" + string(k), value: c})".to_owned(),
            NativePlacement::Last => {
                "variables.nativeAdded.map(c, JSONPatch{op: \"add\", path: \"/spec/initContainers/-\", value: c})".to_owned()
            }
        };
        let inits = format!(
            "((!has(object.spec.initContainers) && size(variables.initAdded) + size(variables.nativeAdded) > 0) ? [JSONPatch{{op: \"add\", path: \"/spec/initContainers\", value: []}}] : []) + variables.initAdded.map(c, JSONPatch{{op: \"add\", path: \"/spec/initContainers/-\", value: c}}) + {native_ops}"
        );
        let regular = append("containers", "variables.regularAdded");
        let volumes = append("volumes", "variables.volumesAdded");
        let secrets =
            append("imagePullSecrets", "variables.secretNames.map(x, variables.secretsAll.filter(s, s.name == x)[0])");
        let metadata = [("annotations", "variables.annotationPairs"), ("labels", "variables.labelPairs")]
            .map(|(field, pairs)| self.metadata_ops(field, pairs))
            .join(" + ");
        let quoted = |list: &str| format!("{list}.map(n, \"\\\"\" + n + \"\\\"\").join(\",\")");
        let status = format!(
            "{} + {} + {} + {} + {}",
            cel::string("{\"sidecars\":["),
            quoted("variables.sel"),
            cel::string("],\"containers\":["),
            quoted("variables.statusContainers"),
            cel::string("]}")
        );
        let status_op = format!(
            "[JSONPatch{{op: \"add\", path: \"/metadata/annotations/{}\", value: {status}}}]",
            cel::pointer_token(&a.status)
        );
        format!(
            "variables.denial != \"\" ? {mark} : (size(variables.sel) == 0 ? [] : ({regular} + {inits} + {volumes} + {secrets} + {metadata} + {status_op}))"
        )
    }

    /// A container as added: as in the catalog, with the annotations' env vars when there are any.
    fn container_value(&self, container: &Value) -> String {
        // kubelet expands `$(VAR)`: with literal values every `$` is doubled, as the webhook does.
        let value = if self.settings.literal_env_values { "v[2].replace(\"$\", \"$$\")" } else { "v[2]" };
        cel::container_with_env(container, "variables.env", "v", "v[1]", value)
    }

    /// The catalog's labels or annotations of the selected sidecars (`pairs`, in order): the first
    /// wins over the later ones and the pod's own win, unless `overridePodMetadata`, when the last wins.
    fn metadata_ops(&self, field: &str, pairs: &str) -> String {
        let (keys, value) = if self.settings.override_pod_metadata {
            (format!("{pairs}.map(p, p[0]).distinct()"), format!("{pairs}.filter(p, p[0] == k).reverse()[0][1]"))
        } else {
            (
                format!(
                    "{pairs}.map(p, p[0]).distinct().filter(k, !has(object.metadata.{field}) || !(k in object.metadata.{field}))"
                ),
                format!("{pairs}.filter(p, p[0] == k)[0][1]"),
            )
        };
        format!(
            "((!has(object.metadata.{field}) && size({keys}) > 0) ? [JSONPatch{{op: \"add\", path: \"/metadata/{field}\", value: {{}}}}] : []) + {keys}.map(k, JSONPatch{{op: \"add\", path: \"/metadata/{field}/\" + jsonpatch.escapeKey(k), value: {value}}})"
        )
    }
}

/// Which of a sidecar's containers: native sidecars (placed among the init containers), its init
/// containers, or its regular containers.
#[derive(Clone, Copy, Debug)]
enum Group {
    Native,
    Init,
    Regular,
}

impl Group {
    /// The entry's containers of this group, as they are added.
    fn members(self, entry: &SidecarEntry) -> Vec<Value> {
        match self {
            Self::Native if entry.native_sidecar => entry
                .containers
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c["restartPolicy"] = Value::String("Always".to_owned());
                    c
                })
                .collect(),
            Self::Regular if !entry.native_sidecar => entry.containers.clone(),
            Self::Init => entry.init_containers.clone(),
            Self::Native | Self::Regular => Vec::new(),
        }
    }
}

/// The built-in deny-list as a CEL list of [pattern, regex, reason].
fn builtin() -> String {
    let items: Vec<String> = DENIED
        .iter()
        .map(|(pattern, reason)| {
            let regex = cel::glob_regex(pattern, true).unwrap_or_default();
            format!("[{}, {}, {}]", cel::string(pattern), cel::string(&regex), cel::string(reason))
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// A list of glob patterns as a CEL list of regular expressions.
fn regexes(patterns: &[String], ignore_case: bool) -> String {
    let items: Vec<String> = patterns.iter().map(|p| cel::glob_regex(p, ignore_case).unwrap_or_default()).collect();
    cel::strings(&items)
}

/// One container's env rules, each with whose they are ("the configuration's" or "the catalog
/// entry's"), as the webhook's messages name them.
struct Rules {
    allow: (Vec<String>, &'static str),
    deny: Vec<(Vec<String>, &'static str)>,
    exempt: Vec<String>,
    locked: (Vec<String>, &'static str),
    max_vars: (usize, &'static str),
    max_value_bytes: (usize, &'static str),
}

impl Rules {
    fn of(global: &AnnotationEnv, entry: Option<&SidecarEnvRules>) -> Self {
        const CONFIG: &str = "the configuration's";
        const ENTRY: &str = "the catalog entry's";
        let pick = |own: Option<Vec<String>>, global: &[String]| -> (Vec<String>, &'static str) {
            own.map_or_else(|| (global.to_vec(), CONFIG), |own| (own, ENTRY))
        };
        let mut deny = vec![(global.deny.texts().to_vec(), CONFIG)];
        if let Some(own) = entry.and_then(|e| e.deny.as_ref()) {
            deny.push((own.texts().to_vec(), ENTRY));
        }
        Self {
            allow: pick(entry.and_then(|e| e.allow.as_ref()).map(|p| p.texts().to_vec()), global.allow.texts()),
            deny,
            exempt: entry
                .and_then(|e| e.exempt.as_ref())
                .map_or_else(|| global.exempt.texts().to_vec(), |p| p.texts().to_vec()),
            locked: pick(entry.and_then(|e| e.locked.as_ref()).map(|p| p.texts().to_vec()), global.locked.texts()),
            max_vars: entry.and_then(|e| e.max_vars).map_or((global.max_vars, CONFIG), |v| (v, ENTRY)),
            max_value_bytes: entry
                .and_then(|e| e.max_value_bytes)
                .map_or((global.max_value_bytes, CONFIG), |v| (v, ENTRY)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use admission_kit::policy::{PolicyOptions, render_policies};
    use serde_json::{Value, json};

    use crate::catalog::CatalogStore;
    use crate::config::Config;

    fn render(overrides: &[(&str, Value)]) -> Result<Vec<Value>, String> {
        let overrides: Vec<(String, Value)> = overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let config = Config::load(None, &overrides).map_err(|e| e.to_string())?;
        let store = CatalogStore::load(crate::plugin::sources(&config)).map_err(|e| e.to_string())?;
        let pipeline = crate::pipeline(&config, Arc::new(store), None).map_err(|e| e.to_string())?;
        render_policies(&[pipeline], &PolicyOptions::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_default_configuration_renders_a_mutating_and_a_validating_policy_with_bindings() {
        let objects = render(&[]).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        assert_eq!(
            kinds,
            [
                "MutatingAdmissionPolicy",
                "MutatingAdmissionPolicyBinding",
                "ValidatingAdmissionPolicy",
                "ValidatingAdmissionPolicyBinding"
            ]
        );
        let text = objects[0].to_string();
        assert!(text.contains("haystack-agent"), "the catalog is in the policy");
        assert!(text.contains("kubernetes-sidecar-injector"), "the namespace label is its selector");
    }

    #[test]
    fn every_setting_a_policy_cannot_honour_is_named() {
        let error = render(&[
            ("namespaceCatalogs", json!(true)),
            ("unknownSidecar", json!("warn")),
            ("onCollision", json!("skip")),
            ("annotationEnv", json!({"onViolation": "skip"})),
        ])
        .err()
        .unwrap_or_else(|| panic!("rendered"));
        for setting in ["namespaceCatalogs", "unknownSidecar: warn", "onCollision: skip", "onViolation: skip"] {
            assert!(error.contains(setting), "{setting} missing from: {error}");
        }
        assert!(error.contains("step `sidecars`"), "{error}");
    }
}
