use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};

use super::*;
use crate::matcher;
use crate::mutator::{Context, MutationError, MutationResult, Mutator};
use crate::review::Request;

/// No `Debug`: a mutator needs none.
struct AddSidecar;

#[async_trait]
impl Mutator<Pod> for AddSidecar {
    async fn mutate(&self, pod: &mut Pod, ctx: &mut Context<'_>) -> MutationResult {
        let spec = pod.spec.get_or_insert_default();
        if spec.containers.iter().any(|c| c.name == "sidecar") {
            return Ok(());
        }
        spec.containers.push(Container {
            name: "sidecar".into(),
            image: Some("busybox".into()),
            ..Container::default()
        });
        pod.metadata.annotations.get_or_insert_default().insert("injected.example.com/by".into(), "test".into());
        ctx.warn("sidecar added");
        ctx.audit_annotation("sidecar", "added");
        Ok(())
    }
}

struct AddLabel;

#[async_trait]
impl Mutator<Pod> for AddLabel {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        pod.metadata.labels.get_or_insert_default().insert("after".into(), "yes".into());
        Ok(())
    }
}

struct Fails(&'static str);

#[async_trait]
impl Mutator<Pod> for Fails {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        pod.metadata.labels.get_or_insert_default().insert("partial".into(), "change".into());
        match self.0 {
            "deny" => Err(MutationError::deny("pods here need an owner label")),
            "panic" => panic!("boom"),
            "sleep" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            }
            _ => Err(MutationError::caused_by("catalog unavailable", std::io::Error::other("connection refused"))),
        }
    }
}

fn pod_review(object: Value, namespace: &str, operation: Operation) -> Review {
    Request::of_json(object, &ResourceTarget::of::<Pod>())
        .uid("uid-1")
        .namespace(namespace)
        .operation(operation)
        .for_review()
        .build()
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "creationTimestamp": null, "annotations": {"keep/me": "1"}, "futureMeta": 7},
        "spec": {"containers": [{"name": "app", "image": "app:1", "futureField": {"x": [1]}}], "futureSpec": "kept"},
    })
}

fn pipeline(steps: Vec<Step>) -> Pipeline {
    steps.into_iter().fold(Pipeline::builder("test.example.com"), PipelineBuilder::step).build().unwrap()
}

#[tokio::test]
async fn typed_mutation_patches_only_what_changed() {
    let p = pipeline(vec![Step::new("sidecar", AddSidecar)]);
    let out = p.review(&pod_review(pod(), "apps", Operation::Create), NamespaceView::unknown()).await;
    assert!(out.answer.allowed);
    let patch = serde_json::to_value(out.answer.patch.unwrap()).unwrap();
    assert_eq!(
        patch,
        json!([
            {"op": "add", "path": "/metadata/annotations/injected.example.com~1by", "value": "test"},
            {"op": "add", "path": "/spec/containers/1", "value": {"name": "sidecar", "image": "busybox"}},
        ])
    );
    assert_eq!(out.answer.warnings, vec!["sidecar added"]);
    assert_eq!(out.answer.audit_annotations.get("sidecar").map(String::as_str), Some("added"));
    let mutated = out.mutated.unwrap();
    assert_eq!(mutated["spec"]["containers"][0]["futureField"], json!({"x": [1]}));
    assert_eq!(mutated["metadata"]["futureMeta"], 7);
    assert_eq!(mutated["metadata"]["creationTimestamp"], Value::Null);
}

#[tokio::test]
async fn operations_kinds_and_subresources_filter_steps() {
    let p = pipeline(vec![Step::new("sidecar", AddSidecar)]);
    let update = p.review(&pod_review(pod(), "apps", Operation::Update), NamespaceView::unknown()).await;
    assert!(update.answer.allowed && update.answer.patch.is_none());
    assert!(matches!(&update.steps[0].result, StepResult::Skipped(r) if r.contains("Update")));
    let mut svc = pod_review(json!({"metadata": {}}), "apps", Operation::Create);
    svc.request.kind.kind = "Service".into();
    assert!(p.review(&svc, NamespaceView::unknown()).await.answer.patch.is_none());
    let mut status = pod_review(pod(), "apps", Operation::Create);
    status.request.sub_resource = Some("status".into());
    assert!(p.review(&status, NamespaceView::unknown()).await.answer.patch.is_none());
    let mut delete = pod_review(pod(), "apps", Operation::Delete);
    delete.request.object = None;
    assert!(p.review(&delete, NamespaceView::unknown()).await.answer.allowed);
}

