//! The correctness gate, run before any timing: every server's answer to every corpus review,
//! its JSON patch applied with an implementation independent of both servers
//! ([`admission_kit::testing::apply_patch`]), must give the same pod, byte for byte in canonical
//! JSON (keys sorted), and that pod must really carry the injected sidecar with env from the
//! annotations. A benchmark of servers that do different work would compare nothing.

use std::fmt::Write as _;

use anyhow::{Context as _, bail, ensure};
use base64::Engine as _;
use serde_json::Value;

use crate::corpus::{Entry, PREFIX, SIDECAR};

/// One implementation's answer to one review.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Answered {
    /// Who answered (`sidecar-injector`, `go-baseline`, `in-process`).
    pub server: String,
    /// Operations in the patch.
    pub patch_ops: usize,
    /// Size of the decoded patch, bytes.
    pub patch_bytes: usize,
    /// Size of the whole response body, bytes.
    pub response_bytes: usize,
}

/// The gate's result for one corpus entry.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GateRow {
    /// The size class.
    pub size: String,
    /// Review body size, bytes.
    pub review_bytes: usize,
    /// Each implementation's answer.
    pub answers: Vec<Answered>,
}

/// Checks one response body and returns the patched pod and what the answer looked like.
pub fn patched_pod(entry: &Entry, server: &str, response: &[u8]) -> anyhow::Result<(Value, Answered)> {
    let review: Value = serde_json::from_slice(response)
        .with_context(|| format!("{server}: the answer is not JSON: {}", String::from_utf8_lossy(response)))?;
    let answer = &review["response"];
    ensure!(review["apiVersion"] == "admission.k8s.io/v1", "{server}: apiVersion is {}", review["apiVersion"]);
    ensure!(review["kind"] == "AdmissionReview", "{server}: kind is {}", review["kind"]);
    ensure!(answer["uid"] == entry.uid().as_str(), "{server}: uid {} not echoed (got {})", entry.uid(), answer["uid"]);
    ensure!(answer["allowed"] == true, "{server}: not allowed: {answer}");
    ensure!(answer["patchType"] == "JSONPatch", "{server}: patchType is {}", answer["patchType"]);
    let encoded = answer["patch"].as_str().with_context(|| format!("{server}: no patch in {answer}"))?;
    let patch_bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .with_context(|| format!("{server}: the patch is not base64"))?;
    let patch: Value =
        serde_json::from_slice(&patch_bytes).with_context(|| format!("{server}: the patch is not JSON"))?;
    let pod = admission_kit::testing::apply_patch(&entry.pod(), &patch)
        .with_context(|| format!("{server}: its patch does not apply: {patch}"))?;
    let answered = Answered {
        server: server.to_owned(),
        patch_ops: patch.as_array().map_or(0, Vec::len),
        patch_bytes: patch_bytes.len(),
        response_bytes: response.len(),
    };
    Ok((pod, answered))
}

/// Checks that `pod` carries what the corpus asked for: the sidecar container, its volume, the
/// status annotation, and env from every `<prefix>/<key>` annotation (overriding the catalog's).
pub fn check_injected(server: &str, original: &Value, pod: &Value) -> anyhow::Result<()> {
    let containers = pod["spec"]["containers"].as_array().context("no containers")?;
    let sidecar = containers
        .iter()
        .find(|c| c["name"] == SIDECAR)
        .with_context(|| format!("{server}: no `{SIDECAR}` container was injected"))?;
    let before = original["spec"]["containers"].as_array().map_or(0, Vec::len);
    ensure!(containers.len() == before + 1, "{server}: {} containers, expected {}", containers.len(), before + 1);
    ensure!(
        pod["spec"]["volumes"].as_array().into_iter().flatten().any(|v| v["name"] == "haystack-agent-config"),
        "{server}: the sidecar's volume is missing"
    );
    ensure!(pod["metadata"]["annotations"][format!("{PREFIX}/status")].is_string(), "{server}: no status annotation");
    let env = sidecar["env"].as_array().context("the sidecar has no env")?;
    let value = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    let annotations = original["metadata"]["annotations"].as_object().context("no annotations")?;
    for (key, expected) in annotations {
        let Some(name) = key.strip_prefix(&format!("{PREFIX}/")) else { continue };
        if name == "inject" || name == "status" {
            continue;
        }
        ensure!(
            value(name).as_ref() == Some(expected),
            "{server}: env `{name}` is {:?}, expected {expected}",
            value(name)
        );
    }
    ensure!(
        env.iter().filter(|e| e["name"] == "haystack_env").count() == 1,
        "{server}: the annotation did not override the catalog's `haystack_env` exactly once"
    );
    Ok(())
}

