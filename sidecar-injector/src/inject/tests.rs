#![allow(clippy::field_reassign_with_default, reason = "tests change one knob of the default configuration at a time")]
#![allow(clippy::needless_pass_by_value, reason = "test helpers take inline JSON literals")]

use std::sync::Arc;

use admission_kit::pipeline::{ResourceTarget, StepResult};
use admission_kit::prelude::Operation;
use admission_kit::review::Review;
use admission_kit::testing::{Checked, Harness, review_json};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use super::*;
use crate::catalog::{Catalog, parse_catalog};
use crate::config::Config;

const INJECT: &str = "sidecar-injector.expedia.com/inject";
const STATUS: &str = "sidecar-injector.expedia.com/status";

fn catalog() -> Catalog {
    let mut catalog = Catalog::new();
    let text = r#"
- name: agent
  containers:
    - name: agent
      image: agent:1
      env: [{name: MODE, value: catalog}, {name: keep, value: "1"}]
      futureContainerField: {x: 1}
  volumes: [{name: agent-data, emptyDir: {}}]
  imagePullSecrets: [{name: regcred}]
  annotations: {agent.example.com/scrape: "true", shared: catalog}
  labels: {agent: "yes", app: catalog}
- name: logger
  containers: [{name: logger, image: logger:1}]
  initContainers: [{name: logger-init, image: logger:1}]
  volumes: [{name: logs, emptyDir: {}}]
  imagePullSecrets: [{name: regcred}]
- name: proxy
  nativeSidecar: true
  containers: [{name: proxy, image: proxy:1}]
- name: privileged
  namespaces: [trusted]
  containers: [{name: privileged, image: p:1}]
- name: clash
  containers: [{name: app, image: clash:1}]
"#;
    catalog.extend(parse_catalog(text, "test").unwrap(), "test").unwrap();
    catalog
}

fn harness_with(config: &Config) -> Harness {
    let pipeline = crate::pipeline(config, Arc::new(CatalogStore::fixed(catalog())), None).unwrap();
    Harness::new(pipeline)
        .namespace("apps", [("kubernetes-sidecar-injector", "enabled")])
        .namespace("trusted", [("kubernetes-sidecar-injector", "enabled")])
        .namespace("kube-system", [("kubernetes-sidecar-injector", "enabled")])
        .namespace("plain", [("team", "x")])
}

fn harness() -> Harness {
    harness_with(&Config::default())
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "annotations": annotations, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    })
}

fn review(pod: Value, namespace: &str) -> Review {
    review_json(pod, &ResourceTarget::of::<Pod>()).namespace(namespace).build()
}

async fn check(pod: Value, namespace: &str) -> Checked {
    harness().check(&review(pod, namespace)).await
}

fn containers(result: &Value) -> Vec<&str> {
    result["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect()
}

fn env_of<'a>(result: &'a Value, container: &str) -> &'a Value {
    for key in ["containers", "initContainers"] {
        for c in result["spec"][key].as_array().into_iter().flatten() {
            if c["name"] == container {
                return &c["env"];
            }
        }
    }
    panic!("no container {container}")
}

#[test]
fn requested_names_are_trimmed_and_deduplicated() {
    assert_eq!(requested(" a, b ,,a , c"), vec!["a", "b", "c"]);
    assert!(requested(" , ").is_empty());
}

#[test]
fn env_name_rules() {
    assert_eq!(c_identifier("some-api-key"), "SOME_API_KEY");
    assert_eq!(c_identifier("1st.value"), "_1ST_VALUE");
    assert!(is_env_var_name("some-api-key") && is_env_var_name("a.b_c") && is_env_var_name("_x"));
    assert!(!is_env_var_name("1abc") && !is_env_var_name("") && !is_env_var_name("a=b") && !is_env_var_name("a b"));
}

#[tokio::test]
async fn the_captured_2019_review_gets_its_sidecar_and_env() {
    let body =
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/expedia-2019-admission-review-v1beta1.json"))
            .unwrap();
    let review = Review::from_slice(&body).unwrap();
    let mut config = Config::default();
    config.sidecars = json!([{"name": "haystack-agent", "containers": [{"name": "haystack-agent", "image": "expediadotcom/haystack-agent"}]}]);
    let store = CatalogStore::load(vec![crate::catalog::CatalogSource::inline(config.sidecars.clone())]).unwrap();
    let harness = Harness::new(crate::pipeline(&config, Arc::new(store), None).unwrap())
        .namespace("default", [("kubernetes-sidecar-injector", "enabled")]);
    let checked = harness.check(&review).await;
    let result = checked.patched();
    assert_eq!(checked.answer().api_version, "admission.k8s.io/v1beta1");
    assert_eq!(containers(result), vec!["echo-server", "haystack-agent"]);
    assert_eq!(
        env_of(result, "haystack-agent"),
        &json!([{"name": "api-key", "value": "bd8a1dd2-735d-466e-ba30-201660185e64"}])
    );
    assert_eq!(env_of(result, "echo-server"), &Value::Null, "the app's containers get no env");
    // The pod's own annotations are all still there, and the status records the injection.
    assert_eq!(result["metadata"]["annotations"]["sidecar-injector.expedia.com/inject"], "haystack-agent");
    assert_eq!(
        result["metadata"]["annotations"][STATUS],
        r#"{"sidecars":["haystack-agent"],"containers":["haystack-agent"]}"#
    );
}