#[tokio::test]
async fn denial_failure_modes_and_panics() {
    let review = pod_review(pod(), "apps", Operation::Create);
    let denied = pipeline(vec![Step::new("owner", Fails("deny")).on_error(FailureMode::AllowWithWarning)])
        .review(&review, NamespaceView::unknown())
        .await;
    assert!(!denied.answer.allowed, "a denial is a decision, whatever the failure mode");
    assert_eq!(denied.answer.message, "pods here need an owner label");
    assert_eq!(denied.answer.code, 403);

    let failed = pipeline(vec![Step::new("catalog", Fails("fail"))]).review(&review, NamespaceView::unknown()).await;
    assert!(!failed.answer.allowed);
    assert_eq!(failed.answer.message, "catalog failed: catalog unavailable: connection refused");

    let lenient = pipeline(vec![
        Step::new("catalog", Fails("fail")).on_error(FailureMode::AllowWithWarning),
        Step::new("sidecar", AddSidecar),
    ])
    .review(&review, NamespaceView::unknown())
    .await;
    assert!(lenient.answer.allowed);
    assert!(
        lenient.answer.warnings[0].contains("catalog failed, admitted without its change"),
        "{:?}",
        lenient.answer.warnings
    );
    let mutated = lenient.mutated.unwrap();
    assert!(mutated["metadata"].get("labels").is_none(), "a failed step leaves no partial change");
    assert_eq!(mutated["spec"]["containers"][1]["name"], "sidecar", "later steps still run");

    let panicked = pipeline(vec![Step::new("buggy", Fails("panic")).on_error(FailureMode::AllowWithWarning)])
        .review(&review, NamespaceView::unknown())
        .await;
    assert!(!panicked.answer.allowed);
    assert!(
        panicked.answer.message.contains("buggy panicked") && panicked.answer.message.contains("boom"),
        "{}",
        panicked.answer.message
    );
}

#[tokio::test]
async fn deadline_fails_a_slow_step_in_time() {
    let review = pod_review(pod(), "apps", Operation::Create);
    let p = pipeline(vec![
        Step::new("slow", Fails("sleep")).on_error(FailureMode::AllowWithWarning),
        Step::new("sidecar", AddSidecar).on_error(FailureMode::AllowWithWarning),
    ]);
    let started = std::time::Instant::now();
    let out =
        p.review_until(&review, NamespaceView::unknown(), Some(Instant::now() + Duration::from_millis(100))).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(out.answer.allowed);
    assert!(out.answer.patch.is_none(), "neither step's change is admitted");
    assert!(out.answer.warnings[0].contains("slow failed") && out.answer.warnings[0].contains("deadline"));
    // The step after the deadline does not start: it fails by its own mode too.
    assert_eq!(
        out.answer.warnings[1],
        "test.example.com: sidecar failed, admitted without its change: the API server's deadline passed before it could run"
    );

    // A step that must not be skipped denies once the deadline has passed before it.
    let strict = pipeline(vec![
        Step::new("slow", Fails("sleep")).on_error(FailureMode::AllowWithWarning),
        Step::new("sidecar", AddSidecar),
    ]);
    let out =
        strict.review_until(&review, NamespaceView::unknown(), Some(Instant::now() + Duration::from_millis(100))).await;
    assert!(!out.answer.allowed);
    assert_eq!(out.answer.code, 500);
    assert_eq!(out.answer.message, "sidecar failed: the API server's deadline passed before it could run");
}

