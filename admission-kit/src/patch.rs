//! Patch by diff: how a mutated object becomes an RFC 6902 JSON patch.
//!
//! Implements the `patch`/`patchType: JSONPatch` contract of
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#response>.
//!
//! Typed mutators work on a k8s-openapi struct decoded from the raw JSON. That decode drops what the
//! struct does not model (fields newer than the k8s-openapi release, `null`s), so diffing the raw JSON
//! against the re-encoded struct would delete them. Instead the change is measured between the
//! decoded object *before* and *after* the mutator ran, and only that change is carried onto the raw
//! JSON ([`carry_changes`]). The final patch is then [`diff`]`(raw, result)`, which skips unchanged
//! subtrees, follows list items by their merge key (so an insertion is one `add`, and an audit log
//! never shows an existing container "renamed"), escapes `~` and `/` in keys, and never replaces a
//! whole map or array to add one entry.

use std::collections::HashMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation};
use serde_json::{Map, Value};

/// Carries the change from `before` to `after` onto `raw`.
///
/// `before` is `raw` as the typed struct saw it (a lossy copy: same arrays, a subset of the object
/// keys). The result keeps everything of `raw` that the change did not touch, including keys that
/// `before` lacks, inside objects that the mutator did modify.
#[must_use]
pub fn carry_changes(raw: &Value, before: &Value, after: &Value) -> Value {
    if before == after {
        return raw.clone();
    }
    match (raw, before, after) {
        (Value::Object(raw), Value::Object(before), Value::Object(after)) => {
            Value::Object(carry_object(raw, before, after))
        }
        (Value::Array(raw), Value::Array(before), Value::Array(after)) if raw.len() == before.len() => {
            Value::Array(carry_array(raw, before, after))
        }
        // A scalar changed, or the shape changed: the mutator's value wins.
        _ => after.clone(),
    }
}

/// Keys Kubernetes uses to identify list items (`patchMergeKey`s of core types), tried in order.
const MERGE_KEYS: [&str; 4] = ["mountPath", "devicePath", "name", "containerPort"];

/// The first merge key `item` has, with its value.
pub(crate) fn merge_key(item: &Value) -> Option<(&'static str, &Value)> {
    let object = item.as_object()?;
    MERGE_KEYS.iter().find_map(|k| object.get(*k).map(|v| (*k, v)))
}

/// Carries a list change onto the raw list. Each item of `after` is traced back to the item of
/// `before` it came from — the same value (unchanged, maybe moved), else the same merge key
/// (`name`, …), else the same position when the list kept its length — and then carries that raw
/// item's unknown fields. Items with no origin are new. Matching by position alone would move
/// unknown fields onto the wrong item when a mutator inserts at the front or removes from the middle.
///
/// Candidates are found through hash indexes (content fingerprints, merge-key values), never by
/// searching the list, so the cost stays linear in the list's length: lists are request input.
fn carry_array(raw: &[Value], before: &[Value], after: &[Value]) -> Vec<Value> {
    let mut origin: Vec<Option<usize>> = vec![None; after.len()];
    let mut used = vec![false; before.len()];
    // Unchanged items, preferring the same position, else the first unused equal item.
    let mut by_value: Option<Candidates> = None;
    for (i, item) in after.iter().enumerate() {
        let j = if before.get(i) == Some(item) && !used[i] {
            Some(i)
        } else {
            let index = by_value
                .get_or_insert_with(|| Candidates::new(before.iter().enumerate().map(|(j, b)| (fingerprint(b), j))));
            index.take(fingerprint(item), &used, |j| &before[j] == item)
        };
        if let Some(j) = j {
            origin[i] = Some(j);
            used[j] = true;
        }
    }
    // Changed items, by merge key: the first unused item of `before` with the same value there.
    let mut by_key: Option<Candidates> = None;
    for (i, item) in after.iter().enumerate() {
        if origin[i].is_some() {
            continue;
        }
        let Some((key, value)) = merge_key(item) else { continue };
        let index = by_key.get_or_insert_with(|| {
            Candidates::new(
                before
                    .iter()
                    .enumerate()
                    .flat_map(|(j, b)| MERGE_KEYS.iter().filter_map(move |k| b.get(*k).map(|v| (key_print(k, v), j)))),
            )
        });
        if let Some(j) = index.take(key_print(key, value), &used, |j| before[j].get(key) == Some(value)) {
            origin[i] = Some(j);
            used[j] = true;
        }
    }
    // Changed unnamed items of a list that kept its length, by position.
    if before.len() == after.len() {
        for i in 0..after.len() {
            if origin[i].is_none() && !used[i] && merge_key(&before[i]).is_none() {
                origin[i] = Some(i);
                used[i] = true;
            }
        }
    }
    after
        .iter()
        .zip(origin)
        .map(|(item, origin)| match origin {
            Some(j) => carry_changes(&raw[j], &before[j], item),
            None => item.clone(),
        })
        .collect()
}