#[tokio::test]
async fn the_captured_2022_pod_keeps_its_projected_volume() {
    let pod: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/expedia-2022-pod.json")).unwrap(),
    )
    .unwrap();
    let mut pod = pod;
    pod["metadata"]["annotations"][INJECT] = json!("agent");
    let checked = check(pod.clone(), "apps").await;
    let result = checked.patched();
    assert_eq!(
        result["spec"]["volumes"][0], pod["spec"]["volumes"][0],
        "the projected service-account volume is untouched"
    );
    assert_eq!(result["spec"]["volumes"].as_array().unwrap().last().unwrap()["name"], "agent-data");
    assert_eq!(
        env_of(result, "agent").as_array().unwrap().last().unwrap(),
        &json!({"name": "some-api-key", "value": "6feab492-fc9b-4c38-b50d-3791718c8203"})
    );
    assert_eq!(result["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"], "2022-03-25T13:36:51-05:00");
}

#[tokio::test]
async fn a_pod_without_volumes_gets_two_sidecars_in_the_order_asked() {
    let mut p = pod(json!({INJECT: "logger, agent"}));
    p["metadata"].as_object_mut().unwrap().remove("labels");
    let checked = check(p, "apps").await;
    let result = checked.patched();
    assert_eq!(containers(result), vec!["app", "logger", "agent"]);
    assert_eq!(result["spec"]["initContainers"], json!([{"name": "logger-init", "image": "logger:1"}]));
    let volumes: Vec<&str> =
        result["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, vec!["logs", "agent-data"]);
    assert_eq!(result["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]), "the same pull secret is added once");
    assert_eq!(result["metadata"]["labels"], json!({"agent": "yes", "app": "catalog"}), "labels created when absent");
}

#[tokio::test]
async fn keys_with_slash_and_tilde_and_unknown_fields_survive() {
    let mut p = pod(json!({INJECT: "agent", "a.io/x~y": "1", "team/owner": "me"}));
    p["metadata"]["labels"]["b.io/p~q"] = json!("2");
    p["spec"]["futureSpecField"] = json!({"deep": [1, 2]});
    p["spec"]["containers"][0]["futureContainerField"] = json!(true);
    let checked = check(p, "apps").await;
    let result = checked.patched();
    assert_eq!(result["metadata"]["annotations"]["a.io/x~y"], "1");
    assert_eq!(result["metadata"]["labels"]["b.io/p~q"], "2");
    assert_eq!(result["spec"]["futureSpecField"], json!({"deep": [1, 2]}));
    assert_eq!(result["spec"]["containers"][0]["futureContainerField"], true);
    assert_eq!(result["spec"]["containers"][1]["futureContainerField"], json!({"x": 1}), "catalog fields survive too");
    // Catalog metadata never overrides the pod's own by default.
    assert_eq!(result["metadata"]["labels"]["app"], "web");
    assert_eq!(result["metadata"]["labels"]["agent"], "yes");
    let patch = serde_json::to_string(&checked.answer().patch).unwrap();
    assert!(patch.contains("/metadata/annotations/agent.example.com~1scrape"), "{patch}");
    assert!(!patch.contains(r#""path":"/metadata/annotations","#), "never the whole map: {patch}");
}

#[tokio::test]
async fn env_annotations_override_unlocked_catalog_vars_and_stay_data() {
    let hostile = "quote\" {{ .Values.x }} $(HOME) $$ \n newline";
    let annotations = json!({INJECT: "agent", "sidecar-injector.expedia.com/MODE": "annotation", "sidecar-injector.expedia.com/weird": hostile});
    // By default the catalog's own vars are locked: the pod is denied, naming the rule.
    check(pod(annotations.clone()), "apps").await.assert_denied(
        "sidecar `agent` (container `agent`): annotation `sidecar-injector.expedia.com/MODE` may not set env var `MODE`: the sidecar sets this var itself and the configuration's `annotationEnv.locked` (`*`) keeps it",
    );
    let mut config = Config::default();
    config.annotation_env.locked = crate::env_rules::Patterns::new(&["keep"]).unwrap();
    let checked = harness_with(&config).check(&review(pod(annotations.clone()), "apps")).await;
    let env = env_of(checked.patched(), "agent");
    // `$` doubled: after kubelet's `$(VAR)` expansion the container sees exactly `hostile`.
    let escaped = "quote\" {{ .Values.x }} $$(HOME) $$$$ \n newline";
    assert_eq!(
        env,
        &json!([{"name": "MODE", "value": "annotation"}, {"name": "keep", "value": "1"}, {"name": "weird", "value": escaped}])
    );
    config.literal_env_values = false;
    let raw = harness_with(&config).check(&review(pod(annotations), "apps")).await;
    assert_eq!(env_of(raw.patched(), "agent")[2]["value"], hostile);
}

#[tokio::test]
async fn env_names_the_cluster_would_reject_are_denied_or_converted() {
    let p = pod(json!({INJECT: "agent", "sidecar-injector.expedia.com/1password": "x"}));
    let denied = check(p.clone(), "apps").await;
    denied.assert_denied("would become env var `1password`, which Kubernetes rejects");
    let mut config = Config::default();
    config.env_names = crate::settings::EnvNames::CIdentifier;
    let converted = harness_with(&config).check(&review(p, "apps")).await;
    assert_eq!(
        env_of(converted.patched(), "agent").as_array().unwrap().last().unwrap(),
        &json!({"name": "_1PASSWORD", "value": "x"})
    );
}

#[tokio::test]
async fn no_env_leaks_between_requests_even_concurrently() {
    let store = Arc::new(CatalogStore::fixed(catalog()));
    let before = store.current().get("agent").unwrap().containers.clone();
    let h = Harness::new(crate::pipeline(&Config::default(), store.clone(), None).unwrap())
        .namespace("apps", [("kubernetes-sidecar-injector", "enabled")]);
    let make = |i: usize| {
        review(pod(json!({INJECT: "agent", "sidecar-injector.expedia.com/api-key": format!("key-{i}")})), "apps")
    };
    let reviews: Vec<Review> = (0..64).map(make).collect();
    let outcomes = futures_join(&h, &reviews).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        let env = env_of(outcome.mutated.as_ref().unwrap(), "agent");
        let keys: Vec<&Value> =
            env.as_array().unwrap().iter().filter(|e| e["name"] == "api-key").map(|e| &e["value"]).collect();
        assert_eq!(keys, vec![&json!(format!("key-{i}"))], "pod {i} sees only its own value");
    }
    // And the catalog in service was never written to.
    assert_eq!(store.current().get("agent").unwrap().containers, before);
}

async fn futures_join(h: &Harness, reviews: &[Review]) -> Vec<admission_kit::pipeline::Outcome> {
    let mut set = tokio::task::JoinSet::new();
    for (i, r) in reviews.iter().enumerate() {
        let (h, r) = (h.clone(), r.clone());
        set.spawn(async move { (i, h.run(&r).await) });
    }
    let mut out: Vec<_> = set.join_all().await;
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, o)| o).collect()
}

#[tokio::test]
async fn reinvocation_of_an_injected_pod_changes_nothing() {
    let checked = check(pod(json!({INJECT: "agent, proxy", "sidecar-injector.expedia.com/k": "v"})), "apps").await;
    // `check` already ran the pipeline again on its own output; do it once more by hand to be explicit.
    harness().check(&review(checked.patched().clone(), "apps")).await.assert_unchanged();
}

#[tokio::test]
async fn unknown_sidecars_are_denied_with_the_known_names_or_warned() {
    let denied = check(pod(json!({INJECT: "agent, agnet"})), "apps").await;
    denied.assert_denied("sidecar `agnet` is not in the catalog; known: agent, clash, logger, privileged, proxy");
    let mut config = Config::default();
    config.unknown_sidecar = crate::settings::UnknownSidecarPolicy::Warn;
    let warned = harness_with(&config).check(&review(pod(json!({INJECT: "agent, agnet"})), "apps")).await;
    assert_eq!(containers(warned.patched()), vec!["app", "agent"]);
    assert!(
        warned.answer().warnings.iter().any(|w| w.contains("`agnet` is not in the catalog")),
        "{:?}",
        warned.answer().warnings
    );
}

#[tokio::test]
async fn name_collisions_are_denied_or_skipped() {
    let denied = check(pod(json!({INJECT: "clash"})), "apps").await;
    denied.assert_denied("sidecar `clash` adds container `app`, but the pod already has one with that name");
    let mut config = Config::default();
    config.on_collision = crate::settings::CollisionPolicy::Skip;
    let skipped = harness_with(&config).check(&review(pod(json!({INJECT: "clash, agent"})), "apps")).await;
    assert_eq!(containers(skipped.patched()), vec!["app", "agent"]);
    assert_eq!(skipped.patched()["spec"]["containers"][0]["image"], "app:1", "the pod's own container is kept");
    assert!(skipped.answer().warnings[0].contains("skipped"));
}

#[tokio::test]
async fn native_sidecars_go_first_among_init_containers() {
    let mut p = pod(json!({INJECT: "proxy, logger"}));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m:1"}]);
    let checked = check(p.clone(), "apps").await;
    let init: Vec<&str> = checked.patched()["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, vec!["proxy", "migrate", "logger-init"]);
    assert_eq!(checked.patched()["spec"]["initContainers"][0]["restartPolicy"], "Always");
    let mut config = Config::default();
    config.native_sidecar_placement = crate::settings::NativePlacement::Last;
    let last = harness_with(&config).check(&review(p, "apps")).await;
    let init: Vec<&str> = last.patched()["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, vec!["migrate", "logger-init", "proxy"]);
}

#[tokio::test]
async fn namespace_allow_list() {
    check(pod(json!({INJECT: "privileged"})), "apps")
        .await
        .assert_denied("sidecar `privileged` may not be injected in namespace `apps`; it is allowed in: trusted");
    assert_eq!(
        containers(check(pod(json!({INJECT: "privileged"})), "trusted").await.patched()),
        vec!["app", "privileged"]
    );
}

#[tokio::test]
async fn selection_follows_the_seed() {
    // kube-system is never mutated, even when labelled; unlabelled namespaces are not either.
    check(pod(json!({INJECT: "agent"})), "kube-system").await.assert_unchanged();
    check(pod(json!({INJECT: "agent"})), "plain").await.assert_unchanged();
    // No annotation: untouched.
    check(pod(json!({"other": "x"})), "apps").await.assert_unchanged();
    // Only CREATE.
    let update = review_json(pod(json!({INJECT: "agent"})), &ResourceTarget::of::<Pod>())
        .namespace("apps")
        .operation(Operation::Update)
        .build();
    harness().check(&update).await.assert_unchanged();
    // Only pods.
    let deployment = ResourceTarget::new("apps", "v1", "Deployment", "deployments");
    let other_kind = review_json(pod(json!({INJECT: "agent"})), &deployment).namespace("apps").build();
    harness().check(&other_kind).await.assert_unchanged();
}

#[tokio::test]
async fn catalog_metadata_can_be_told_to_override() {
    let mut config = Config::default();
    config.override_pod_metadata = true;
    let mut p = pod(json!({INJECT: "agent", "shared": "pod"}));
    p["metadata"]["labels"]["app"] = json!("web");
    let checked = harness_with(&config).check(&review(p, "apps")).await;
    assert_eq!(checked.patched()["metadata"]["labels"]["app"], "catalog");
    assert_eq!(checked.patched()["metadata"]["annotations"]["shared"], "catalog");
}

/// The pipeline leaves a pod that arrives with a status annotation alone, whatever it says (as the
/// webhook's match condition and policy mode do); the env step, run without that pipeline, refuses
/// one it did not write.
#[tokio::test]
async fn a_pod_arriving_with_a_status_is_left_alone_and_the_env_step_refuses_a_forged_one() {
    use admission_kit::matcher::NamespaceView;
    use admission_kit::prelude::{Context, DynamicMutator as _};
    let mut forged = pod(json!({INJECT: "agent", STATUS: "not json", "sidecar-injector.expedia.com/KEY": "v"}));
    let checked = check(forged.clone(), "apps").await;
    checked.assert_unchanged();
    assert!(
        checked.outcome.steps.iter().all(|s| matches!(&s.result, StepResult::Skipped(why) if why.contains(STATUS))),
        "{:?}",
        checked.outcome.steps
    );
    let request = review(forged.clone(), "apps").request;
    let env = EnvFromAnnotations::new(&Config::default().injection());
    let refused = env.mutate(&mut forged, &mut Context::new(&request, NamespaceView::unknown())).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("annotation `sidecar-injector.expedia.com/status` is not a status this injector wrote"),
        "{refused}"
    );
}

#[tokio::test]
async fn sidecars_from_configmaps_in_the_pods_namespace() {
    use admission_kit::reexports::kube::runtime::watcher;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let config_map = |name: &str, text: &str| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("apps".into()),
            resource_version: Some("1".into()),
            ..ObjectMeta::default()
        },
        data: Some([("sidecars.yaml".to_owned(), text.to_owned())].into()),
        ..ConfigMap::default()
    };
    let mut writer = crate::catalog::NamespaceCatalogWriter::new("sidecars.yaml");
    writer.apply_watcher_event(&watcher::Event::Apply(config_map(
        "busybox",
        "- name: busybox\n  containers: [{name: busybox, image: busybox, restartPolicy: Always}]\n- name: helper\n  volumes: [{name: scratch, emptyDir: {}}]\n",
    )));
    writer.apply_watcher_event(&watcher::Event::Apply(config_map(
        "agent",
        "- name: agent\n  containers: [{name: impostor, image: evil}]\n",
    )));
    writer.apply_watcher_event(&watcher::Event::Apply(config_map("broken", "- name: [oops\n")));
    writer.apply_watcher_event(&watcher::Event::Apply(config_map(
        "narrow",
        "- name: narrow\n  containers: [{name: narrow, image: \"narrow:1\"}]\n  annotationEnv: {allow: [only-this]}\n",
    )));
    let namespaced = Arc::new(writer.as_reader());
    let pipeline =
        crate::pipeline_with(&Config::default(), Arc::new(CatalogStore::fixed(catalog())), Some(namespaced), None)
            .unwrap();
    let harness = Harness::new(pipeline).namespace("apps", [("kubernetes-sidecar-injector", "enabled")]);

    let checked =
        harness.check(&review(pod(json!({INJECT: "busybox", "sidecar-injector.expedia.com/k": "v"})), "apps")).await;
    let result = checked.patched();
    assert_eq!(containers(result), vec!["app", "busybox"]);
    assert_eq!(result["spec"]["containers"][1]["restartPolicy"], "Always", "ConfigMap entries keep every field");
    assert_eq!(result["spec"]["volumes"][0]["name"], "scratch", "every sidecar of the ConfigMap is injected");
    assert_eq!(env_of(result, "busybox"), &json!([{"name": "k", "value": "v"}]));
    // A ConfigMap entry's env rules apply to its containers, as a catalog entry's do.
    harness
        .check(&review(pod(json!({INJECT: "narrow", "sidecar-injector.expedia.com/k": "v"})), "apps"))
        .await
        .assert_denied("sidecar `narrow` (container `narrow`): annotation `sidecar-injector.expedia.com/k` may not set env var `k`: the key matches none of the catalog entry's `annotationEnv.allow` (`only-this`)");
    // The administrator's catalog wins over a namespace `ConfigMap` of the same name.
    let checked = harness.check(&review(pod(json!({INJECT: "agent"})), "apps")).await;
    assert_eq!(containers(checked.patched()), vec!["app", "agent"]);
    harness
        .check(&review(pod(json!({INJECT: "broken"})), "apps"))
        .await
        .assert_denied("ConfigMap apps/broken key sidecars.yaml");
    harness.check(&review(pod(json!({INJECT: "missing"})), "apps")).await.assert_denied(
        "sidecar `missing` is not in the catalog (known: agent, clash, logger, privileged, proxy) nor a ConfigMap with a sidecars catalog in namespace `apps`",
    );
}

#[tokio::test]
async fn caps_deny_naming_the_cap_and_its_configuration_key() {
    let mut config = Config::default();
    config.limits.max_inject_names = 2;
    config.limits.max_env_annotations = 2;
    config.limits.max_annotation_bytes = 200;
    let h = harness_with(&config);
    let run = |annotations: Value| {
        let h = &h;
        async move { h.check(&review(pod(annotations), "apps")).await }
    };
    // At each cap: admitted.
    let at = run(json!({INJECT: "agent, logger, agent", "sidecar-injector.expedia.com/a": "1", "sidecar-injector.expedia.com/b": "2"})).await;
    assert_eq!(containers(at.patched()), vec!["app", "agent", "logger"], "repeats count once: {:?}", at.answer());
    // One past each: denied, and the message says which cap and where to raise it.
    run(json!({INJECT: "agent, logger, proxy"})).await.assert_denied(
        "annotation `sidecar-injector.expedia.com/inject` names 3 sidecars; the limit is 2 (configuration key `limits.maxInjectNames`)",
    );
    run(json!({INJECT: "agent", "sidecar-injector.expedia.com/a": "1", "sidecar-injector.expedia.com/b": "2", "sidecar-injector.expedia.com/c": "3"}))
        .await
        .assert_denied("the pod has 3 env var annotations under `sidecar-injector.expedia.com/`; the limit is 2 (configuration key `limits.maxEnvAnnotations`)");
    let big = run(json!({INJECT: "agent", "sidecar-injector.expedia.com/a": "x".repeat(200)})).await;
    big.assert_denied("the limit is 200 (configuration key `limits.maxAnnotationBytes`)");
    // Annotations outside the prefix are not the injector's business.
    let other = run(json!({INJECT: "agent", "example.com/big": "x".repeat(1000)})).await;
    assert_eq!(containers(other.patched()), vec!["app", "agent"]);
}

#[tokio::test]
async fn hostile_annotation_counts_cost_linear_time() {
    // 60,000 names under the default caps: denied at once, before any catalog lookup.
    let names: Vec<String> = (0..60_000).map(|i| format!("s{i}")).collect();
    let started = std::time::Instant::now();
    check(pod(json!({INJECT: names.join(",")})), "apps").await.assert_denied("`limits.maxAnnotationBytes`");
    let mut config = Config::default();
    config.limits.max_inject_names = 100_000;
    config.limits.max_annotation_bytes = usize::MAX;
    config.unknown_sidecar = crate::settings::UnknownSidecarPolicy::Warn;
    harness_with(&config).run(&review(pod(json!({INJECT: names.join(",")})), "apps")).await;
    // 20,000 env annotations with the caps raised: one map lookup per variable per container.
    config.limits.max_env_annotations = 100_000;
    config.annotation_env.max_vars = 100_000;
    let mut annotations = serde_json::Map::new();
    annotations.insert(INJECT.to_owned(), json!("agent, logger"));
    for i in 0..20_000 {
        annotations.insert(format!("sidecar-injector.expedia.com/v{i}"), json!("x"));
    }
    let outcome = harness_with(&config).run(&review(pod(Value::Object(annotations)), "apps")).await;
    assert!(outcome.answer.allowed);
    // Quadratic code took tens of seconds here even in release builds; linear code takes well
    // under one second in a debug build.
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(15), "took {elapsed:?}");
}