/// Compares the pods every implementation produced for one entry; on a difference, fails with
/// the differing JSON pointers and both values.
pub fn compare(entry: &Entry, pods: &[(String, Value)]) -> anyhow::Result<()> {
    let Some(((first_name, first), rest)) = pods.split_first() else { return Ok(()) };
    let reference = canonical(first);
    for (name, pod) in rest {
        if canonical(pod) != reference {
            let mut diffs = Vec::new();
            differences(first, pod, &mut String::new(), &mut diffs);
            let mut message = format!(
                "CORRECTNESS GATE FAILED for the {} review: `{first_name}` and `{name}` produce different pods ({} difference(s)):\n",
                entry.size.name(),
                diffs.len()
            );
            for line in diffs.iter().take(30) {
                let _ = writeln!(message, "  {line}");
            }
            if diffs.len() > 30 {
                let _ = writeln!(message, "  … and {} more", diffs.len() - 30);
            }
            bail!(message);
        }
    }
    Ok(())
}

/// JSON with object keys sorted at every level and no insignificant whitespace.
#[must_use]
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

fn short(value: Option<&Value>) -> String {
    match value {
        None => "(absent)".to_owned(),
        Some(v) => {
            let text = canonical(v);
            if text.len() > 160 {
                let cut = (0..=160).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
                format!("{}… ({} bytes)", &text[..cut], text.len())
            } else {
                text
            }
        }
    }
}

fn differences(left: &Value, right: &Value, path: &mut String, out: &mut Vec<String>) {
    let len = path.len();
    match (left, right) {
        (Value::Object(left_map), Value::Object(right_map)) => {
            let mut keys: Vec<&String> = left_map.keys().chain(right_map.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                path.push('/');
                path.push_str(&key.replace('~', "~0").replace('/', "~1"));
                match (left_map.get(key), right_map.get(key)) {
                    (Some(l), Some(r)) => differences(l, r, path, out),
                    (l, r) => out.push(format!("{path}: {} vs {}", short(l), short(r))),
                }
                path.truncate(len);
            }
        }
        (Value::Array(left_items), Value::Array(right_items)) if left_items.len() == right_items.len() => {
            for (i, (l, r)) in left_items.iter().zip(right_items).enumerate() {
                let _ = write!(path, "/{i}");
                differences(l, r, path, out);
                path.truncate(len);
            }
        }
        _ if left != right => out.push(format!("{path}: {} vs {}", short(Some(left)), short(Some(right)))),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_at_every_level() {
        assert_eq!(canonical(&json!({"b": [{"d": 1, "c": "x"}], "a": null})), r#"{"a":null,"b":[{"c":"x","d":1}]}"#);
    }

    #[test]
    fn differences_name_the_paths() {
        let mut out = Vec::new();
        differences(
            &json!({"a": {"b/c": 1}, "x": [1]}),
            &json!({"a": {"b/c": 2}, "y": 1, "x": [1]}),
            &mut String::new(),
            &mut out,
        );
        assert_eq!(out, vec!["/a/b~1c: 1 vs 2", "/y: (absent) vs 1"]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_in_process_injector_passes_the_gate_checks() {
        let injector = crate::inprocess::Injector::new().expect("the default configuration builds");
        for entry in crate::corpus::corpus() {
            let response = injector.review(&entry.body).await.expect("answers");
            let (pod, answered) = patched_pod(&entry, "in-process", &response).expect("a patch that applies");
            check_injected("in-process", &entry.pod(), &pod).expect("injected");
            assert!(answered.patch_ops > 0);
        }
    }
}