/// The fingerprint of a merge key and its value.
fn key_print(key: &str, value: &Value) -> u64 {
    fingerprint(&Value::Array(vec![Value::from(key), value.clone()]))
}

/// Positions of a list's items by a hash, each bucket in list order with a cursor past the used
/// ones at its front, so that taking the first unused match costs amortised constant time.
struct Candidates {
    buckets: HashMap<u64, (usize, Vec<usize>)>,
}

impl Candidates {
    fn new(items: impl Iterator<Item = (u64, usize)>) -> Self {
        let mut buckets: HashMap<u64, (usize, Vec<usize>)> = HashMap::new();
        for (hash, j) in items {
            buckets.entry(hash).or_default().1.push(j);
        }
        Self { buckets }
    }

    /// The first unused position under `hash` for which `matches` holds (it tells a real match
    /// from a hash collision).
    fn take(&mut self, hash: u64, used: &[bool], matches: impl Fn(usize) -> bool) -> Option<usize> {
        let (cursor, positions) = self.buckets.get_mut(&hash)?;
        while positions.get(*cursor).is_some_and(|&j| used[j]) {
            *cursor += 1;
        }
        positions[*cursor..].iter().copied().find(|&j| !used[j] && matches(j))
    }
}

/// A hash of a JSON value's content (object keys in order, which `serde_json`'s maps keep sorted),
/// with foldhash (a fast, well-mixed non-cryptographic hash; `SipHash` took twice as long).
pub(crate) fn fingerprint(value: &Value) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    fn walk(value: &Value, h: &mut impl std::hash::Hasher) {
        match value {
            Value::Null => h.write_u8(0),
            Value::Bool(b) => (1u8, b).hash(h),
            Value::Number(n) => (2u8, n.as_i64(), n.as_u64(), n.as_f64().map(f64::to_bits)).hash(h),
            Value::String(s) => (3u8, s).hash(h),
            Value::Array(items) => {
                (4u8, items.len()).hash(h);
                for item in items {
                    walk(item, h);
                }
            }
            Value::Object(map) => {
                (5u8, map.len()).hash(h);
                for (key, item) in map {
                    key.hash(h);
                    walk(item, h);
                }
            }
        }
    }
    let mut h = foldhash::quality::FixedState::with_seed(0x5eed).build_hasher();
    walk(value, &mut h);
    h.finish()
}

fn carry_object(
    raw: &Map<String, Value>,
    before: &Map<String, Value>,
    after: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, raw_value) in raw {
        match (before.get(key), after.get(key)) {
            // Not modelled by the typed struct: untouched.
            (None, None) => {
                out.insert(key.clone(), raw_value.clone());
            }
            // Removed by the mutator.
            (Some(_), None) => {}
            (Some(b), Some(a)) => {
                out.insert(key.clone(), carry_changes(raw_value, b, a));
            }
            // The struct did not model the raw key but the mutator set it (e.g. raw `null` dropped by
            // the decode, then a value assigned): the mutator's value wins.
            (None, Some(a)) => {
                out.insert(key.clone(), a.clone());
            }
        }
    }
    for (key, a) in after {
        if !raw.contains_key(key) && before.get(key) != Some(a) {
            out.insert(key.clone(), a.clone());
        }
    }
    out
}