#[tokio::test]
async fn env_names_kubernetes_reads_as_directories_are_refused() {
    for bad in [".", "..", "..x"] {
        assert!(!is_env_var_name(bad), "`{bad}` must be refused, as Kubernetes does");
        let key = format!("sidecar-injector.expedia.com/{bad}");
        check(pod(json!({INJECT: "agent", key: "v"})), "apps")
            .await
            .assert_denied(&format!("would become env var `{bad}`, which Kubernetes rejects"));
    }
    for good in [".x", "a..b", "x..", "-", "_"] {
        assert!(is_env_var_name(good), "`{good}` is a valid env var name");
    }
}

#[tokio::test]
async fn injections_are_counted_only_for_admitted_pods() {
    let mut registry = admission_kit::metrics::Metrics::default();
    let metrics = crate::metrics::InjectorMetrics::register(&mut registry);
    let pipeline =
        crate::pipeline(&Config::default(), Arc::new(CatalogStore::fixed(catalog())), Some(&metrics)).unwrap();
    let h = Harness::new(pipeline).namespace("apps", [("kubernetes-sidecar-injector", "enabled")]);
    let injected = |sidecar: &str| {
        metrics
            .injections
            .get_or_create(&crate::metrics::InjectionLabels {
                sidecar: sidecar.to_owned(),
                outcome: "injected".to_owned(),
            })
            .get()
    };
    // `agent` is injected, then `clash` collides: the pod is denied, so nothing was injected.
    let denied = h.run(&review(pod(json!({INJECT: "agent, clash"})), "apps")).await;
    assert!(!denied.answer.allowed);
    // Injected, then denied by the env step.
    let denied = h.run(&review(pod(json!({INJECT: "agent", "sidecar-injector.expedia.com/..x": "v"})), "apps")).await;
    assert!(!denied.answer.allowed);
    assert_eq!(injected("agent"), 0, "denied pods are not counted as injected");
    let admitted = h.run(&review(pod(json!({INJECT: "agent, logger"})), "apps")).await;
    assert!(admitted.answer.allowed);
    assert_eq!((injected("agent"), injected("logger")), (1, 1));
}

