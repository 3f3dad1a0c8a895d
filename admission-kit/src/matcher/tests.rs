use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::pipeline::ResourceTarget;
use crate::review::Request;

fn request(namespace: Option<&str>, kind: &str) -> Request {
    let builder = Request::builder(&ResourceTarget::new("", "v1", kind, "pods"));
    match namespace {
        Some(namespace) => builder.namespace(namespace).build(),
        None => builder.cluster_scoped().build(),
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn eval(m: &dyn Matcher, req: &Request, object: &Value, ns: NamespaceView<'_>) -> Decision {
    m.evaluate(&MatchInput { request: req, object: Some(object), namespace: ns })
}

#[test]
fn namespace_label_known_unknown_and_trusted() {
    let m = namespace_label("inject", "enabled");
    let req = request(Some("team"), "Pod");
    let pod = json!({});
    let on = labels(&[("inject", "enabled")]);
    let off = labels(&[("inject", "disabled")]);
    assert_eq!(eval(&m, &req, &pod, NamespaceView::Known(&on)), Decision::Match);
    assert_eq!(eval(&m, &req, &pod, NamespaceView::Known(&off)), Decision::NoMatch);
    assert!(matches!(eval(&m, &req, &pod, NamespaceView::Unknown { enforced: &[] }), Decision::Unknown(_)));
    let enforced = [m.0.clone()];
    assert_eq!(eval(&m, &req, &pod, NamespaceView::Unknown { enforced: &enforced }), Decision::Match);
    // Cluster-scoped objects have no namespace; a Namespace is matched on its own labels.
    assert_eq!(eval(&m, &request(None, "Node"), &pod, NamespaceView::Known(&on)), Decision::NoMatch);
    let ns_obj = json!({"metadata": {"labels": {"inject": "enabled"}}});
    assert_eq!(
        eval(&m, &request(None, "Namespace"), &ns_obj, NamespaceView::Unknown { enforced: &[] }),
        Decision::Match
    );
    // Also when the request names the namespace itself, and against stale cached labels.
    assert_eq!(eval(&m, &request(Some("team"), "Namespace"), &ns_obj, NamespaceView::Known(&off)), Decision::Match);
}

#[test]
fn label_operators() {
    let l = labels(&[("a", "1")]);
    assert!(LabelRequirement::new("a", LabelOp::In(vec!["1".into(), "2".into()])).matches_map(&l));
    assert!(!LabelRequirement::new("a", LabelOp::NotIn(vec!["1".into()])).matches_map(&l));
    assert!(LabelRequirement::new("b", LabelOp::NotIn(vec!["1".into()])).matches_map(&l));
    assert!(LabelRequirement::new("a", LabelOp::Exists).matches_map(&l));
    assert!(LabelRequirement::new("b", LabelOp::DoesNotExist).matches_map(&l));
    assert!(!LabelRequirement::new("b", LabelOp::In(vec!["1".into()])).matches_map(&l));
}

#[test]
fn namespace_names_and_annotations() {
    let pod = json!({"metadata": {"annotations": {"x.io/inject": "a, b", "flag": "on"}}});
    let empty = BTreeMap::new();
    let known = NamespaceView::Known(&empty);
    let not_system = namespace_not_in(["kube-system", "kube-public"]);
    assert_eq!(eval(&not_system, &request(Some("kube-system"), "Pod"), &pod, known), Decision::NoMatch);
    assert_eq!(eval(&not_system, &request(Some("apps"), "Pod"), &pod, known), Decision::Match);
    let req = request(Some("apps"), "Pod");
    assert_eq!(eval(&has_annotation("x.io/inject"), &req, &pod, known), Decision::Match);
    assert_eq!(eval(&has_annotation("missing"), &req, &pod, known), Decision::NoMatch);
    assert_eq!(eval(&annotation_in("flag", ["on", "yes"]), &req, &pod, known), Decision::Match);
    assert_eq!(eval(&annotation_in("flag", ["off"]), &req, &pod, known), Decision::NoMatch);
    assert_eq!(eval(&has_annotation("x"), &req, &json!({"metadata": {}}), known), Decision::NoMatch);
}

#[test]
fn and_or_chain_flat_and_equal_the_array_forms() {
    let chained = namespace_label("a", "b").and(has_annotation("x")).and(namespace_not_in(["kube-system"]));
    assert_eq!(chained.0.len(), 3, "a chain of `and` is one flat `all`");
    let listed = all([
        Box::new(namespace_label("a", "b")),
        Box::new(has_annotation("x")),
        Box::new(namespace_not_in(["kube-system"])),
    ]);
    assert_eq!(chained.describe(), listed.describe());
    assert_eq!(chained.server_filter(), listed.server_filter());
    let either = has_annotation("x").or(has_annotation("y")).or(annotation_in("z", ["1"]));
    assert_eq!(either.0.len(), 3);
    assert_eq!(
        either.server_filter(),
        any([Box::new(has_annotation("x")), Box::new(has_annotation("y")), Box::new(annotation_in("z", ["1"]))])
            .server_filter()
    );
    // An `and` of an `any` nests (the `or` is one child), as written.
    let nested = has_annotation("x").or(has_annotation("y")).and(namespace_label("a", "b"));
    assert_eq!(nested.describe(), "all of (any of (annotation x, annotation y), namespace label a=b)");
}

#[test]
fn combinators_use_three_valued_logic() {
    let req = request(Some("apps"), "Pod");
    let pod = json!({"metadata": {"labels": {"app": "web"}}});
    let unknown_ns = NamespaceView::Unknown { enforced: &[] };
    let yes = || Box::new(object_labels([LabelRequirement::new("app", LabelOp::Exists)]));
    let no = || Box::new(has_annotation("nope"));
    let maybe = || Box::new(namespace_label("a", "b"));
    assert_eq!(eval(&all([yes(), no(), maybe()]), &req, &pod, unknown_ns), Decision::NoMatch);
    assert!(matches!(eval(&all([yes(), maybe()]), &req, &pod, unknown_ns), Decision::Unknown(_)));
    assert_eq!(eval(&any([no(), maybe(), yes()]), &req, &pod, unknown_ns), Decision::Match);
    assert!(matches!(eval(&any([no(), maybe()]), &req, &pod, unknown_ns), Decision::Unknown(_)));
    assert_eq!(eval(&not(has_annotation("nope")), &req, &pod, unknown_ns), Decision::Match);
    assert!(matches!(eval(&not(namespace_label("a", "b")), &req, &pod, unknown_ns), Decision::Unknown(_)));
}

#[test]
fn server_filters_are_necessary_and_marked_exact_only_when_equivalent() {
    let f = all([
        Box::new(namespace_label("inject", "enabled")),
        Box::new(namespace_not_in(["kube-system"])),
        Box::new(has_annotation("x.io/inject")),
        Box::new(object_labels([LabelRequirement::new("app", LabelOp::Exists)])),
    ])
    .server_filter();
    assert_eq!(f.namespace.len(), 2);
    assert_eq!(f.namespace[1].key, NAMESPACE_NAME_LABEL);
    assert_eq!(f.object, vec![LabelRequirement::new("app", LabelOp::Exists)]);
    assert_eq!(
        f.condition.as_deref(),
        Some("has(object.metadata.annotations) && 'x.io/inject' in object.metadata.annotations")
    );
    assert!(f.exact);

    // OR of annotation and object label: CEL only.
    let f = any([
        Box::new(has_annotation("a")),
        Box::new(object_labels([LabelRequirement::new("b", LabelOp::In(vec!["c".into()]))])),
    ])
    .server_filter();
    assert!(f.exact && f.namespace.is_empty() && f.object.is_empty());
    assert_eq!(
        f.condition.as_deref(),
        Some(
            "(has(object.metadata.annotations) && 'a' in object.metadata.annotations) || (has(object.metadata.labels) && 'b' in object.metadata.labels && object.metadata.labels['b'] in ['c'])"
        )
    );
    // OR involving a namespace label cannot be rendered: no filter at all (still necessary).
    let f = any([Box::new(has_annotation("a")), Box::new(namespace_label("x", "y"))]).server_filter();
    assert_eq!(f, ServerFilter::none());
    // NOT of an exact CEL filter negates it; NOT of a namespace label is not rendered.
    assert_eq!(
        not(has_annotation("a")).server_filter().condition.as_deref(),
        Some("!(has(object.metadata.annotations) && 'a' in object.metadata.annotations)")
    );
    assert_eq!(not(namespace_label("x", "y")).server_filter(), ServerFilter::none());
}

#[test]
fn an_empty_name_list_renders_no_selector_the_api_server_would_reject() {
    assert_eq!(
        namespace_not_in(Vec::<String>::new()).server_filter(),
        ServerFilter { exact: true, ..ServerFilter::none() }
    );
    let req = request(Some("kube-system"), "Pod");
    let labels = BTreeMap::new();
    assert_eq!(
        eval(&namespace_not_in(Vec::<String>::new()), &req, &json!({}), NamespaceView::Known(&labels)),
        Decision::Match
    );
}

#[test]
fn cel_strings_are_escaped() {
    assert_eq!(label::cel_string("it's \\ \n"), "'it\\'s \\\\ \\n'");
    let f = annotation_in("k", ["a'b"]).server_filter();
    assert!(f.condition.unwrap().ends_with("in ['a\\'b']"));
}

#[test]
fn selectors_convert_both_ways() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    let selector = LabelSelector {
        match_labels: Some([("a".to_owned(), "1".to_owned())].into()),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "b".into(),
            operator: "DoesNotExist".into(),
            values: None,
        }]),
    };
    let reqs = requirements_from_selector(&selector).unwrap();
    assert_eq!(
        reqs,
        vec![
            LabelRequirement::new("a", LabelOp::In(vec!["1".into()])),
            LabelRequirement::new("b", LabelOp::DoesNotExist)
        ]
    );
    assert_eq!(reqs[1].to_k8s(), selector.match_expressions.as_ref().unwrap()[0]);
    let bad = LabelSelector {
        match_labels: None,
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "b".into(),
            operator: "Near".into(),
            values: None,
        }]),
    };
    let err = requirements_from_selector(&bad).unwrap_err().to_string();
    assert!(err.contains("`Near`") && err.contains("`b`"), "{err}");
}