/// The RFC 6902 patch that turns `original` into `mutated`, touching only what changed.
///
/// Objects are compared key by key. Lists whose items all carry the same merge key (`name` for
/// containers, init containers, volumes, env and pull secrets, `mountPath` for volume mounts, and
/// `devicePath`, `containerPort`), unique on each side, are followed item by item through that
/// key: inserting a sidecar before 1,000 init containers is one `add`, and an item whose fields changed is patched
/// in place, wherever it moved. Other lists (scalars, unnamed items, repeated keys, reordered items)
/// are compared by position. Equal subtrees are skipped with `==`, never walked; the scalars and
/// changed types left are handed to `json_patch::diff` (a replacement), its paths prefixed.
#[must_use]
pub fn diff(original: &Value, mutated: &Value) -> json_patch::Patch {
    let mut patch = json_patch::Patch(Vec::new());
    if original != mutated {
        diff_changed(original, mutated, &mut PointerBuf::new(), &mut patch);
    }
    patch
}

fn diff_changed(left: &Value, right: &Value, at: &mut PointerBuf, patch: &mut json_patch::Patch) {
    match (left, right) {
        // Each key of `right` in order (recursing where both have it, adding where only `right`
        // has it), then removals in `left`'s order.
        (Value::Object(l), Value::Object(r)) => {
            for (key, r_value) in r {
                match l.get(key) {
                    Some(l_value) if l_value == r_value => {}
                    Some(l_value) => {
                        at.push_back(key.as_str());
                        diff_changed(l_value, r_value, at, patch);
                        at.pop_back();
                    }
                    None => {
                        patch
                            .0
                            .push(PatchOperation::Add(AddOperation { path: child(at, key), value: r_value.clone() }));
                    }
                }
            }
            for key in l.keys().filter(|k| !r.contains_key(*k)) {
                patch.0.push(PatchOperation::Remove(RemoveOperation { path: child(at, key) }));
            }
        }
        (Value::Array(l), Value::Array(r)) => {
            if let Some(keyed) = KeyedLists::of(l, r) {
                keyed.diff(l, r, at, patch);
            } else {
                diff_by_position(l, r, at, patch);
            }
        }
        // Scalars and changed types: `json_patch::diff` itself (a replacement).
        _ if left == right => {}
        _ => delegate(left, right, at, patch),
    }
}

/// Item by item at the same index, then additions at their index or removals all at the first
/// index past the shorter list (each removal shifts the rest down).
fn diff_by_position(l: &[Value], r: &[Value], at: &mut PointerBuf, patch: &mut json_patch::Patch) {
    for (index, (l_item, r_item)) in l.iter().zip(r).enumerate() {
        if l_item != r_item {
            at.push_back(index);
            diff_changed(l_item, r_item, at, patch);
            at.pop_back();
        }
    }
    for (index, item) in r.iter().enumerate().skip(l.len()) {
        patch.0.push(PatchOperation::Add(AddOperation { path: child(at, index), value: item.clone() }));
    }
    for _ in r.len()..l.len() {
        patch.0.push(PatchOperation::Remove(RemoveOperation { path: child(at, r.len()) }));
    }
}

/// A merge-key value as a hash key: strings and numbers (ports) are the keys Kubernetes uses.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum KeyValue<'a> {
    Text(&'a str),
    Number(String),
}