#[tokio::test]
async fn undecodable_objects_are_denied_with_400_naming_the_field_for_every_step_kind() {
    /// A raw-JSON step that would happily overwrite whatever it finds.
    struct Overwrite;
    #[async_trait]
    impl crate::mutator::DynamicMutator for Overwrite {
        async fn mutate(&self, pod: &mut Value, _: &mut Context<'_>) -> MutationResult {
            pod["spec"]["containers"] = json!([{"name": "sidecar"}]);
            Ok(())
        }
    }
    let cases = [
        // A string where a list belongs.
        (
            json!({"spec": {"containers": "oops"}}),
            "`spec.containers`: invalid type: string \"oops\", expected a sequence",
        ),
        // A number where an object belongs.
        (json!({"spec": 7}), "`spec`: invalid type: integer `7`, expected PodSpec"),
        // Null where a map of strings is required.
        (
            json!({"metadata": {"labels": {"app": null}}, "spec": {"containers": []}}),
            "`metadata.labels.app`: invalid type: null, expected a string",
        ),
    ];
    for (object, field) in cases {
        let review = pod_review(object.clone(), "apps", Operation::Create);
        for (kind, step) in [
            ("typed", Step::new("sidecar", AddSidecar)),
            ("typed, lenient", Step::new("sidecar", AddSidecar).on_error(FailureMode::AllowWithWarning)),
            ("raw JSON", Step::dynamic("sidecar", ResourceTarget::of::<Pod>(), Overwrite)),
            (
                "raw JSON, lenient",
                Step::dynamic("sidecar", ResourceTarget::of::<Pod>(), Overwrite)
                    .on_error(FailureMode::AllowWithWarning),
            ),
        ] {
            let out = pipeline(vec![step]).review(&review, NamespaceView::unknown()).await;
            assert!(!out.answer.allowed, "{kind} {object}: {:?}", out.answer);
            assert_eq!(out.answer.code, 400, "{kind} {object}");
            assert_eq!(out.answer.uid, "uid-1");
            assert_eq!(out.answer.message, format!("sidecar: the object does not decode as v1 Pod: {field}"), "{kind}");
            assert!(out.answer.patch.is_none());
        }
    }
    // A raw-JSON step on a target without a type (a custom resource) is not checked.
    let custom = ResourceTarget::new("", "v1", "Pod", "pods");
    let review = pod_review(json!({"spec": {"containers": "oops"}}), "apps", Operation::Create);
    let out =
        pipeline(vec![Step::dynamic("sidecar", custom, Overwrite)]).review(&review, NamespaceView::unknown()).await;
    assert!(out.answer.allowed);
}

#[tokio::test]
async fn matchers_gate_steps_and_unknowns_fail_per_mode() {
    let gated = || Step::new("sidecar", AddSidecar).when(matcher::namespace_label("inject", "on"));
    let review = pod_review(pod(), "apps", Operation::Create);
    let on: BTreeMap<String, String> = [("inject".to_owned(), "on".to_owned())].into();
    let off = BTreeMap::new();
    let p = pipeline(vec![gated()]);
    assert!(p.review(&review, NamespaceView::Known(&on)).await.answer.is_patched());
    assert!(!p.review(&review, NamespaceView::Known(&off)).await.answer.is_patched());
    // Labels unknown: the requirement is in the rendered namespaceSelector, so it is trusted.
    assert!(p.review(&review, NamespaceView::unknown()).await.answer.is_patched());
    // Two steps with different requirements: neither is enforced by the webhook as a whole.
    let two = pipeline(vec![gated(), Step::new("other", AddSidecar).when(matcher::namespace_label("other", "on"))]);
    assert!(two.server_filter().namespace.is_empty());
    let out = two.review(&review, NamespaceView::unknown()).await;
    assert!(!out.answer.allowed);
    assert!(out.answer.message.contains("namespace labels are unknown"), "{}", out.answer.message);
}

#[tokio::test]
async fn a_namespace_known_to_have_no_labels_is_not_an_unknown_one() {
    use crate::matcher::{LabelOp, LabelRequirement};
    let unlabelled = || matcher::namespace_labels(LabelRequirement::new("quarantine", LabelOp::DoesNotExist));
    // A second step with another requirement keeps the first out of the webhook's selector.
    let p = pipeline(vec![
        Step::new("a", AddSidecar).when(unlabelled()),
        Step::new("b", AddSidecar).when(matcher::namespace_label("other", "on")),
    ]);
    let review = pod_review(pod(), "apps", Operation::Create);
    let none = BTreeMap::new();
    let known = p.review(&review, NamespaceView::Known(&none)).await;
    assert!(known.answer.is_patched(), "{:?}", known.steps);
    let unknown = p.review(&review, NamespaceView::unknown()).await;
    assert!(!unknown.answer.allowed);
    assert!(unknown.answer.message.contains("namespace labels are unknown"), "{}", unknown.answer.message);
}

