//! Property tests of the patch-by-diff contract (run with `--all-features`).
//!
//! Generated Pod-like objects carry what real objects carry and typed structs drop or mishandle:
//! annotation and label keys with `/` and `~` (JSON pointer escapes), missing versus empty maps and
//! arrays, and fields k8s-openapi does not model (`future*`). Generated mutations are the ones
//! webhooks make: add annotations and labels, append containers, init containers and volumes,
//! change an image, remove an annotation.
//!
//! Every patch is applied with `admission_kit::testing::apply_patch`, written independently of the
//! `json-patch` crate that derives it.
#![cfg(feature = "testing")]

use std::collections::BTreeMap;

use admission_kit::mutator::object_at;
use admission_kit::patch::{carry_changes, diff};
use admission_kit::pipeline::ResourceTarget;
use admission_kit::prelude::*;
use admission_kit::testing::{Harness, apply_patch, review_json};
use k8s_openapi::api::core::v1::{Container, Pod};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use admission_kit::testing::check_property;
use admission_kit::testing::strategies::{maybe_unknown, tricky_key};

/// Object keys starting with this are fields k8s-openapi does not model.
const UNKNOWN_PREFIX: &str = "future";

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Annotations or labels: absent, empty (`{}`) or a few entries with tricky keys.
fn string_map() -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(tricky_key(), "[a-z0-9]{0,2}", 0..4))
}

prop_compose! {
    /// The generated parts of one container (or volume): an image and maybe an unknown field.
    fn element()(
        image in "[a-z]{1,2}:[0-9]",
        unknown in maybe_unknown(),
    ) -> (String, Option<Value>) {
        (image, unknown)
    }
}

/// `containers` (at least one), `initContainers` and `volumes` (absent, `[]` or some).
type Lists = (Vec<(String, Option<Value>)>, Option<Vec<(String, Option<Value>)>>, Option<Vec<(String, Option<Value>)>>);

fn lists() -> impl Strategy<Value = Lists> {
    (
        prop::collection::vec(element(), 1..3),
        prop::option::of(prop::collection::vec(element(), 0..2)),
        prop::option::of(prop::collection::vec(element(), 0..2)),
    )
}

prop_compose! {
    /// A Pod as raw JSON that decodes as a k8s-openapi `Pod`, with unknown fields at the top level,
    /// in `metadata`, in `spec` and in list elements.
    fn pod()(
        annotations in string_map(),
        labels in string_map(),
        (containers, init_containers, volumes) in lists(),
        unknown_top in maybe_unknown(),
        unknown_meta in maybe_unknown(),
        unknown_spec in maybe_unknown(),
    ) -> Value {
        let mut metadata = json!({"name": "p", "namespace": "ns"});
        set(&mut metadata, "annotations", annotations.map(|m| json!(m)));
        set(&mut metadata, "labels", labels.map(|m| json!(m)));
        set(&mut metadata, "futureMeta", unknown_meta);
        let mut spec = json!({"containers": list("c", containers)});
        set(&mut spec, "initContainers", init_containers.map(|l| list("i", l)));
        set(&mut spec, "volumes", volumes.map(|l| list("v", l)));
        set(&mut spec, "futureField", unknown_spec);
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata});
        pod["spec"] = spec;
        set(&mut pod, "futureTop", unknown_top);
        pod
    }
}

fn set(object: &mut Value, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        object[key] = value;
    }
}

/// Containers named `c0`, `c1`… (`prefix` `c` or `i`), or volumes `v0`, `v1`… (`prefix` `v`).
fn list(prefix: &str, elements: Vec<(String, Option<Value>)>) -> Value {
    let elements = elements.into_iter().enumerate().map(|(i, (image, unknown))| {
        let mut element = if prefix == "v" {
            json!({"name": format!("{prefix}{i}"), "emptyDir": {}})
        } else {
            json!({"name": format!("{prefix}{i}"), "image": image})
        };
        set(&mut element, "futureElementField", unknown);
        element
    });
    Value::Array(elements.collect())
}

/// A list of the pod spec that mutations append to.
#[derive(Clone, Copy, Debug)]
enum ListKind {
    Containers,
    InitContainers,
    Volumes,
}

