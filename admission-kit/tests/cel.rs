//! The CEL that matchers render, checked with a real CEL implementation (the `cel` crate).
//!
//! Matchers render themselves as a webhook `matchConditions` expression ([`ServerFilter::as_cel`])
//! and claim `exact` when that expression is equivalent to [`Matcher::evaluate`]. These properties
//! compile every rendered expression and evaluate it over generated Pods, with `object` bound as
//! the API server binds it, and compare with the in-process decision. Keys and values come from a
//! small pool so that matchers and objects often agree, and that pool holds what a CEL string
//! literal must escape (`'`, `\`, newline, other control characters) besides `/`, `~` and
//! non-ASCII text.
//!
//! Kubernetes semantics the `cel` crate stands in for: `has(object.metadata.annotations)` is false
//! when the field is absent, `'k' in map` tests key presence and indexing a map with a missing key
//! is an error. `cel_crate_semantics` pins down how the crate behaves on exactly these points.
#![cfg(feature = "testing")]

use std::cell::Cell;
use std::collections::BTreeMap;

use admission_kit::matcher::{Decision, LabelOp, LabelRequirement, MatchInput, NamespaceView, ServerFilter};
use admission_kit::pipeline::ResourceTarget;
use admission_kit::prelude::*;
use admission_kit::webhook_config::{ClientTarget, WebhookConfigOptions, render_webhook};
use admission_kit::{Request, mutator};
use cel::Program;
use proptest::prelude::*;
use serde_json::{Value, json};

use admission_kit::testing::MIN_PROPERTY_CASES as MIN_CASES;
use admission_kit::testing::check_property;

// ---------------------------------------------------------------------------------------------
// CEL
// ---------------------------------------------------------------------------------------------

/// `expr` compiled, or why it does not compile.
fn compile(expr: &str) -> Result<Program, String> {
    Program::compile(expr).map_err(|e| format!("CEL does not compile: {e}\nexpression: {expr}"))
}

/// The value of `program` with `object` bound to `object` (`null` for `None`, as on DELETE).
fn run(program: &Program, object: Option<&Value>) -> Result<cel::Value, String> {
    let mut context = cel::Context::default();
    context.add_variable("object", object.unwrap_or(&Value::Null)).map_err(|e| format!("cannot bind object: {e}"))?;
    program.execute(&context).map_err(|e| format!("CEL evaluation error: {e}"))
}