#[test]
fn steps_debug_by_name_whatever_their_mutator() {
    let debug = format!("{:?}", pipeline(vec![Step::new("add-sidecar", AddSidecar)]));
    assert!(debug.contains(r#"name: "add-sidecar""#), "{debug}");
}

#[tokio::test]
async fn when_twice_requires_both() {
    let step = Step::new("sidecar", AddSidecar)
        .when(matcher::namespace_label("inject", "on"))
        .when(matcher::has_annotation("keep/me"));
    assert_eq!(step.filter().namespace, matcher::namespace_label("inject", "on").server_filter().namespace);
    assert!(step.filter().condition.is_some_and(|c| c.contains("keep/me")), "the second gate renders too");
    let p = pipeline(vec![step]);
    let on: BTreeMap<String, String> = [("inject".to_owned(), "on".to_owned())].into();
    let off = BTreeMap::new();
    let annotated = pod_review(pod(), "apps", Operation::Create);
    let mut bare = pod();
    bare["metadata"]["annotations"] = json!({});
    let bare = pod_review(bare, "apps", Operation::Create);
    assert!(p.review(&annotated, NamespaceView::Known(&on)).await.answer.is_patched());
    assert!(!p.review(&annotated, NamespaceView::Known(&off)).await.answer.is_patched(), "the first gate still holds");
    let skipped = p.review(&bare, NamespaceView::Known(&on)).await;
    assert!(!skipped.answer.is_patched(), "the second gate holds too");
    assert!(
        matches!(&skipped.steps[0].result, StepResult::Skipped(why) if why.contains("annotation keep/me")),
        "{:?}",
        skipped.steps
    );
}

#[test]
fn webhook_filter_keeps_what_every_step_requires() {
    let ns = || matcher::namespace_label("inject", "on");
    let p = pipeline(vec![
        Step::new("a", AddSidecar).when(matcher::all([Box::new(ns()), Box::new(matcher::has_annotation("a"))])),
        Step::new("b", AddSidecar).when(matcher::all([Box::new(ns()), Box::new(matcher::has_annotation("b"))])),
    ]);
    let f = p.server_filter();
    assert_eq!(f.namespace, vec![ns().0]);
    assert_eq!(
        f.condition.as_deref(),
        Some(
            "(has(object.metadata.annotations) && 'a' in object.metadata.annotations) || (has(object.metadata.annotations) && 'b' in object.metadata.annotations)"
        )
    );
    let ungated = pipeline(vec![Step::new("a", AddSidecar).when(ns()), Step::new("b", AddSidecar)]);
    assert_eq!(ungated.server_filter().condition, None);
    assert!(ungated.server_filter().namespace.is_empty());
}

/// A step gated on the mark the first step writes: it runs on the object the first step left, so the
/// mark an object *arrives* with has to be looked at before any step, by `leave_alone`.
#[tokio::test]
async fn leave_alone_looks_at_the_object_as_it_arrived() {
    let marked = || matcher::has_annotation("injected.example.com/by");
    let p = Pipeline::builder("test.example.com")
        .step(Step::new("sidecar", AddSidecar).when(matcher::has_annotation("keep/me")))
        .step(Step::new("after", AddLabel).when(marked()))
        .leave_alone(marked())
        .build()
        .unwrap();
    assert_eq!(
        p.server_filter().condition.as_deref(),
        Some(
            "((has(object.metadata.annotations) && 'keep/me' in object.metadata.annotations) || (has(object.metadata.annotations) && 'injected.example.com/by' in object.metadata.annotations)) && (!(has(object.metadata.annotations) && 'injected.example.com/by' in object.metadata.annotations))"
        ),
        "some step applies, and the object does not arrive marked"
    );
    let first = p.review(&pod_review(pod(), "apps", Operation::Create), NamespaceView::unknown()).await;
    assert!(first.answer.is_patched());
    assert!(matches!(first.steps[1].result, StepResult::Applied { .. }), "the second step sees the first's mark");
    // A reinvocation: the object arrives as the first review left it, plus another webhook's change.
    let mut again = first.mutated.unwrap();
    again["metadata"]["labels"] = json!({"other": "webhook"});
    let second = p.review(&pod_review(again.clone(), "apps", Operation::Create), NamespaceView::unknown()).await;
    assert!(second.answer.allowed && !second.answer.is_patched());
    assert_eq!(second.mutated.as_ref(), Some(&again));
    assert!(
        second.steps.iter().all(|s| matches!(&s.result, StepResult::Skipped(why) if why.contains("leave_alone"))),
        "{:?}",
        second.steps
    );
}

#[test]
fn leave_alone_must_be_checked_exactly_by_the_api_server() {
    let err = Pipeline::builder("test.example.com")
        .step(Step::new("sidecar", AddSidecar))
        .leave_alone(matcher::namespace_label("done", "yes"))
        .build()
        .unwrap_err();
    assert!(matches!(err, PipelineError::InexactLeaveAlone { .. }), "{err}");
    assert!(err.to_string().contains("namespace labels"), "{err}");
    let ok = Pipeline::builder("test.example.com")
        .step(Step::new("sidecar", AddSidecar))
        .leave_alone(matcher::has_annotation("done"))
        .build()
        .unwrap();
    assert_eq!(
        ok.server_filter().condition.as_deref(),
        Some("!(has(object.metadata.annotations) && 'done' in object.metadata.annotations)"),
        "an ungated step: the condition is the exclusion alone"
    );
}

#[test]
fn builder_rejects_bad_pipelines() {
    assert_eq!(
        Pipeline::builder("short.name").step(Step::new("a", AddSidecar)).build().unwrap_err(),
        PipelineError::BadName("short.name".into())
    );
    assert!(matches!(Pipeline::builder("a.b.c").build(), Err(PipelineError::NoSteps(_))));
    assert!(matches!(
        Pipeline::builder("a.b.c").step(Step::new("x", AddSidecar)).step(Step::new("x", AddSidecar)).build(),
        Err(PipelineError::DuplicateStep { .. })
    ));
    assert!(matches!(
        Pipeline::builder("a.b.c").step(Step::new("x", AddSidecar)).timeout_seconds(31).build(),
        Err(PipelineError::BadTimeout(_, 31))
    ));
    assert!(matches!(
        Pipeline::builder("a.b.c").step(Step::new("x", AddSidecar)).path("mutate").build(),
        Err(PipelineError::BadPath(..))
    ));
}

#[test]
fn rendered_webhook_configuration() {
    use crate::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook_config};
    let p = Pipeline::builder("inject.example.com")
        .step(Step::new("sidecar", AddSidecar).when(matcher::all([
            Box::new(matcher::namespace_label("inject", "on")),
            Box::new(matcher::has_annotation("x.io/inject")),
        ])))
        .reinvocation(ReinvocationPolicy::IfNeeded)
        .failure_policy(FailurePolicy::Ignore)
        .timeout_seconds(5)
        .build()
        .unwrap();
    let options = WebhookConfigOptions::new(
        "injector",
        ClientTarget::Service { namespace: "sys".into(), name: "inj".into(), port: 443 },
    )
    .ca_bundle(b"PEM".to_vec())
    .exclude_namespaces(["sys"]);
    let config = serde_json::to_value(render_webhook_config(&[p], &options)).unwrap();
    let hook = &config["webhooks"][0];
    assert_eq!(config["metadata"]["name"], "injector");
    assert_eq!(hook["name"], "inject.example.com");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["admissionReviewVersions"], json!(["v1"]));
    assert_eq!(hook["failurePolicy"], "Ignore");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(
        hook["rules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"], "scope": "*"}])
    );
    assert_eq!(
        hook["namespaceSelector"],
        json!({"matchExpressions": [
            {"key": "inject", "operator": "In", "values": ["on"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["sys"]},
        ]})
    );
    assert_eq!(hook["objectSelector"], json!({}));
    assert_eq!(
        hook["matchConditions"],
        json!([{"name": "admission-kit-matchers", "expression": "object == null || (has(object.metadata.annotations) && 'x.io/inject' in object.metadata.annotations)"}])
    );
    assert_eq!(
        hook["clientConfig"]["service"],
        json!({"namespace": "sys", "name": "inj", "path": "/mutate", "port": 443})
    );
    assert_eq!(hook["clientConfig"]["caBundle"], "UEVN");
}