impl<'a> KeyValue<'a> {
    fn of(item: &'a Value, key: &str) -> Option<Self> {
        match merge_key(item)? {
            (k, Value::String(s)) if k == key => Some(Self::Text(s)),
            (k, Value::Number(n)) if k == key => Some(Self::Number(n.to_string())),
            _ => None,
        }
    }
}

/// Two lists that can be followed by merge key: where each item of the old list is, by key.
struct KeyedLists<'a> {
    key: &'static str,
    left: HashMap<KeyValue<'a>, usize>,
}

impl<'a> KeyedLists<'a> {
    /// `Some` when every item of both lists has the same merge key, unique on each side, and the
    /// items both lists keep are in the same order (a reorder is left to the positional diff,
    /// which is exact for it; `move` operations would be needed otherwise).
    fn of(l: &'a [Value], r: &'a [Value]) -> Option<Self> {
        let (key, _) = merge_key(l.first().or(r.first())?)?;
        let mut left = HashMap::with_capacity(l.len());
        for (j, item) in l.iter().enumerate() {
            if left.insert(KeyValue::of(item, key)?, j).is_some() {
                return None;
            }
        }
        let mut right = std::collections::HashSet::with_capacity(r.len());
        let mut last_kept = None;
        for item in r {
            let value = KeyValue::of(item, key)?;
            if let Some(&j) = left.get(&value) {
                if last_kept.is_some_and(|last| j < last) {
                    return None;
                }
                last_kept = Some(j);
            }
            if !right.insert(value) {
                return None;
            }
        }
        Some(Self { key, left })
    }

    /// Removes the items `r` lacks (from the back, so the indexes stay valid), then walks `r`:
    /// a kept item is at the walk's index (everything before it is already in place) and is
    /// patched there; a new item is added there.
    fn diff(&self, l: &[Value], r: &[Value], at: &mut PointerBuf, patch: &mut json_patch::Patch) {
        let kept: std::collections::HashSet<usize> =
            r.iter().filter_map(|item| KeyValue::of(item, self.key).and_then(|v| self.left.get(&v).copied())).collect();
        for j in (0..l.len()).rev().filter(|j| !kept.contains(j)) {
            patch.0.push(PatchOperation::Remove(RemoveOperation { path: child(at, j) }));
        }
        for (index, item) in r.iter().enumerate() {
            match KeyValue::of(item, self.key).and_then(|v| self.left.get(&v)) {
                Some(&j) if l[j] == *item => {}
                Some(&j) => {
                    at.push_back(index);
                    diff_changed(&l[j], item, at, patch);
                    at.pop_back();
                }
                None => patch.0.push(PatchOperation::Add(AddOperation { path: child(at, index), value: item.clone() })),
            }
        }
    }
}

fn child<'t>(at: &PointerBuf, token: impl Into<json_patch::jsonptr::Token<'t>>) -> PointerBuf {
    let mut path = at.clone();
    path.push_back(token);
    path
}