impl ListKind {
    fn key(self) -> &'static str {
        match self {
            Self::Containers => "containers",
            Self::InitContainers => "initContainers",
            Self::Volumes => "volumes",
        }
    }

    fn new_element(self, name: &str) -> Value {
        match self {
            Self::Volumes => json!({"name": name, "emptyDir": {}}),
            Self::Containers | Self::InitContainers => json!({"name": name, "image": "side:1"}),
        }
    }
}

/// A change a webhook makes.
#[derive(Clone, Debug)]
enum Mutation {
    /// Sets an annotation (creating `metadata.annotations` when absent).
    Annotate(String, String),
    /// Sets a label (creating `metadata.labels` when absent).
    Label(String, String),
    /// Appends an element (creating the list when absent).
    Append(ListKind, String),
    /// Changes the image of an existing container (nothing when there is none).
    SetImage(Index, String),
    /// Removes an existing annotation (nothing when there is none).
    RemoveAnnotation(Index),
    /// Inserts an element at the front of a list: shifts the indices of the existing elements.
    Prepend(ListKind, String),
    /// Removes an existing element of a list: shifts the indices of the elements after it.
    RemoveElement(ListKind, Index),
}

fn list_kind() -> impl Strategy<Value = ListKind> {
    prop_oneof![Just(ListKind::Containers), Just(ListKind::InitContainers), Just(ListKind::Volumes)]
}

/// The mutations the properties require: none of them moves an existing list element.
fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (tricky_key(), "[a-z]{0,2}").prop_map(|(k, v)| Mutation::Annotate(k, v)),
        (tricky_key(), "[a-z]{0,2}").prop_map(|(k, v)| Mutation::Label(k, v)),
        (list_kind(), "s[0-9]").prop_map(|(l, n)| Mutation::Append(l, n)),
        (any::<Index>(), "[a-z]{1,2}:[0-9]").prop_map(|(i, image)| Mutation::SetImage(i, image)),
        any::<Index>().prop_map(Mutation::RemoveAnnotation),
    ]
}

/// A few mutations, applied in order.
fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 0..4)
}

/// Also mutations that shift existing list elements (prepend, remove from the middle).
fn shifting_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        mutation(),
        (list_kind(), "s[0-9]").prop_map(|(l, n)| Mutation::Prepend(l, n)),
        (list_kind(), any::<Index>()).prop_map(|(l, i)| Mutation::RemoveElement(l, i)),
    ]
}

/// The array at `spec[list]`, created when absent.
fn list_at(pod: &mut Value, list: ListKind) -> &mut Vec<Value> {
    let spec = object_at(pod, "spec");
    spec.entry(list.key()).or_insert_with(|| json!([])).as_array_mut().expect("generated lists are arrays")
}

/// Applies `mutation` to a Pod-like object, as a webhook working on the JSON would.
fn apply(pod: &mut Value, mutation: &Mutation) {
    match mutation {
        Mutation::Annotate(k, v) => {
            object_at(&mut pod["metadata"], "annotations").insert(k.clone(), json!(v));
        }
        Mutation::Label(k, v) => {
            object_at(&mut pod["metadata"], "labels").insert(k.clone(), json!(v));
        }
        Mutation::Append(list, name) => list_at(pod, *list).push(list.new_element(name)),
        Mutation::SetImage(i, image) => {
            let containers = list_at(pod, ListKind::Containers);
            if !containers.is_empty() {
                let i = i.index(containers.len());
                containers[i]["image"] = json!(image);
            }
        }
        Mutation::RemoveAnnotation(i) => {
            if let Some(annotations) = pod["metadata"].get_mut("annotations").and_then(Value::as_object_mut)
                && !annotations.is_empty()
            {
                let key = annotations.keys().nth(i.index(annotations.len())).cloned().expect("index is in range");
                annotations.remove(&key);
            }
        }
        Mutation::Prepend(list, name) => list_at(pod, *list).insert(0, list.new_element(name)),
        Mutation::RemoveElement(list, i) => {
            let elements = list_at(pod, *list);
            if !elements.is_empty() {
                elements.remove(i.index(elements.len()));
            }
        }
    }
}

