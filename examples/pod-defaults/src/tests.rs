//! Tests of the pod-defaults webhook, through the testing kit's harness.

use admission_kit::pipeline::ResourceTarget;
use admission_kit::testing::proptest::prelude::*;
use admission_kit::testing::{Harness, check_property, review, review_json, strategies};
use k8s_openapi::api::core::v1::{PodSpec, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use serde_json::{Value, json};

use super::*;

fn harness() -> Harness {
    Harness::new(pipeline(Config::built_in().unwrap()))
}

fn container(name: &str, requests: &[(&str, &str)]) -> Container {
    let resources = (!requests.is_empty()).then(|| ResourceRequirements {
        requests: Some(requests.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect()),
        ..ResourceRequirements::default()
    });
    Container { name: name.into(), resources, ..Container::default() }
}

fn pod(labels: &[(&str, &str)], containers: Vec<Container>) -> Pod {
    let mut pod = Pod { spec: Some(PodSpec { containers, ..PodSpec::default() }), ..Pod::default() };
    if !labels.is_empty() {
        pod.metadata.labels = Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
    }
    pod
}

fn default_resources_json() -> Value {
    json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}})
}

#[tokio::test]
async fn defaults_what_a_pod_lacks() {
    let mut bare = pod(
        &[("app", "web"), ("pod-template-hash", "5d8f")],
        vec![container("app", &[]), container("sized", &[("cpu", "1")])],
    );
    if let Some(spec) = bare.spec.as_mut() {
        spec.init_containers = Some(vec![container("setup", &[])]);
    }
    let checked = harness().check(&review(&bare).namespace("apps").build()).await;
    let spec = &checked.patched()["spec"];
    assert_eq!(spec["containers"][0]["resources"], default_resources_json());
    assert_eq!(spec["containers"][1]["resources"], json!({"requests": {"cpu": "1"}}));
    assert_eq!(spec["initContainers"][0]["resources"], default_resources_json());
    assert_eq!(
        spec["tolerations"],
        json!([{"key": "example.com/preemptible", "operator": "Exists", "effect": "NoSchedule"}])
    );
    assert_eq!(
        spec["topologySpreadConstraints"],
        json!([{
            "labelSelector": {"matchLabels": {"app": "web"}},
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        }])
    );
    assert_eq!(
        checked.answer().warnings,
        ["pod-defaults.admission-kit.dev: set default resources on containers that had none: app, setup"]
    );
}

#[tokio::test]
async fn keeps_everything_a_pod_sets() {
    let mut complete = pod(&[("app", "web")], vec![container("app", &[("memory", "1Gi")])]);
    if let Some(spec) = complete.spec.as_mut() {
        // The same toleration, written with the fields the API server leaves empty.
        spec.tolerations = Some(vec![Toleration {
            key: Some("example.com/preemptible".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]);
        spec.topology_spread_constraints = Some(vec![TopologySpreadConstraint {
            topology_key: "topology.kubernetes.io/zone".into(),
            max_skew: 3,
            when_unsatisfiable: "DoNotSchedule".into(),
            ..TopologySpreadConstraint::default()
        }]);
    }
    harness().check(&review(&complete).namespace("apps").build()).await.assert_unchanged();
    harness().check(&review(&pod(&[], vec![])).namespace("kube-system").build()).await.assert_unchanged();
}

#[tokio::test]
async fn spreads_only_pods_that_can_spread() {
    let spreads = |checked: &admission_kit::testing::Checked| {
        checked.patched()["spec"].get("topologySpreadConstraints").is_some()
    };
    let mut daemon = pod(&[("app", "agent")], vec![container("a", &[])]);
    daemon.metadata.owner_references =
        Some(vec![OwnerReference { kind: "DaemonSet".into(), name: "agent".into(), ..OwnerReference::default() }]);
    let mut bound = pod(&[("app", "web")], vec![container("a", &[])]);
    if let Some(spec) = bound.spec.as_mut() {
        spec.node_name = Some("node-1".into());
    }
    let only_identity = pod(&[("statefulset.kubernetes.io/pod-name", "db-0")], vec![container("a", &[])]);
    for pod in [daemon, bound, only_identity] {
        let checked = harness().check(&review(&pod).namespace("apps").build()).await;
        assert!(!spreads(&checked), "{:?}", checked.patched());
        assert!(checked.answer().is_patched(), "the other defaults still apply");
    }
}

#[tokio::test]
async fn pod_level_resources_leave_containers_alone() {
    let mut shared = pod(&[], vec![container("a", &[])]);
    if let Some(spec) = shared.spec.as_mut() {
        spec.resources = Some(ResourceRequirements {
            limits: Some([("cpu".to_owned(), Quantity("2".into()))].into()),
            ..ResourceRequirements::default()
        });
    }
    let checked = harness().check(&review(&shared).namespace("apps").build()).await;
    assert!(checked.patched()["spec"]["containers"][0].get("resources").is_none());
}

#[tokio::test]
async fn a_configuration_file_replaces_the_built_in_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pod-defaults.yaml");
    std::fs::write(&path, "resources:\n  limits:\n    cpu: 500m\n").unwrap();
    let harness = Harness::new(pipeline(Config::from_file(&path).unwrap()));
    let checked = harness.check(&review(&pod(&[("app", "web")], vec![container("a", &[])])).build()).await;
    let spec = &checked.patched()["spec"];
    assert_eq!(spec["containers"][0]["resources"], json!({"limits": {"cpu": "500m"}}));
    assert!(spec.get("tolerations").is_none() && spec.get("topologySpreadConstraints").is_none());

    let missing = Config::from_file(&dir.path().join("missing.yaml")).unwrap_err();
    assert!(missing.to_string().contains("missing.yaml"), "{missing}");
}

/// How a generated container states its resources.
fn resources() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        Just(None),
        Just(Some(json!({}))),
        Just(Some(json!({"requests": {}}))),
        Just(Some(json!({"requests": {"cpu": "2"}}))),
        Just(Some(json!({"limits": {"memory": "1Gi"}}))),
        Just(Some(json!({"claims": [{"name": "gpu"}]}))),
    ]
}