/// Appends `json_patch::diff(left, right)`'s operations, their paths under `at`.
fn delegate(left: &Value, right: &Value, at: &PointerBuf, patch: &mut json_patch::Patch) {
    for mut op in json_patch::diff(left, right).0 {
        let op_path = match &mut op {
            PatchOperation::Add(o) => &mut o.path,
            PatchOperation::Remove(o) => &mut o.path,
            PatchOperation::Replace(o) => &mut o.path,
            PatchOperation::Move(o) => &mut o.path,
            PatchOperation::Copy(o) => &mut o.path,
            PatchOperation::Test(o) => &mut o.path,
        };
        *op_path = at.concat(op_path);
        patch.0.push(op);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_change_next_to_them() {
        let raw = json!({"spec": {"containers": [{"name": "app", "futureField": {"x": 1}}], "futureSpec": true}});
        let before = json!({"spec": {"containers": [{"name": "app"}]}});
        let after = json!({"spec": {"containers": [{"name": "app", "image": "i"}, {"name": "sidecar"}]}});
        let result = carry_changes(&raw, &before, &after);
        assert_eq!(
            result,
            json!({"spec": {"containers": [{"name": "app", "futureField": {"x": 1}, "image": "i"}, {"name": "sidecar"}], "futureSpec": true}})
        );
    }

    #[test]
    fn unknown_fields_follow_their_item_when_a_list_shifts() {
        let raw = json!([{"name": "setup", "future": 1}, {"name": "b", "future": 2}, {"x": 1, "future": 3}]);
        let before = json!([{"name": "setup"}, {"name": "b"}, {"x": 1}]);
        let after = json!([{"name": "first"}, {"name": "setup"}, {"x": 1}]);
        assert_eq!(
            carry_changes(&raw, &before, &after),
            json!([{"name": "first"}, {"name": "setup", "future": 1}, {"x": 1, "future": 3}])
        );
        // A changed item keeps its unknown fields through its name, wherever it moved.
        let after = json!([{"name": "b", "image": "new"}, {"name": "setup"}]);
        assert_eq!(
            carry_changes(&raw, &before, &after),
            json!([{"name": "b", "future": 2, "image": "new"}, {"name": "setup", "future": 1}])
        );
        // Same length, unnamed and changed in place: matched by position.
        let (raw, before, after) = (json!([{"k": 1, "future": 0}]), json!([{"k": 1}]), json!([{"k": 2}]));
        assert_eq!(carry_changes(&raw, &before, &after), json!([{"k": 2, "future": 0}]));
    }

    #[test]
    fn volume_mounts_are_traced_by_mount_path_not_by_their_shared_volume_name() {
        let raw =
            json!([{"name": "cfg", "mountPath": "/a", "future": 1}, {"name": "cfg", "mountPath": "/b", "future": 2}]);
        let before = json!([{"name": "cfg", "mountPath": "/a"}, {"name": "cfg", "mountPath": "/b"}]);
        let after = json!([{"name": "cfg", "mountPath": "/b", "readOnly": true}]);
        assert_eq!(
            carry_changes(&raw, &before, &after),
            json!([{"name": "cfg", "mountPath": "/b", "future": 2, "readOnly": true}])
        );
    }

    #[test]
    fn a_default_the_struct_added_is_not_patched_in() {
        // k8s-openapi encodes `metadata: {}` even when the raw object had none.
        let raw = json!({"kind": "Pod"});
        let before = json!({"kind": "Pod", "metadata": {}});
        let after = json!({"kind": "Pod", "metadata": {"labels": {"a": "b"}}});
        assert_eq!(carry_changes(&raw, &before, &after), json!({"kind": "Pod", "metadata": {"labels": {"a": "b"}}}));
        assert_eq!(carry_changes(&raw, &before, &before), raw);
    }

    #[test]
    fn removals_and_null_replacements() {
        let raw = json!({"a": 1, "b": null, "c": [1, 2, 3]});
        let before = json!({"a": 1, "c": [1, 2, 3]});
        let after = json!({"b": "set", "c": [1, 2]});
        assert_eq!(carry_changes(&raw, &before, &after), json!({"b": "set", "c": [1, 2]}));
    }

    mod applies_and_stays_small {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use crate::testing::apply_patch;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                (-2i64..2).prop_map(Value::from),
                prop::sample::select(vec!["x", "y"]).prop_map(Value::from),
            ];
            // `name` and `mountPath` make some lists keyed lists (with repeated keys, missing keys
            // and reorders among them), so both list diffs and the choice between them are exercised.
            leaf.prop_recursive(4, 40, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop::sample::select(vec!["a", "b", "c/d", "e~f", "", "name", "mountPath"]),
                        inner,
                        0..4
                    )
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
                ]
            })
        }

        /// `right` made from `left` and `other`: child by child, kept, replaced, blended or dropped,
        /// so that the pair shares most of its structure as a mutated pod does.
        fn blend(left: &Value, other: &Value, choices: &mut impl Iterator<Item = u8>) -> Value {
            fn pick(choices: &mut impl Iterator<Item = u8>) -> u8 {
                choices.next().unwrap_or(0) % 4
            }
            match (left, other) {
                (Value::Object(l), Value::Object(o)) => {
                    let mut out = serde_json::Map::new();
                    for (k, v) in l {
                        match (pick(choices), o.get(k)) {
                            (0 | 1, _) => drop(out.insert(k.clone(), v.clone())),
                            (2, Some(ov)) => drop(out.insert(k.clone(), blend(v, ov, choices))),
                            (2, None) => {}
                            _ => drop(out.insert(k.clone(), o.get(k).unwrap_or(v).clone())),
                        }
                    }
                    for (k, v) in o {
                        if !l.contains_key(k) && pick(choices) < 2 {
                            out.insert(k.clone(), v.clone());
                        }
                    }
                    Value::Object(out)
                }
                (Value::Array(l), Value::Array(o)) => {
                    let len = if pick(choices) == 0 { o.len() } else { l.len() };
                    (0..len)
                        .filter_map(|i| match (l.get(i), o.get(i)) {
                            (Some(a), Some(b)) => {
                                Some(if pick(choices) < 2 { a.clone() } else { blend(a, b, choices) })
                            }
                            (a, b) => a.or(b).cloned(),
                        })
                        .collect()
                }
                _ if pick(choices) == 0 => other.clone(),
                _ => left.clone(),
            }
        }

        fn run<S: Strategy>(strategy: S, check: impl Fn(S::Value) -> Result<(), TestCaseError>) {
            let config = proptest::test_runner::Config { cases: 2000, failure_persistence: None, ..Default::default() };
            if let Err(e) = proptest::test_runner::TestRunner::new(config).run(&strategy, check) {
                panic!("{e}");
            }
        }

        /// The patch, applied by the crate's own RFC 6902 implementation (independent of the
        /// `json-patch` crate), gives exactly the mutated object.
        fn applies(left: &Value, right: &Value) -> Result<usize, TestCaseError> {
            let patch = super::super::diff(left, right);
            let ops = patch.0.len();
            let patch = serde_json::to_value(&patch).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let applied = apply_patch(left, &patch).map_err(|e| TestCaseError::fail(format!("{e}; patch {patch}")))?;
            prop_assert_eq!(applied, right.clone(), "patch {}", patch);
            Ok(ops)
        }

        #[test]
        fn the_patch_applies_and_gives_exactly_the_mutated_object() {
            let pairs = (value(), value(), prop::collection::vec(any::<u8>(), 64)).prop_map(|(l, o, c)| {
                let r = blend(&l, &o, &mut c.into_iter());
                (l, r)
            });
            run(pairs, |(left, right)| applies(&left, &right).map(drop));
        }

        /// A keyed list of `n` containers, `k` new ones inserted anywhere and `d` removed, some kept
        /// ones changed in place: at most one operation per insertion and removal, plus the
        /// changed fields.
        #[test]
        fn insertions_into_a_keyed_list_cost_one_operation_each() {
            let case = (0usize..40, prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..6))
                .prop_flat_map(|(n, inserts)| (Just(n), Just(inserts), prop::collection::vec(0u8..8, n)));
            run(case, |(n, inserts, fate)| {
                let original: Vec<Value> = (0..n).map(|i| json!({"name": format!("c{i}"), "image": "app:1"})).collect();
                // 0: removed, 1: image changed, else kept.
                let mut mutated: Vec<Value> = Vec::new();
                let (mut removed, mut changed) = (0, 0);
                for (item, fate) in original.iter().zip(&fate) {
                    match fate {
                        0 => removed += 1,
                        1 => {
                            changed += 1;
                            mutated.push(json!({"name": item["name"], "image": "app:2"}));
                        }
                        _ => mutated.push(item.clone()),
                    }
                }
                for (k, (at, native)) in inserts.iter().enumerate() {
                    let sidecar = json!({"name": format!("sidecar{k}"), "image": "s:1", "restartPolicy": if *native { "Always" } else { "Never" }});
                    let at = at.index(mutated.len() + 1);
                    mutated.insert(at, sidecar);
                }
                let left = json!({"spec": {"initContainers": original}});
                let right = json!({"spec": {"initContainers": mutated}});
                let ops = applies(&left, &right)?;
                prop_assert!(
                    ops <= inserts.len() + removed + changed,
                    "{ops} operations for {} insertions, {removed} removals and {changed} changes",
                    inserts.len()
                );
                Ok(())
            });
        }
    }

    #[test]
    fn a_native_sidecar_before_many_init_containers_is_one_add() {
        let init: Vec<Value> = (0..1000).map(|i| json!({"name": format!("init{i}"), "image": "i:1"})).collect();
        let original = json!({"spec": {"initContainers": init}});
        let mut mutated = original.clone();
        let sidecar = json!({"name": "proxy", "image": "p:1", "restartPolicy": "Always"});
        mutated["spec"]["initContainers"].as_array_mut().unwrap().insert(0, sidecar.clone());
        let patch = serde_json::to_value(diff(&original, &mutated)).unwrap();
        assert_eq!(patch, json!([{"op": "add", "path": "/spec/initContainers/0", "value": sidecar}]));
        // Volume mounts follow `mountPath`, env follows `name`; unkeyed lists stay positional.
        let original =
            json!({"mounts": [{"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/b"}], "args": ["x", "y"]});
        let mutated = json!({"mounts": [{"name": "w", "mountPath": "/0"}, {"name": "v", "mountPath": "/a"}, {"name": "v", "mountPath": "/b", "readOnly": true}], "args": ["w", "x", "y"]});
        let patch = serde_json::to_value(diff(&original, &mutated)).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "replace", "path": "/args/0", "value": "w"},
                {"op": "replace", "path": "/args/1", "value": "x"},
                {"op": "add", "path": "/args/2", "value": "y"},
                {"op": "add", "path": "/mounts/0", "value": {"name": "w", "mountPath": "/0"}},
                {"op": "add", "path": "/mounts/2/readOnly", "value": true},
            ])
        );
    }

    #[test]
    fn carrying_changes_through_a_long_list_is_linear() {
        // 20,000 volumes, one inserted at the front of a list where every item also changed:
        // every item is traced by its name through an index, not a search of the list.
        let before: Vec<Value> = (0..20_000).map(|i| json!({"name": format!("v{i}"), "emptyDir": {}})).collect();
        let raw: Vec<Value> = before.iter().map(|v| json!({"name": v["name"], "emptyDir": {}, "future": 1})).collect();
        let mut after: Vec<Value> =
            before.iter().map(|v| json!({"name": v["name"], "emptyDir": {"medium": "Memory"}})).collect();
        after.insert(0, json!({"name": "new"}));
        let started = std::time::Instant::now();
        let carried = carry_changes(&Value::Array(raw), &Value::Array(before), &Value::Array(after));
        let elapsed = started.elapsed();
        assert_eq!(carried[20_000], json!({"name": "v19999", "emptyDir": {"medium": "Memory"}, "future": 1}));
        // A search per item (the quadratic version) took over a minute in a debug build.
        assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}");
    }

    #[test]
    fn diff_escapes_pointer_tokens_and_adds_single_keys() {
        let original = json!({"metadata": {"annotations": {"keep": "1"}}});
        let mutated = json!({"metadata": {"annotations": {"keep": "1", "a.io/b~c": "v"}}});
        let patch = serde_json::to_value(diff(&original, &mutated)).unwrap();
        assert_eq!(patch, json!([{"op": "add", "path": "/metadata/annotations/a.io~1b~0c", "value": "v"}]));
    }
}