#[test]
fn namespace_requirements_are_split_into_trusted_and_undecidable() {
    let shared = || matcher::namespace_label("inject", "on");
    let p = pipeline(vec![
        Step::new("a", AddSidecar)
            .when(matcher::all([Box::new(shared()), Box::new(matcher::namespace_not_in(["kube-system"]))])),
        Step::new("b", AddSidecar)
            .when(matcher::all([Box::new(shared()), Box::new(matcher::namespace_label("tier", "gold"))])),
    ]);
    let (trusted, unchecked) = p.namespace_label_needs();
    assert_eq!(trusted, vec![shared().0]);
    // The name requirement is decided from the request's namespace, never from labels.
    assert_eq!(unchecked, vec![matcher::namespace_label("tier", "gold").0]);
    // Requirements under `any`/`not` cannot be rendered as a namespaceSelector: they are named too.
    let nested = pipeline(vec![
        Step::new("a", AddSidecar)
            .when(matcher::any([Box::new(matcher::namespace_label("x", "y")), Box::new(matcher::has_annotation("z"))])),
    ]);
    assert_eq!(nested.namespace_label_needs(), (vec![], vec![matcher::namespace_label("x", "y").0]));
}

/// Sets a label on the raw object, then fails or succeeds: a step that has changed the object in
/// place when its error comes.
struct LabelThen(Result<(), &'static str>);

#[async_trait]
impl DynamicMutator for LabelThen {
    async fn mutate(&self, object: &mut Value, _: &mut Context<'_>) -> MutationResult {
        object["metadata"]["labels"] = json!({"set-by": "label-then"});
        self.0.map_err(|e| MutationError::caused_by("half done", std::io::Error::other(e)))
    }
}

/// Each step's result: `skipped` (or any other result but `Applied`), `changed`, `unchanged`, or
/// `untracked`.
fn changes(outcome: &Outcome) -> Vec<&'static str> {
    outcome
        .steps
        .iter()
        .map(|r| match r.result {
            StepResult::Applied { changed: Some(true) } => "changed",
            StepResult::Applied { changed: Some(false) } => "unchanged",
            StepResult::Applied { changed: None } => "untracked",
            _ => "skipped",
        })
        .collect()
}