fn mutated(pod: &Value, mutations: &[Mutation]) -> Value {
    let mut out = pod.clone();
    for m in mutations {
        apply(&mut out, m);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// Every unknown field of `value`, as (JSON pointer, value); not searched inside unknown fields.
fn unknown_fields(value: &Value) -> Vec<(String, Value)> {
    fn walk(value: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = format!("{path}/{}", escape(k));
                    if k.starts_with(UNKNOWN_PREFIX) {
                        out.push((p, v.clone()));
                    } else {
                        walk(v, &p, out);
                    }
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, &format!("{path}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out
}

/// `value` as a typed struct sees it: without the unknown fields.
fn strip_unknown(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with(UNKNOWN_PREFIX))
                .map(|(k, v)| (k.clone(), strip_unknown(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_unknown).collect()),
        other => other.clone(),
    }
}

/// Applies `patch` to `document` with the independent implementation.
fn applied(document: &Value, patch: &json_patch::Patch) -> Value {
    let patch = serde_json::to_value(patch).expect("a patch encodes");
    apply_patch(document, &patch).unwrap_or_else(|e| panic!("the patch does not apply: {e}\npatch: {patch}"))
}

/// Fails when an `add` or `replace` overwrites a whole map or array that `original` already has
/// (the Expedia fault: adding `/metadata/annotations` as a map wiped the existing annotations). An
/// `add` into an array inserts rather than overwrites, so it is not counted.
fn no_whole_container_overwritten(original: &Value, patch: &json_patch::Patch) -> Result<(), TestCaseError> {
    let ops = serde_json::to_value(patch).expect("a patch encodes");
    for op in ops.as_array().expect("a patch is an array") {
        let (name, pointer) = (op["op"].as_str().unwrap_or_default(), op["path"].as_str().unwrap_or_default());
        let inserts_into_array = name == "add"
            && pointer.rfind('/').and_then(|i| original.pointer(&pointer[..i])).is_some_and(Value::is_array);
        let overwrites = name == "replace" || (name == "add" && !inserts_into_array);
        let existing = original.pointer(pointer).filter(|v| v.is_object() || v.is_array());
        prop_assert!(
            !(overwrites && existing.is_some()),
            "{op} overwrites the existing {}",
            existing.map(Value::to_string).unwrap_or_default()
        );
    }
    Ok(())
}

/// Fails unless every unknown field of `original` is in `result` at the same place with the same
/// value, except those whose parent is gone from `expected_shape`.
fn unknown_fields_kept(original: &Value, result: &Value, expected_shape: &Value) -> Result<(), TestCaseError> {
    for (path, value) in unknown_fields(original) {
        let parent = &path[..path.rfind('/').expect("pointers start with /")];
        if expected_shape.pointer(parent).is_some() {
            prop_assert_eq!(result.pointer(&path), Some(&value), "unknown field {} changed or lost", path);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Property 1: `diff(original, mutated)` applied by an independent implementation gives `mutated`,
/// and never overwrites a whole existing map or array to add an entry.
#[test]
fn diff_applies_and_adds_entries_not_containers() {
    check_property((pod(), mutations()), |(pod, mutations)| {
        let mutated = mutated(&pod, &mutations);
        let patch = diff(&pod, &mutated);
        prop_assert_eq!(applied(&pod, &patch), mutated.clone(), "patch: {:?}", patch);
        no_whole_container_overwritten(&pod, &patch)?;
        prop_assert_eq!(patch.0.is_empty(), pod == mutated);
        Ok(())
    });
}

/// Property 2: `carry_changes` carries a typed change onto the raw object: every unknown field
/// stays, the result is exactly the mutation applied to the raw object, and its diff applies.
#[test]
fn carry_changes_keeps_unknown_fields() {
    check_property((pod(), mutations()), |(raw, mutations)| {
        let before = strip_unknown(&raw);
        let after = mutated(&before, &mutations);
        let result = carry_changes(&raw, &before, &after);
        unknown_fields_kept(&raw, &result, &after)?;
        prop_assert_eq!(&strip_unknown(&result), &after, "the change was not carried exactly");
        prop_assert_eq!(&result, &mutated(&raw, &mutations), "not the mutation applied to raw");
        let patch = diff(&raw, &result);
        prop_assert_eq!(applied(&raw, &patch), result, "patch: {:?}", patch);
        no_whole_container_overwritten(&raw, &patch)?;
        Ok(())
    });
}

/// Property 2b: as property 2, with mutations that shift list elements (insert at the front,
/// remove from the middle): an element's unknown fields must stay with that element.
#[test]
fn carry_changes_keeps_unknown_fields_when_lists_shift() {
    let mutations = prop::collection::vec(shifting_mutation(), 0..4);
    check_property((pod(), mutations), |(raw, mutations)| {
        let before = strip_unknown(&raw);
        let after = mutated(&before, &mutations);
        let result = carry_changes(&raw, &before, &after);
        prop_assert_eq!(&result, &mutated(&raw, &mutations), "not the mutation applied to raw");
        Ok(())
    });
}

const SEEN: &str = "props.example.com/seen";
const SIDECAR: &str = "props-sidecar";
const SIDECAR_IMAGE: &str = "props/sidecar:1";

/// Labels the pod as seen and appends a sidecar unless it has one (idempotent).
struct SeenAndSidecar;

#[async_trait]
impl Mutator<Pod> for SeenAndSidecar {
    async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
        pod.metadata.labels.get_or_insert_default().insert(SEEN.to_owned(), "true".to_owned());
        let spec = pod.spec.get_or_insert_default();
        if !spec.containers.iter().any(|c| c.name == SIDECAR) {
            spec.containers.push(Container {
                name: SIDECAR.to_owned(),
                image: Some(SIDECAR_IMAGE.to_owned()),
                ..Container::default()
            });
        }
        Ok(())
    }
}

/// What `SeenAndSidecar` should do to the raw JSON.
fn seen_and_sidecar(pod: &Value) -> Value {
    let mut out = pod.clone();
    apply(&mut out, &Mutation::Label(SEEN.to_owned(), "true".to_owned()));
    let containers = list_at(&mut out, ListKind::Containers);
    if !containers.iter().any(|c| c["name"] == SIDECAR) {
        containers.push(json!({"name": SIDECAR, "image": SIDECAR_IMAGE}));
    }
    out
}

prop_compose! {
    /// A pod for the pipeline: sometimes already labelled, sometimes already with the sidecar
    /// (which then may have an unknown field of its own).
    fn pipeline_pod()(
        mut pod in pod(),
        labelled in any::<bool>(),
        sidecar in prop::option::of(maybe_unknown()),
    ) -> Value {
        if labelled {
            apply(&mut pod, &Mutation::Label(SEEN.to_owned(), "true".to_owned()));
        }
        if let Some(unknown) = sidecar {
            let mut container = json!({"name": SIDECAR, "image": SIDECAR_IMAGE});
            set(&mut container, "futureElementField", unknown);
            list_at(&mut pod, ListKind::Containers).push(container);
        }
        pod
    }
}

/// Property 3: a whole pipeline with a typed mutator. The harness's invariants hold (the patch
/// applies and gives the pipeline's result, a second run changes nothing, nothing is lost), every
/// unknown field survives, the result is exactly the mutation applied to the raw JSON, and an
/// object that needs nothing gets no patch.
#[test]
fn pipeline_with_a_typed_mutator_keeps_unknown_fields() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let pipeline = Pipeline::builder("props.example.com")
        .step(Step::new("m", SeenAndSidecar))
        .build()
        .expect("the pipeline builds");
    let harness = Harness::new(pipeline);
    let target = ResourceTarget::of::<Pod>();
    check_property(pipeline_pod(), |pod| {
        let review = review_json(pod.clone(), &target).build();
        let checked = runtime.block_on(harness.try_check(&review))?;
        prop_assert!(checked.answer().allowed, "denied: {}", checked.answer().message);
        let expected = seen_and_sidecar(&pod);
        unknown_fields_kept(&pod, checked.patched(), &expected)?;
        prop_assert_eq!(checked.patched(), &expected);
        let patch = &checked.answer().patch;
        prop_assert_eq!(checked.answer().is_patched(), pod != expected, "patch: {:?}", patch);
        if let Some(patch) = patch {
            no_whole_container_overwritten(&pod, patch)?;
        }
        Ok(())
    });
}