#[tokio::test]
async fn a_hand_written_status_does_not_bring_annotation_env_into_the_pods_own_containers() {
    let status = json!({"sidecars": ["agent"], "containers": ["app", "agent"]}).to_string();
    let mut p = pod(json!({INJECT: "agent", STATUS: status, "sidecar-injector.expedia.com/SECRET_SINK": "v"}));
    p["spec"]["initContainers"] = json!([{"name": "agent", "image": "mine:1"}]);
    let checked = check(p, "apps").await;
    checked.assert_unchanged();
    assert_eq!(env_of(checked.patched(), "app"), &Value::Null);
    assert_eq!(env_of(checked.patched(), "agent"), &Value::Null, "a pod's own container, even named like a sidecar");
}

#[tokio::test]
async fn long_loops_stop_at_the_reviews_deadline() {
    use admission_kit::matcher::NamespaceView;
    use admission_kit::prelude::{Context, DynamicMutator as _, MutationError};
    let mut config = Config::default();
    config.limits.max_inject_names = 100_000;
    config.limits.max_env_annotations = 100_000;
    config.limits.max_annotation_bytes = usize::MAX;
    config.unknown_sidecar = crate::settings::UnknownSidecarPolicy::Warn;
    let settings = Arc::new(config.injection());
    let names: Vec<String> = (0..1_000).map(|i| format!("s{i}")).collect();
    let mut annotations = serde_json::Map::new();
    annotations.insert(INJECT.to_owned(), json!(names.join(",")));
    for i in 0..1_000 {
        annotations.insert(format!("sidecar-injector.expedia.com/v{i}"), json!("x"));
    }
    annotations.insert(STATUS.to_owned(), json!(r#"{"sidecars":["agent"],"containers":["agent"]}"#));
    let mut pod = pod(Value::Object(annotations));
    let request = review(pod.clone(), "apps").request;
    let past = tokio::time::Instant::now() - std::time::Duration::from_millis(1);

    // The env step: past its deadline, it stops instead of working through the annotations.
    let env = EnvFromAnnotations::new(&settings);
    let mut late = Context::new(&request, NamespaceView::unknown()).with_deadline(past);
    let stopped = env.mutate(&mut pod, &mut late).await;
    assert!(matches!(stopped, Err(MutationError::DeadlineExceeded)), "{stopped:?}");
    // In time, the same work completes.
    let mut in_time =
        Context::new(&request, NamespaceView::unknown()).with_deadline(past + std::time::Duration::from_secs(60));
    env.mutate(&mut pod.clone(), &mut in_time).await.expect("in time");

    // The sidecar step: the names loop looks at the deadline too (the status is removed, so that
    // the step works through the names).
    pod["metadata"]["annotations"].as_object_mut().unwrap().remove(STATUS);
    let sidecars = SidecarMutator::new(Arc::new(CatalogStore::fixed(catalog())), settings);
    let mut late = Context::new(&request, NamespaceView::unknown()).with_deadline(past);
    let stopped = sidecars.mutate(&mut pod, &mut late).await;
    assert!(matches!(stopped, Err(MutationError::DeadlineExceeded)), "{stopped:?}");
}

#[tokio::test]
async fn objects_that_do_not_decode_as_pods_are_denied_with_400_naming_the_field() {
    for (spec, field) in [
        (json!("oops"), "`spec`: invalid type: string \"oops\", expected PodSpec"),
        (json!({"containers": "oops"}), "`spec.containers`: invalid type: string \"oops\", expected a sequence"),
        (json!({"containers": [], "volumes": 7}), "`spec.volumes`: invalid type: integer `7`, expected a sequence"),
    ] {
        let mut pod = pod(json!({INJECT: "agent"}));
        pod["spec"] = spec;
        let review = review_json(pod, &ResourceTarget::of::<Pod>()).namespace("apps").uid("u-bad").build();
        let outcome = harness().run(&review).await;
        assert!(!outcome.answer.allowed, "{field}");
        assert_eq!(outcome.answer.code, 400);
        assert_eq!(outcome.answer.uid, "u-bad");
        assert!(outcome.answer.patch.is_none());
        assert!(outcome.answer.message.ends_with(field), "{}", outcome.answer.message);
    }
}

#[tokio::test]
async fn the_inject_annotation_name_is_configurable() {
    let mut config = Config::default();
    config.inject_annotation_name = "sidecars".to_owned();
    config.check().expect("a valid name");
    let h = harness_with(&config);
    let asked = h.check(&review(pod(json!({"sidecar-injector.expedia.com/sidecars": "agent"})), "apps")).await;
    assert_eq!(containers(asked.patched()), vec!["app", "agent"]);
    // The default name is then an ordinary annotation: nothing is injected for it.
    let old = h.check(&review(pod(json!({INJECT: "agent"})), "apps")).await;
    old.assert_unchanged();
    for bad in ["", "status", "a/b", "in ject"] {
        config.inject_annotation_name = bad.to_owned();
        let error = config.check().unwrap_err().to_string();
        assert!(error.contains("injectAnnotationName"), "{bad:?}: {error}");
    }
}

/// A catalog with env rules of its own: `agent` takes only `api-key` and short values and skips
/// what breaks its rules; `java` may take `JAVA_TOOL_OPTIONS`; `plain` follows the configuration's.
fn ruled_harness(config: &Config) -> Harness {
    let text = r"
- name: agent
  containers: [{name: agent, image: agent:1, env: [{name: MODE, value: catalog}]}]
  annotationEnv: {allow: [api-key], maxValueBytes: 16, onViolation: skip}
- name: java
  containers: [{name: java, image: java:1}]
  annotationEnv: {exempt: [JAVA_TOOL_OPTIONS], deny: [TEAM_*]}
- name: plain
  containers: [{name: plain, image: plain:1}]
  initContainers: [{name: plain-init, image: plain:1}]
";
    let mut catalog = Catalog::new();
    catalog.extend(parse_catalog(text, "test").unwrap(), "test").unwrap();
    let pipeline = crate::pipeline(config, Arc::new(CatalogStore::fixed(catalog)), None).unwrap();
    Harness::new(pipeline).namespace("apps", [("kubernetes-sidecar-injector", "enabled")])
}

fn with_env(inject: &str, env: &[(&str, &str)]) -> Value {
    let mut annotations = serde_json::Map::new();
    annotations.insert(INJECT.to_owned(), json!(inject));
    for (key, value) in env {
        annotations.insert(format!("sidecar-injector.expedia.com/{key}"), json!(value));
    }
    pod(Value::Object(annotations))
}

#[tokio::test]
async fn loader_and_runtime_hook_names_are_denied_and_an_api_key_still_arrives() {
    let h = ruled_harness(&Config::default());
    for name in ["LD_PRELOAD", "LD_LIBRARY_PATH", "GCONV_PATH", "JAVA_TOOL_OPTIONS", "NODE_OPTIONS", "PYTHONSTARTUP"] {
        let denied = h.check(&review(with_env("plain", &[("api-key", "k"), (name, "/tmp/x")]), "apps")).await;
        denied.assert_denied(&format!(
            "sidecar `plain` (container `plain-init`): annotation `sidecar-injector.expedia.com/{name}` may not set env var `{name}`: it matches"
        ));
        denied.assert_denied("of the built-in deny-list");
    }
    // The seed's documented use: an api-key annotation reaches every injected container.
    let admitted = h.check(&review(with_env("plain", &[("some-api-key", "6feab")]), "apps")).await;
    for container in ["plain", "plain-init"] {
        assert_eq!(env_of(admitted.patched(), container), &json!([{"name": "some-api-key", "value": "6feab"}]));
    }
    // Names are judged as the container will see them: `ld-preload` becomes `LD_PRELOAD`.
    let mut config = Config::default();
    config.env_names = crate::settings::EnvNames::CIdentifier;
    ruled_harness(&config)
        .check(&review(with_env("plain", &[("ld-preload", "/tmp/x")]), "apps"))
        .await
        .assert_denied("annotation `sidecar-injector.expedia.com/ld-preload` may not set env var `LD_PRELOAD`");
}

#[tokio::test]
async fn a_catalog_entry_narrows_what_its_containers_take_and_skips_with_warnings() {
    let h = ruled_harness(&Config::default());
    let env = [("api-key", "k"), ("other", "o"), ("MODE", "m")];
    let outcome = h.check(&review(with_env("agent, plain", &env), "apps")).await;
    let patched = outcome.patched();
    // agent: only api-key (its allow-list); `other` is not allowed, `MODE` is its own var, locked.
    assert_eq!(
        env_of(patched, "agent"),
        &json!([{"name": "MODE", "value": "catalog"}, {"name": "api-key", "value": "k"}])
    );
    // plain follows the configuration: everything not denied.
    assert_eq!(
        env_of(patched, "plain"),
        &json!([{"name": "MODE", "value": "m"}, {"name": "api-key", "value": "k"}, {"name": "other", "value": "o"}])
    );
    let warnings = &outcome.answer().warnings;
    assert_eq!(
        warnings,
        &vec![
            "sidecar `agent` (container `agent`): annotation `sidecar-injector.expedia.com/MODE` may not set env var `MODE`: the key matches none of the catalog entry's `annotationEnv.allow` (`api-key`); not set".to_owned(),
            "sidecar `agent` (container `agent`): annotation `sidecar-injector.expedia.com/other` may not set env var `other`: the key matches none of the catalog entry's `annotationEnv.allow` (`api-key`); not set".to_owned(),
        ]
    );
    // A value over the entry's maxValueBytes is skipped too, naming the limit.
    let long = h.check(&review(with_env("agent", &[("api-key", "0123456789abcdefX")]), "apps")).await;
    assert!(env_of(long.patched(), "agent").as_array().unwrap().iter().all(|e| e["name"] != "api-key"));
    assert!(
        long.answer().warnings[0].contains(
            "its value is 17 bytes, over the limit of 16 (the catalog entry's `annotationEnv.maxValueBytes`)"
        ),
        "{:?}",
        long.answer().warnings
    );
}

#[tokio::test]
async fn exempt_and_deny_apply_to_their_entry_only() {
    let h = ruled_harness(&Config::default());
    let java = h.check(&review(with_env("java", &[("JAVA_TOOL_OPTIONS", "-Xmx1g")]), "apps")).await;
    assert_eq!(env_of(java.patched(), "java"), &json!([{"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx1g"}]));
    // The same annotation with `plain` injected too: plain has no exemption.
    h.check(&review(with_env("java, plain", &[("JAVA_TOOL_OPTIONS", "-Xmx1g")]), "apps")).await.assert_denied(
        "sidecar `plain` (container `plain-init`): annotation `sidecar-injector.expedia.com/JAVA_TOOL_OPTIONS`",
    );
    // The exemption lifts only what it names; the entry's own deny adds to the configuration's.
    h.check(&review(with_env("java", &[("LD_PRELOAD", "x")]), "apps")).await.assert_denied("built-in deny-list");
    h.check(&review(with_env("java", &[("team_token", "x")]), "apps"))
        .await
        .assert_denied("it matches `TEAM_*` of the catalog entry's `annotationEnv.deny`");
    let plain = h.check(&review(with_env("plain", &[("team_token", "x")]), "apps")).await;
    assert_eq!(env_of(plain.patched(), "plain"), &json!([{"name": "team_token", "value": "x"}]));
}

#[tokio::test]
async fn the_configuration_sets_the_defaults_and_skipping_warns_a_bounded_number_of_times() {
    let mut config = Config::default();
    config.annotation_env = serde_json::from_value(json!({
        "deny": ["secret-*"], "maxVars": 2, "onViolation": "skip",
    }))
    .unwrap();
    let h = ruled_harness(&config);
    let env: Vec<(String, &str)> = (0..30).map(|i| (format!("v{i:02}"), "x")).collect();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    env.push(("SECRET-x", "s"));
    let outcome = h.check(&review(with_env("plain", &env), "apps")).await;
    // Two vars per container (maxVars), in name order; the deny pattern ignores case.
    assert_eq!(
        env_of(outcome.patched(), "plain"),
        &json!([{"name": "v00", "value": "x"}, {"name": "v01", "value": "x"}])
    );
    let warnings = &outcome.answer().warnings;
    assert_eq!(warnings.len(), 11, "ten named, then a count: {warnings:?}");
    assert!(
        warnings[0].contains("`SECRET-x`: it matches `secret-*` of the configuration's `annotationEnv.deny`"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains(
            "annotations would set more than 2 env vars in this container (the configuration's `annotationEnv.maxVars`)"
        ),
        "{}",
        warnings[1]
    );
    assert!(warnings[10].starts_with("48 more env vars"), "{}", warnings[10]);
}

#[test]
fn a_catalog_entry_with_a_bad_rule_is_refused_naming_it() {
    let error = parse_catalog(
        "- name: a\n  containers: [{name: a, image: a}]\n  annotationEnv: {allow: ['api-[key']}\n",
        "c.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("[0].annotationEnv.allow") && error.contains("`api-[key` is not a glob pattern"), "{error}");
    let error = parse_catalog("- name: a\n  annotationEnv: {alow: ['*']}\n", "c.yaml").unwrap_err().to_string();
    assert!(error.contains("alow"), "{error}");
}

/// Collisions on every kind of item: a volume, an init container (with a pod container of the
/// same name), and a pull secret the pod already lists (harmless: added once, never a collision).
#[tokio::test]
async fn volume_init_container_and_pull_secret_collisions() {
    let mut p = pod(json!({INJECT: "logger"}));
    p["spec"]["volumes"] = json!([{"name": "logs", "hostPath": {"path": "/var/log"}}]);
    check(p.clone(), "apps")
        .await
        .assert_denied("sidecar `logger` adds volume `logs`, but the pod already has one with that name");
    let mut skip = Config::default();
    skip.on_collision = crate::settings::CollisionPolicy::Skip;
    let skipped = harness_with(&skip).check(&review(p, "apps")).await;
    let volumes = &skipped.patched()["spec"]["volumes"];
    assert_eq!(volumes, &json!([{"name": "logs", "hostPath": {"path": "/var/log"}}]), "the pod's own volume is kept");
    assert!(skipped.answer().warnings.iter().any(|w| w.contains("volume `logs`") && w.contains("skipped")));

    let mut p = pod(json!({INJECT: "logger"}));
    p["spec"]["containers"] = json!([{"name": "app", "image": "app:1"}, {"name": "logger-init", "image": "mine:1"}]);
    check(p, "apps").await.assert_denied(
        "sidecar `logger` adds init container `logger-init`, but the pod already has one with that name",
    );

    let mut p = pod(json!({INJECT: "agent, logger"}));
    p["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    let checked = check(p, "apps").await;
    assert_eq!(checked.patched()["spec"]["imagePullSecrets"], json!([{"name": "regcred"}]), "listed once");
}
