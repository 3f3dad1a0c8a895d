//! Offline use: inject sidecars into manifests (`inject`, like `istioctl kube-inject`) and explain
//! decisions (`explain`), running exactly the pipeline the webhook serves.
//!
//! Reads Pod, Deployment, `StatefulSet`, `DaemonSet`, `ReplicaSet`, Job and `CronJob` manifests (and `List`s
//! of them) from multi-document YAML or JSON; other kinds pass through unchanged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use admission_kit::matcher::NamespaceView;
use admission_kit::pipeline::{Outcome, ResourceTarget, StepResult};
use admission_kit::{Pipeline, Request};
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::inject::Annotations;

/// Why manifests could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// Not YAML or JSON.
    #[error("failed to parse manifests from {source_name}: {message}")]
    Syntax {
        /// The file.
        source_name: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The pipeline denied a pod template.
    #[error("{object}: {message}")]
    Denied {
        /// `Kind namespace/name`.
        object: String,
        /// The denial.
        message: String,
    },
}

/// Parses multi-document YAML (JSON is YAML) into objects, flattening `List`s and skipping empty
/// documents.
pub fn parse_manifests(text: &str, source_name: &str) -> Result<Vec<Value>, ManifestError> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| ManifestError::Syntax { source_name: source_name.to_owned(), message: e.to_string() })?;
    let mut out = Vec::new();
    for doc in documents {
        match doc {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                out.extend(map.get("items").and_then(Value::as_array).cloned().unwrap_or_default());
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

/// The JSON pointer of the pod template inside a workload, if the kind has one.
#[must_use]
pub fn template_pointer(kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            Some("/spec/template")
        }
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

fn describe(object: &Value) -> String {
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("object");
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>");
    match object.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// Runs the pipeline on the pod template of `object` as a pod CREATE in `namespace` (the object's
/// own namespace wins) whose labels are `namespace_labels`.
pub async fn review_template(
    pipeline: &Pipeline,
    object: &Value,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<Outcome> {
    let kind = object.get("kind").and_then(Value::as_str)?;
    let template = object.pointer(template_pointer(kind)?)?;
    let namespace = object.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(namespace);
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod"});
    pod["metadata"] = template.get("metadata").cloned().unwrap_or_else(|| json!({}));
    pod["spec"] = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_owned();
    let review = Request::builder(&ResourceTarget::of::<Pod>())
        .uid("offline")
        .name(name)
        .namespace(namespace)
        .user_info(UserInfo { username: Some("sidecar-injector-offline".to_owned()), ..UserInfo::default() })
        .object(pod)
        .dry_run(true)
        .for_review()
        .build();
    Some(pipeline.review_reporting_changes(&review, NamespaceView::Known(namespace_labels)).await)
}

/// Injects sidecars into every pod template; a denial is an error naming the object.
pub async fn inject(
    pipeline: &Pipeline,
    objects: Vec<Value>,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> Result<Vec<Value>, ManifestError> {
    let mut out = Vec::with_capacity(objects.len());
    for mut object in objects {
        if let Some(outcome) = review_template(pipeline, &object, namespace, namespace_labels).await {
            if !outcome.answer.allowed {
                return Err(ManifestError::Denied { object: describe(&object), message: outcome.answer.message });
            }
            if let (Some(mutated), Some(kind)) =
                (outcome.mutated, object.get("kind").and_then(Value::as_str).map(str::to_owned))
            {
                let pointer = template_pointer(&kind).unwrap_or_default();
                if let Some(template) = object.pointer_mut(pointer) {
                    if let Some(metadata) = mutated.get("metadata") {
                        template["metadata"] = metadata.clone();
                    }
                    if let Some(spec) = mutated.get("spec") {
                        template["spec"] = spec.clone();
                    }
                }
            }
        }
        out.push(object);
    }
    Ok(out)
}

/// Says, for each object with a pod template, whether and why it would or would not be injected.
pub async fn explain(
    pipeline: &Pipeline,
    annotations: &Annotations,
    objects: &[Value],
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    for object in objects {
        let what = describe(object);
        let Some(outcome) = review_template(pipeline, object, namespace, namespace_labels).await else {
            let _ = writeln!(out, "{what}: no pod template; passed through unchanged");
            continue;
        };
        if !outcome.answer.allowed {
            let _ = writeln!(out, "{what}: DENIED: {}", outcome.answer.message);
            continue;
        }
        let verdict = if outcome.answer.is_patched() { "would be injected" } else { "would NOT be injected" };
        let _ = writeln!(out, "{what}: {verdict}");
        for report in &outcome.steps {
            let line = match &report.result {
                StepResult::Skipped(reason) => format!("skipped: {reason}"),
                StepResult::Applied { changed: Some(true) } => "applied".to_owned(),
                StepResult::Applied { changed: Some(false) } => "ran, nothing to change".to_owned(),
                StepResult::Denied(message) => format!("denied: {message}"),
                StepResult::Failed { message, .. } => format!("failed: {message}"),
                StepResult::Panicked(message) => format!("panicked: {message}"),
                other => format!("{other:?}"),
            };
            let _ = writeln!(out, "  - {}: {line}", report.step);
        }
        if let Some(status) = outcome
            .mutated
            .as_ref()
            .and_then(|m| m.pointer("/metadata/annotations"))
            .and_then(|a| a.get(&annotations.status))
        {
            let _ = writeln!(out, "  - status annotation: {}", status.as_str().unwrap_or_default());
        }
        for warning in &outcome.answer.warnings {
            let _ = writeln!(out, "  - warning: {warning}");
        }
        // The most common mistake: the annotation on a workload's own metadata, where the API
        // server never copies it to the pods.
        let on_workload = object["kind"] != "Pod"
            && object.pointer("/metadata/annotations").and_then(|a| a.get(&annotations.inject)).is_some();
        if !outcome.answer.is_patched() && on_workload {
            let _ = writeln!(
                out,
                "  - hint: `{}` is on the {}'s own metadata; pods get only the pod template's annotations, so put it there",
                annotations.inject,
                object["kind"].as_str().unwrap_or("object")
            );
        }
    }
    out
}