/// Three steps that do not apply, then two that change the pod and two that repeat them.
fn skipped_changing_and_repeated_steps() -> Pipeline {
    let target = ResourceTarget::of::<Pod>();
    pipeline(vec![
        Step::new("unchanged-first", Fails("never")).when(matcher::has_annotation("absent.example.com/x")),
        Step::new("sidecar-again-first", AddSidecar).when(matcher::has_annotation("absent.example.com/x")),
        Step::dynamic("label-first", target.clone(), LabelThen(Ok(())))
            .when(matcher::has_annotation("absent.example.com/x")),
        Step::new("sidecar", AddSidecar),
        Step::new("sidecar-again", AddSidecar),
        Step::dynamic("label", target.clone(), LabelThen(Ok(()))),
        Step::dynamic("label-again", target, LabelThen(Ok(()))),
    ])
}

#[tokio::test]
async fn each_step_reports_whether_it_changed_the_object_when_asked() {
    let review = pod_review(pod(), "apps", Operation::Create);
    let outcome =
        skipped_changing_and_repeated_steps().review_reporting_changes(&review, NamespaceView::unknown()).await;
    assert_eq!(
        changes(&outcome),
        vec!["skipped", "skipped", "skipped", "changed", "unchanged", "changed", "unchanged"]
    );
}

