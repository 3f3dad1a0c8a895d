use super::*;
use crate::Step;
use crate::pipeline::{Pipeline, ResourceTarget};
use crate::testing::{Harness, review};
use k8s_openapi::api::core::v1::Pod;

fn mutation() -> PodMutation {
    serde_json::from_value(json!({
        "guard": "logs.example.com/injected",
        "containers": [{"name": "shipper", "image": "shipper:1", "env": [{"name": "level", "value": "info"}]}],
        "initContainers": [
            {"name": "proxy", "image": "proxy:1", "restartPolicy": "Always"},
            {"name": "setup", "image": "setup:1"},
        ],
        "volumes": [{"name": "logs", "emptyDir": {}}],
        "imagePullSecrets": [{"name": "registry"}],
        "labels": {"logs.example.com/shipped": "true"},
        "annotations": {"logs.example.com/format": "json"},
        "set": [{"path": "/spec/securityContext/runAsNonRoot", "value": true}],
        "envFromAnnotations": {"prefix": "logs.example.com", "allow": ["level", "extra-*"], "containers": ["shipper", "proxy"]},
    }))
    .unwrap_or_else(|e| panic!("{e}"))
}

fn harness() -> Harness {
    let pipeline = Pipeline::builder("logs.example.com")
        .step(Step::dynamic("shipper", ResourceTarget::of::<Pod>(), mutation()))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    Harness::new(pipeline)
}

#[tokio::test]
async fn adds_what_the_pod_lacks_and_keeps_what_it_has() {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p", "annotations": {"logs.example.com/level": "debug", "logs.example.com/extra-x": "1", "logs.example.com/secret": "no"},
            "labels": {"logs.example.com/shipped": "mine"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], "initContainers": [{"name": "setup", "image": "own:1"}],
            "volumes": [{"name": "data", "emptyDir": {}}]},
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let checked = harness().check(&review(&pod).build()).await;
    let out = checked.patched().clone();
    let names = |key: &str| -> Vec<String> {
        out["spec"][key].as_array().into_iter().flatten().map(|c| name(c).to_owned()).collect()
    };
    assert_eq!(names("containers"), ["app", "shipper"]);
    assert_eq!(names("initContainers"), ["proxy", "setup"], "native first; the pod's own setup kept, not added twice");
    assert_eq!(names("volumes"), ["data", "logs"]);
    assert_eq!(names("imagePullSecrets"), ["registry"]);
    assert_eq!(out["metadata"]["labels"]["logs.example.com/shipped"], "mine", "the pod's own value wins");
    assert_eq!(out["metadata"]["annotations"]["logs.example.com/format"], "json");
    assert_eq!(out["metadata"]["annotations"]["logs.example.com/injected"], "true");
    assert_eq!(out["spec"]["securityContext"]["runAsNonRoot"], true);
    // Allowed keys only, the container's own var replaced in place, the others in key order.
    assert_eq!(
        out["spec"]["containers"][1]["env"],
        json!([{"name": "level", "value": "debug"}, {"name": "extra-x", "value": "1"}])
    );
    assert_eq!(
        out["spec"]["initContainers"][0]["env"],
        json!([{"name": "extra-x", "value": "1"}, {"name": "level", "value": "debug"}])
    );
    assert!(out["spec"]["initContainers"][1].get("env").is_none(), "the pod's own init container gets nothing");
    // Run again over its own result: the guard stops it.
    let again: Pod = serde_json::from_value(out.clone()).unwrap_or_else(|e| panic!("{e}"));
    harness().check(&review(&again).build()).await.assert_unchanged();
}

#[test]
fn validation_names_what_is_wrong() {
    let bad = |key: &str, value: Value| -> String {
        let mut mutation = serde_json::to_value(mutation()).unwrap_or_default();
        mutation[key] = value;
        let mutation: PodMutation = serde_json::from_value(mutation).unwrap_or_else(|e| panic!("{e}"));
        mutation.validate().expect_err("refused")
    };
    assert!(bad("containers", json!([{"name": "proxy", "image": "x"}])).contains("container `proxy`"));
    assert!(bad("volumes", json!([{"emptyDir": {}}])).contains("every volume needs a name"));
    assert!(bad("set", json!([{"path": "/spec/containers/0/image", "value": "x"}])).contains("plain field names"));
    let env = |allow: &str, container: &str| json!({"prefix": "p", "allow": [allow], "containers": [container]});
    assert!(bad("envFromAnnotations", env("*", "app")).contains("`app` is not a container"));
    assert!(bad("envFromAnnotations", env("[a", "shipper")).contains("unclosed"));
    assert_eq!(mutation().validate(), Ok(()));
}

#[test]
fn renders_one_mutating_policy_guarded_by_its_annotation() {
    let StepPolicy::Parts(parts) = mutation().render().unwrap_or_else(|e| panic!("{e}")) else { panic!("parts") };
    assert_eq!(parts.mutations.len(), 1);
    assert!(parts.validations.is_empty());
    assert!(parts.conditions[0].1.contains("logs.example.com/injected"), "{:?}", parts.conditions);
    let mut invalid = mutation();
    invalid.containers.push(json!({"image": "nameless"}));
    assert!(invalid.render().is_err());
}