fn toleration() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"key": "example.com/preemptible", "operator": "Exists", "effect": "NoSchedule"})),
        Just(json!({"key": "example.com/preemptible", "operator": "Exists"})),
        Just(json!({"key": "other", "value": "x"})),
    ]
}

/// A pod as raw JSON: containers with any resources, tricky label keys, existing tolerations and
/// spreads, owners, and fields k8s-openapi does not model.
fn pods() -> impl Strategy<Value = Value> {
    let containers = prop::collection::vec((resources(), strategies::maybe_unknown()), 1..4);
    let labels = prop::collection::btree_map(
        prop_oneof![strategies::tricky_key(), Just("pod-template-hash".to_owned()), Just("app".to_owned())],
        "[a-z]{0,3}",
        0..4,
    );
    let spread = prop::option::of(prop_oneof![Just("topology.kubernetes.io/zone"), Just("kubernetes.io/hostname")]);
    let owner = prop::option::of(prop_oneof![Just("DaemonSet"), Just("ReplicaSet")]);
    let unknown = strategies::maybe_unknown();
    (containers, labels, prop::collection::vec(toleration(), 0..3), spread, owner, unknown).prop_map(
        |(containers, labels, tolerations, spread, owner, unknown)| {
            let containers: Vec<Value> = containers
                .into_iter()
                .enumerate()
                .map(|(i, (resources, unknown))| {
                    let mut c = json!({"name": format!("c{i}"), "image": "app"});
                    if let Some(r) = resources {
                        c["resources"] = r;
                    }
                    if let Some(u) = unknown {
                        c["x-unknown"] = u;
                    }
                    c
                })
                .collect();
            let mut pod = json!({"metadata": {"name": "p", "labels": labels}, "spec": {"containers": containers}});
            if !tolerations.is_empty() {
                pod["spec"]["tolerations"] = Value::Array(tolerations);
            }
            if let Some(key) = spread {
                pod["spec"]["topologySpreadConstraints"] =
                    json!([{"maxSkew": 2, "topologyKey": key, "whenUnsatisfiable": "DoNotSchedule"}]);
            }
            if let Some(kind) = owner {
                pod["metadata"]["ownerReferences"] =
                    json!([{"apiVersion": "apps/v1", "kind": kind, "name": "o", "uid": "1"}]);
            }
            if let Some(u) = unknown {
                pod["spec"]["x-unknown"] = u;
            }
            pod
        },
    )
}

#[test]
fn property_defaults_apply_cleanly_once_and_only_where_missing() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let harness = harness();
    let target = ResourceTarget::of::<Pod>();
    check_property(pods(), |original| {
        // `try_check` checks the patch applies, gives the pipeline's result, is idempotent and loses
        // nothing of the original.
        let checked =
            runtime.block_on(harness.try_check(&review_json(original.clone(), &target).namespace("apps").build()))?;
        prop_assert!(checked.answer().allowed);
        let result = checked.patched();
        for (before, after) in original["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .zip(result["spec"]["containers"].as_array().into_iter().flatten())
        {
            let set = |key| before["resources"].get(key).and_then(Value::as_object).is_some_and(|m| !m.is_empty());
            if set("requests") || set("limits") {
                prop_assert_eq!(before, after, "a container with resources was changed");
            } else {
                prop_assert_eq!(&after["resources"]["requests"], &default_resources_json()["requests"]);
                prop_assert_eq!(&after["resources"]["limits"], &default_resources_json()["limits"]);
            }
        }
        let wanted = json!({"key": "example.com/preemptible", "operator": "Exists", "effect": "NoSchedule"});
        let count = |list: &Value| list.as_array().map_or(0, |l| l.iter().filter(|t| **t == wanted).count());
        prop_assert_eq!(count(&result["spec"]["tolerations"]), count(&original["spec"]["tolerations"]).max(1));
        let zone_spreads = |pod: &Value| {
            pod["spec"]["topologySpreadConstraints"]
                .as_array()
                .map_or(0, |c| c.iter().filter(|c| c["topologyKey"] == "topology.kubernetes.io/zone").count())
        };
        let workload_labels =
            original["metadata"]["labels"].as_object().is_some_and(|l| l.keys().any(|k| k != "pod-template-hash"));
        let daemon = original["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet";
        let eligible = zone_spreads(&original) == 0 && !daemon && workload_labels;
        prop_assert_eq!(zone_spreads(result), if eligible { 1 } else { zone_spreads(&original) });
        Ok(())
    });
}