#[tokio::test]
async fn a_plain_review_tells_changes_up_to_the_first_and_the_same_answer() {
    let review = pod_review(pod(), "apps", Operation::Create);
    let plain = skipped_changing_and_repeated_steps().review(&review, NamespaceView::unknown()).await;
    assert_eq!(
        changes(&plain),
        vec!["skipped", "skipped", "skipped", "changed", "untracked", "untracked", "untracked"]
    );
    let detailed =
        skipped_changing_and_repeated_steps().review_reporting_changes(&review, NamespaceView::unknown()).await;
    assert_eq!(plain.answer, detailed.answer, "tracking changes never changes the answer");
    assert_eq!(plain.mutated, detailed.mutated);

    // A first step that changes nothing is told exactly, and so is the next one.
    let unchanged_first = pipeline(vec![Step::new("sidecar", AddSidecar), Step::new("sidecar-again", AddSidecar)]);
    let injected = unchanged_first.review(&review, NamespaceView::unknown()).await.mutated.unwrap();
    let again = pod_review(injected, "apps", Operation::Create);
    let outcome = unchanged_first.review(&again, NamespaceView::unknown()).await;
    assert_eq!(changes(&outcome), vec!["unchanged", "unchanged"]);
}

#[tokio::test]
async fn a_lenient_step_failing_after_its_own_change_is_rolled_back_to_the_earlier_steps_result() {
    let review = pod_review(pod(), "apps", Operation::Create);
    let outcome = pipeline(vec![
        Step::new("sidecar", AddSidecar),
        Step::dynamic("label", ResourceTarget::of::<Pod>(), LabelThen(Err("no")))
            .on_error(FailureMode::AllowWithWarning),
    ])
    .review(&review, NamespaceView::unknown())
    .await;
    assert!(outcome.answer.allowed);
    let mutated = outcome.mutated.unwrap();
    assert!(mutated["metadata"].get("labels").is_none(), "the failed step's change is rolled back");
    assert_eq!(mutated["spec"]["containers"][1]["name"], "sidecar", "the earlier step's change is kept");
    let patch = serde_json::to_string(outcome.answer.patch.as_ref().unwrap()).unwrap();
    assert!(!patch.contains("label-then"), "{patch}");

    let strict = pipeline(vec![
        Step::new("sidecar", AddSidecar),
        Step::dynamic("label", ResourceTarget::of::<Pod>(), LabelThen(Err("no"))),
    ])
    .review(&review, NamespaceView::unknown())
    .await;
    assert!(!strict.answer.allowed, "a failing step in Deny mode denies");
    assert!(strict.answer.patch.is_none() && strict.mutated.is_none(), "nothing of a denied review is sent");
}

/// What [`Shares`] leaves for later steps: the names of the steps that ran before.
#[derive(Clone, Debug, Default, PartialEq)]
struct Trail(Vec<&'static str>);

/// Appends its name to the [`Trail`] it finds, and labels the object with the trail it found; fails
/// after sharing when asked to.
struct Shares(&'static str, Result<(), &'static str>);

#[async_trait]
impl DynamicMutator for Shares {
    async fn mutate(&self, object: &mut Value, ctx: &mut Context<'_>) -> MutationResult {
        let mut trail = ctx.shared().get::<Trail>().cloned().unwrap_or_default();
        object["metadata"]["labels"][self.0] = json!(trail.0.join("."));
        trail.0.push(self.0);
        ctx.shared_mut().insert(trail);
        self.1.map_err(|e| MutationError::caused_by("after sharing", std::io::Error::other(e)))
    }
}

#[tokio::test]
async fn steps_share_values_within_one_review_and_a_failed_step_leaves_none() {
    let target = ResourceTarget::of::<Pod>();
    let review = pod_review(pod(), "apps", Operation::Create);
    let outcome = pipeline(vec![
        Step::dynamic("a", target.clone(), Shares("a", Ok(()))),
        Step::dynamic("b", target.clone(), Shares("b", Err("no"))).on_error(FailureMode::AllowWithWarning),
        Step::dynamic("c", target.clone(), Shares("c", Ok(()))),
    ])
    .review(&review, NamespaceView::unknown())
    .await;
    assert!(outcome.answer.allowed);
    let labels = &outcome.mutated.as_ref().unwrap()["metadata"]["labels"];
    assert_eq!(labels, &json!({"a": "", "c": "a"}), "c sees what a shared and nothing of the failed b");

    // Each review starts with nothing shared: the same pipeline again gives the same result.
    let again = pipeline(vec![
        Step::dynamic("a", target.clone(), Shares("a", Ok(()))),
        Step::dynamic("c", target, Shares("c", Ok(()))),
    ]);
    for _ in 0..2 {
        let outcome = again.review(&review, NamespaceView::unknown()).await;
        assert_eq!(outcome.mutated.unwrap()["metadata"]["labels"], json!({"a": "", "c": "a"}));
    }
}

/// A CREATE review of `object` in `apps`, as the API server sends it.
fn pod_body(object: Value) -> Vec<u8> {
    Request::of_json(object, &ResourceTarget::of::<Pod>()).uid("uid-1").namespace("apps").for_review().body()
}

/// Writes the pod's managedFields, which a pipeline that sets them aside must not let through.
struct ClaimsFields;

#[async_trait]
impl Mutator<Pod> for ClaimsFields {
    async fn mutate(&self, pod: &mut Pod, _: &mut Context<'_>) -> MutationResult {
        let entry = k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
            manager: Some("claims".into()),
            ..Default::default()
        };
        pod.metadata.managed_fields = Some(vec![entry]);
        Ok(())
    }
}