/// The boolean value of `program` for `object`; any other value or an error is a failure.
fn run_bool(program: &Program, object: Option<&Value>) -> Result<bool, String> {
    match run(program, object)? {
        cel::Value::Bool(b) => Ok(b),
        other => Err(format!("CEL value is not a bool: {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------------------------

/// Keys and values, for matchers and objects alike: plain, with `/` and `~`, with what a CEL
/// string literal escapes (`'`, `\`, newline, carriage return, tab, a bell), non-ASCII (including
/// a character outside the BMP), and the empty string.
const POOL: &[&str] = &["a", "b", "x.io/a~1", "it's", "back\\slash", "new\nline", "ünï🦀", "\r\t\u{7}", ""];

fn word() -> impl Strategy<Value = String> {
    prop::sample::select(POOL).prop_map(str::to_owned)
}

fn words() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(word(), 0..3)
}

/// A matcher built from public constructors; a plain tree so that proptest can shrink and print
/// it.
#[derive(Clone, Debug)]
enum Spec {
    HasAnnotation(String),
    AnnotationIn(String, Vec<String>),
    ObjectLabels(Vec<LabelRequirement>),
    All(Vec<Spec>),
    Any(Vec<Spec>),
    Not(Box<Spec>),
}

impl Spec {
    fn build(&self) -> Box<dyn Matcher> {
        match self {
            Spec::HasAnnotation(key) => Box::new(matcher::has_annotation(key.clone())),
            Spec::AnnotationIn(key, values) => Box::new(matcher::annotation_in(key.clone(), values.clone())),
            Spec::ObjectLabels(requirements) => Box::new(matcher::object_labels(requirements.clone())),
            Spec::All(children) => Box::new(children.iter().map(Spec::build).collect::<matcher::All>()),
            Spec::Any(children) => Box::new(children.iter().map(Spec::build).collect::<matcher::Any>()),
            Spec::Not(child) => Box::new(matcher::not(child.build())),
        }
    }
}

fn requirement() -> impl Strategy<Value = LabelRequirement> {
    let op = prop_oneof![
        words().prop_map(LabelOp::In),
        words().prop_map(LabelOp::NotIn),
        Just(LabelOp::Exists),
        Just(LabelOp::DoesNotExist),
    ];
    (word(), op).prop_map(|(key, op)| LabelRequirement::new(key, op))
}

/// Annotation and object-label matchers.
fn leaf() -> impl Strategy<Value = Spec> {
    prop_oneof![
        1 => word().prop_map(Spec::HasAnnotation),
        1 => (word(), words()).prop_map(|(k, v)| Spec::AnnotationIn(k, v)),
        2 => prop::collection::vec(requirement(), 0..3).prop_map(Spec::ObjectLabels),
    ]
}

/// Leaves, and `all`/`any`/`not` of them nested up to `depth` deep. Below the root, leaves are
/// as likely as combinators; `all` and `any` are twice as likely as `not` and seldom empty, so that
/// they often mix object-label requirements with conditions, and nested combinators with leaves.
fn spec_at(depth: u32, leaf_weight: u32) -> BoxedStrategy<Spec> {
    if depth == 0 {
        return leaf().boxed();
    }
    let children = || {
        prop_oneof![
            1 => Just(Vec::new()),
            5 => prop::collection::vec(spec_at(depth - 1, 5), 1..4),
        ]
    };
    prop_oneof![
        leaf_weight => leaf(),
        2 => children().prop_map(Spec::All),
        2 => children().prop_map(Spec::Any),
        1 => spec_at(depth - 1, 5).prop_map(|s| Spec::Not(Box::new(s))),
    ]
    .boxed()
}

/// A matcher with combinators up to depth 3 (a plain leaf one time in six).
fn spec() -> BoxedStrategy<Spec> {
    spec_at(3, 1)
}

/// Every key and value `specs` mention, without repeats.
fn mentioned(specs: &[Spec]) -> Vec<String> {
    fn walk(spec: &Spec, out: &mut Vec<String>) {
        match spec {
            Spec::HasAnnotation(key) => out.push(key.clone()),
            Spec::AnnotationIn(key, values) => {
                out.push(key.clone());
                out.extend(values.iter().cloned());
            }
            Spec::ObjectLabels(requirements) => {
                for r in requirements {
                    out.push(r.key.clone());
                    if let LabelOp::In(values) | LabelOp::NotIn(values) = &r.op {
                        out.extend(values.iter().cloned());
                    }
                }
            }
            Spec::All(children) | Spec::Any(children) => {
                for child in children {
                    walk(child, out);
                }
            }
            Spec::Not(child) => walk(child, out),
        }
    }
    let mut out = Vec::new();
    for spec in specs {
        walk(spec, &mut out);
    }
    out.sort();
    out.dedup();
    out
}

/// A key or value for an object: mostly one the matchers mention (so that objects often meet
/// their requirements), else any from the pool.
fn object_word(mentioned: Vec<String>) -> BoxedStrategy<String> {
    if mentioned.is_empty() {
        return word().boxed();
    }
    prop_oneof![3 => prop::sample::select(mentioned), 1 => word()].boxed()
}

/// Labels or annotations: absent, empty (`{}`) or a few entries.
fn string_map(word: BoxedStrategy<String>) -> impl Strategy<Value = Option<BTreeMap<String, String>>> {
    prop::option::of(prop::collection::btree_map(word.clone(), word, 0..4))
}

/// A Pod as the API server sends it in `object`.
fn pod(word: BoxedStrategy<String>) -> impl Strategy<Value = Value> {
    (string_map(word.clone()), string_map(word)).prop_map(|(labels, annotations)| {
        let mut metadata = json!({"name": "p", "namespace": "ns"});
        if let Some(labels) = labels {
            metadata["labels"] = json!(labels);
        }
        if let Some(annotations) = annotations {
            metadata["annotations"] = json!(annotations);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        })
    })
}

/// Matchers (one per pipeline step) and Pods made from the words they mention.
fn matchers_and_pods(steps: std::ops::Range<usize>) -> impl Strategy<Value = (Vec<Spec>, Vec<Value>)> {
    prop::collection::vec(spec(), steps).prop_flat_map(|specs| {
        let word = object_word(mentioned(&specs));
        (Just(specs), prop::collection::vec(pod(word), 1..6))
    })
}

// ---------------------------------------------------------------------------------------------
// In-process side
// ---------------------------------------------------------------------------------------------

fn request() -> Request {
    Request::builder(&ResourceTarget::new("", "v1", "Pod", "pods")).namespace("ns").build()
}

/// The in-process decision for `pod`, as a boolean (`Unknown` is a failure: nothing generated here
/// looks at the namespace).
fn decide(m: &dyn Matcher, request: &Request, pod: &Value) -> Result<bool, String> {
    let no_labels = BTreeMap::new();
    let input = MatchInput { request, object: Some(pod), namespace: NamespaceView::Known(&no_labels) };
    match m.evaluate(&input) {
        Decision::Match => Ok(true),
        Decision::NoMatch => Ok(false),
        Decision::Unknown(why) => Err(format!("in-process decision is Unknown: {why}")),
    }
}

/// Whether `pod`'s labels meet every requirement, as an `objectSelector` decides.
fn object_selector_matches(requirements: &[LabelRequirement], pod: &Value) -> bool {
    let labels = pod["metadata"]["labels"].as_object();
    requirements.iter().all(|r| r.matches(|k| labels.and_then(|m| m.get(k)).and_then(Value::as_str)))
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// Every exact rendering compiles, evaluates to a bool without error, and equals the in-process
/// decision on every generated Pod.
#[test]
fn exact_cel_equals_in_process_decision() {
    let request = request();
    let (exact, inexact, matched, unmatched) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    check_property(matchers_and_pods(1..2), |(specs, pods)| {
        let spec = &specs[0];
        let m = spec.build();
        let filter = m.server_filter();
        let Some(expr) = filter.as_cel().filter(|_| filter.exact) else {
            inexact.set(inexact.get() + 1);
            return Ok(());
        };
        exact.set(exact.get() + 1);
        let program = compile(&expr).map_err(TestCaseError::fail)?;
        for pod in &pods {
            let want = decide(&*m, &request, pod).map_err(TestCaseError::fail)?;
            let got = run_bool(&program, Some(pod))
                .map_err(|e| TestCaseError::fail(format!("{e}\nexpression: {expr}\nobject: {pod}")))?;
            prop_assert_eq!(got, want, "CEL and in-process disagree\nexpression: {}\nobject: {}", expr, pod);
            let counter = if want { &matched } else { &unmatched };
            counter.set(counter.get() + 1);
        }
        Ok(())
    });
    let (exact, inexact, matched, unmatched) = (exact.get(), inexact.get(), matched.get(), unmatched.get());
    eprintln!("exact renderings: {exact}, not exact: {inexact}; objects matched: {matched}, not matched: {unmatched}");
    // Annotation and object-label matchers, and combinations of them, all render exactly; the
    // generator must also give both answers often, or the property proves little.
    assert_eq!(inexact, 0, "annotation and object-label matchers are documented as exact");
    assert!(exact >= MIN_CASES);
    assert!(matched.min(unmatched) * 5 >= matched + unmatched, "lopsided: {matched} matched, {unmatched} not");
}

fn step_target() -> ResourceTarget {
    ResourceTarget::new("", "v1", "Pod", "pods")
}

/// The `matchConditions` expression `render_webhook` writes for a pipeline compiles, is true when
/// `object` is null (DELETE), and with an object is, together with the rendered `objectSelector`,
/// a necessary condition of some step applying, and a sufficient one when the steps' filters allow.
#[test]
fn rendered_match_condition_compiles_and_is_necessary() {
    let request = request();
    let options = WebhookConfigOptions::new("cel-test", ClientTarget::Url("https://127.0.0.1:8443".into()));
    let (rendered, not_rendered, exact_count) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    check_property(matchers_and_pods(1..4), |(specs, pods)| {
        let matchers: Vec<Box<dyn Matcher>> = specs.iter().map(Spec::build).collect();
        let mut builder = Pipeline::builder("cel.test.example.com");
        for (i, spec) in specs.iter().enumerate() {
            let step = Step::dynamic(format!("step-{i}"), step_target(), mutator::from_fn(|_, _| Ok(())));
            builder = builder.step(step.when(spec.build()));
        }
        let pipeline = builder.build().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let hook = render_webhook(&pipeline, &options);
        let Some(conditions) = hook.match_conditions else {
            not_rendered.set(not_rendered.get() + 1);
            return Ok(());
        };
        rendered.set(rendered.get() + 1);
        prop_assert_eq!(conditions.len(), 1);
        let expr = &conditions[0].expression;
        let program = compile(expr).map_err(TestCaseError::fail)?;
        let on_null = run_bool(&program, None).map_err(|e| TestCaseError::fail(format!("{e}\nexpression: {expr}")))?;
        prop_assert!(on_null, "false for a null object (DELETE)\nexpression: {}", expr);

        let selector = hook.object_selector.unwrap_or_default();
        let object_requirements = matcher::requirements_from_selector(&selector).unwrap();
        // The webhook is exactly "some step applies" when every step's filter is exact and its
        // object requirements are all in the rendered objectSelector (then they are all the same).
        let exact = matchers
            .iter()
            .map(Matcher::server_filter)
            .all(|f| f.exact && f.namespace.is_empty() && f.object.iter().all(|r| object_requirements.contains(r)));
        exact_count.set(exact_count.get() + u32::from(exact));
        for pod in &pods {
            let got = run_bool(&program, Some(pod))
                .map_err(|e| TestCaseError::fail(format!("{e}\nexpression: {expr}\nobject: {pod}")))?;
            let selected = object_selector_matches(&object_requirements, pod);
            let mut any_applies = false;
            for m in &matchers {
                any_applies |= decide(&**m, &request, pod).map_err(TestCaseError::fail)?;
            }
            // Necessary: the API server never filters out an object a step would take.
            prop_assert!(
                !any_applies || (got && selected),
                "a step applies but the webhook filters the object out (condition {}, objectSelector {})\nexpression: {}\nobject: {}",
                got,
                selected,
                expr,
                pod
            );
            // Sufficient, when exact.
            if exact {
                prop_assert_eq!(
                    got && selected,
                    any_applies,
                    "exact webhook filter disagrees\nexpression: {}\nobject: {}",
                    expr,
                    pod
                );
            }
        }
        Ok(())
    });
    let (rendered, not_rendered, exact) = (rendered.get(), not_rendered.get(), exact_count.get());
    eprintln!("pipelines with matchConditions: {rendered} ({exact} exact), without: {not_rendered}");
    assert!(rendered * 2 >= rendered + not_rendered, "too few pipelines render matchConditions: {rendered}");
}

/// How the `cel` crate behaves on the points the rendered CEL relies on, next to what Kubernetes
/// does: if one of these changes, the properties above may be testing other semantics.
#[test]
fn cel_crate_semantics() {
    let eval = |expr: &str, object: Value| run(&compile(expr).unwrap(), Some(&object));
    let t = Ok(cel::Value::Bool(true));
    let f = Ok(cel::Value::Bool(false));
    let absent = json!({"metadata": {}});
    let empty = json!({"metadata": {"annotations": {}}});
    let one = json!({"metadata": {"annotations": {"k": "v"}}});
    // `has()` on an absent field is false, as in Kubernetes.
    assert_eq!(eval("has(object.metadata.annotations)", absent.clone()), f);
    // On a present but empty map it is true (the key is in the JSON). Built-in kinds reach
    // Kubernetes' CEL with empty maps omitted, so there it would be false; the rendered CEL always
    // tests the key next, so the answer is the same either way.
    assert_eq!(eval("has(object.metadata.annotations)", empty.clone()), t);
    // `in` tests key presence.
    assert_eq!(eval("'k' in object.metadata.annotations", empty.clone()), f);
    assert_eq!(eval("'k' in object.metadata.annotations", one.clone()), t);
    assert_eq!(eval("'v' in object.metadata.annotations", one.clone()), f);
    // Indexing with a missing key is an error, and `&&` short-circuits it away.
    assert!(eval("object.metadata.annotations['x'] == 'v'", one.clone()).is_err());
    assert_eq!(eval("'x' in object.metadata.annotations && object.metadata.annotations['x'] == 'v'", one), f);
    // Selecting through an absent field is an error, absorbed by `||` when the other side is true.
    assert!(eval("'k' in object.metadata.annotations", absent).is_err());
    assert_eq!(run(&compile("object == null || object.metadata.x == 1").unwrap(), None), t);
    // Escapes the renderer writes.
    assert_eq!(eval(r"'it\'s \\ \n \r \t \u0007 ü🦀' == object", json!("it's \\ \n \r \t \u{7} ü🦀")), t);
}

/// One rendering checked by hand: an annotation and an object label, both met, then one not.
#[test]
fn known_rendering_evaluates_as_expected() {
    let m = matcher::all([
        Box::new(matcher::has_annotation("x.io/inject")),
        Box::new(matcher::object_labels([LabelRequirement::new("app", LabelOp::In(vec!["web".into()]))])),
    ]);
    let expr = ServerFilter::as_cel(&m.server_filter()).unwrap();
    let program = compile(&expr).unwrap();
    let pod = json!({"metadata": {"labels": {"app": "web"}, "annotations": {"x.io/inject": ""}}});
    assert_eq!(run_bool(&program, Some(&pod)), Ok(true));
    let pod = json!({"metadata": {"labels": {"app": "db"}, "annotations": {"x.io/inject": ""}}});
    assert_eq!(run_bool(&program, Some(&pod)), Ok(false));
}

/// `all` of an object-label requirement and one `any`: the `any`'s `||` must stay inside
/// parentheses once the requirement is prepended with `&&` (the smallest case the properties find).
#[test]
fn object_requirement_and_lone_any_keep_precedence() {
    let inner = || {
        matcher::all([
            Box::new(matcher::object_labels([LabelRequirement::new("app", LabelOp::Exists)])),
            Box::new(matcher::any([Box::new(matcher::has_annotation("x")), Box::new(matcher::has_annotation("y"))])),
        ])
    };
    let request = request();
    let pod = json!({"metadata": {"annotations": {"y": ""}}});
    let m = inner();
    let expr = m.server_filter().as_cel().unwrap();
    assert_eq!(decide(&m, &request, &pod), Ok(false));
    assert_eq!(run_bool(&compile(&expr).unwrap(), Some(&pod)), Ok(false), "expression: {expr}");

    // Under `not`, in a rendered webhook: the step applies, so the API server must call the webhook.
    let step = Step::dynamic("s", step_target(), mutator::from_fn(|_, _| Ok(()))).when(matcher::not(inner()));
    let pipeline = Pipeline::builder("cel.test.example.com").step(step).build().unwrap();
    let options = WebhookConfigOptions::new("cel-test", ClientTarget::Url("https://127.0.0.1:8443".into()));
    let expr = render_webhook(&pipeline, &options).match_conditions.unwrap().remove(0).expression;
    assert_eq!(decide(&matcher::not(inner()), &request, &pod), Ok(true));
    assert_eq!(run_bool(&compile(&expr).unwrap(), Some(&pod)), Ok(true), "expression: {expr}");
}

/// A plugin reading selectors from its configuration names the error type and propagates it.
#[test]
fn selector_errors_are_a_public_type() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    fn count(selector: &LabelSelector) -> Result<usize, matcher::SelectorError> {
        Ok(matcher::requirements_from_selector(selector)?.len())
    }
    let near = LabelSelectorRequirement { key: "zone".into(), operator: "Near".into(), values: None };
    let err = count(&LabelSelector { match_expressions: Some(vec![near]), ..LabelSelector::default() }).unwrap_err();
    assert_eq!((err.key(), err.operator()), ("zone", "Near"));
    assert!(err.to_string().contains("`Near`"), "{err}");
}
