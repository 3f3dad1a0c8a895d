//! Patch by diff: how a mutated object becomes an RFC 6902 JSON patch.
//!
//! Implements the `patch`/`patchType: JSONPatch` contract of
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#response>.
//!
//! Typed mutators work on a k8s-openapi struct decoded from the raw JSON. That decode drops what the
//! struct does not model (fields newer than the k8s-openapi release, `null`s), so diffing the raw JSON
//! against the re-encoded struct would delete them. Instead the change is measured between the
//! decoded object *before* and *after* the mutator ran, and only that change is carried onto the raw
//! JSON ([`carry_changes`]). The final patch is then `json_patch::diff(raw, result)`: it only touches
//! what the mutator changed, escapes `~` and `/` in keys, and never replaces a whole map or array to
//! add one entry.

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
            let mut out: Vec<Value> = Vec::with_capacity(after.len());
            for (i, new) in after.iter().enumerate() {
                match (raw.get(i), before.get(i)) {
                    (Some(r), Some(b)) => out.push(carry_changes(r, b, new)),
                    _ => out.push(new.clone()),
                }
            }
            Value::Array(out)
        }
        // A scalar changed, or the shape changed: the mutator's value wins.
        _ => after.clone(),
    }
}

fn carry_object(raw: &Map<String, Value>, before: &Map<String, Value>, after: &Map<String, Value>) -> Map<String, Value> {
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

/// The RFC 6902 patch that turns `original` into `mutated`.
#[must_use]
pub fn diff(original: &Value, mutated: &Value) -> json_patch::Patch {
    json_patch::diff(original, mutated)
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

    #[test]
    fn diff_escapes_pointer_tokens_and_adds_single_keys() {
        let original = json!({"metadata": {"annotations": {"keep": "1"}}});
        let mutated = json!({"metadata": {"annotations": {"keep": "1", "a.io/b~c": "v"}}});
        let patch = serde_json::to_value(diff(&original, &mutated)).unwrap();
        assert_eq!(patch, json!([{"op": "add", "path": "/metadata/annotations/a.io~1b~0c", "value": "v"}]));
    }
}