#[tokio::test]
async fn a_pipeline_setting_managed_fields_aside_patches_as_one_that_keeps_them() {
    let managed = json!([{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
        "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}}}}}}]);
    let mut object = pod();
    object["metadata"]["managedFields"] = managed.clone();
    let body = pod_body(object.clone());
    let steps = || vec![Step::new("sidecar", AddSidecar), Step::new("label", AddLabel)];
    let lean = steps().into_iter().fold(Pipeline::builder("test.example.com"), PipelineBuilder::step);
    let lean = lean.set_aside_managed_fields().build().unwrap();
    assert_eq!(lean.managed_fields(), ManagedFields::SetAside);
    assert_eq!(pipeline(steps()).managed_fields(), ManagedFields::Keep);

    let whole = Review::decode(&body, ManagedFields::Keep).unwrap();
    let set_aside = Review::decode(&body, lean.managed_fields()).unwrap();
    assert!(set_aside.set_aside_managed_fields().is_some());
    let kept = pipeline(steps()).review(&whole, NamespaceView::unknown()).await;
    let lean_out = lean.review(&set_aside, NamespaceView::unknown()).await;
    assert!(lean_out.answer.allowed);
    assert_eq!(lean_out.answer, kept.answer, "the same answer, patch included");
    let patch = serde_json::to_value(lean_out.answer.patch.unwrap()).unwrap();
    let patched = crate::testing::apply_patch(&object, &patch).unwrap();
    assert_eq!(patched["metadata"]["managedFields"], managed, "the API server's are kept as they were");
    assert_eq!(patched["metadata"]["labels"]["after"], "yes");
}

#[tokio::test]
async fn a_step_that_writes_set_aside_managed_fields_fails() {
    let mut object = pod();
    object["metadata"]["managedFields"] = json!([{"manager": "kubectl"}]);
    let body = pod_body(object);
    let review = Review::decode(&body, ManagedFields::SetAside).unwrap();
    let lean = |step: Step| {
        Pipeline::builder("test.example.com")
            .step(step)
            .step(Step::new("label", AddLabel))
            .set_aside_managed_fields()
            .build()
            .unwrap()
    };

    let denied = lean(Step::new("claims", ClaimsFields)).review(&review, NamespaceView::unknown()).await;
    assert!(!denied.answer.allowed);
    assert_eq!(denied.answer.code, 500);
    assert!(denied.answer.message.contains("claims failed: wrote metadata.managedFields"), "{}", denied.answer.message);

    let step = Step::new("claims", ClaimsFields).on_error(FailureMode::AllowWithWarning);
    let admitted = lean(step).review(&review, NamespaceView::unknown()).await;
    assert!(admitted.answer.allowed);
    assert!(
        admitted.answer.warnings[0].contains("claims failed, admitted without its change"),
        "{:?}",
        admitted.answer.warnings
    );
    let patch = serde_json::to_value(admitted.answer.patch.unwrap()).unwrap();
    assert_eq!(
        patch,
        json!([{"op": "add", "path": "/metadata/labels", "value": {"after": "yes"}}]),
        "only the next step's change"
    );

    // With nothing set aside (the object had none, or the review kept them), the step may write them.
    let plain = lean(Step::new("claims", ClaimsFields))
        .review(&pod_review(pod(), "apps", Operation::Create), NamespaceView::unknown())
        .await;
    assert!(plain.answer.allowed && plain.answer.patch.is_some());
}
