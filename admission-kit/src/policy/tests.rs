use super::*;
use crate::matcher::{self, Matcher as _};
use crate::mutator::from_fn;
use crate::pipeline::ResourceTarget;
use k8s_openapi::api::core::v1::Pod;

/// A matcher the API server cannot check: it decides in-process only.
#[derive(Debug)]
struct InProcessOnly;

impl crate::Matcher for InProcessOnly {
    fn evaluate(&self, _: &crate::matcher::MatchInput<'_>) -> crate::matcher::Decision {
        crate::matcher::Decision::Match
    }
}

struct Form(Result<StepPolicy, String>);

impl PolicyForm for Form {
    fn render(&self) -> Result<StepPolicy, String> {
        self.0.clone()
    }
}

fn step(name: &str) -> Step {
    Step::dynamic(name, ResourceTarget::of::<Pod>(), from_fn(|_, _| Ok(())))
}

fn parts() -> PolicyParts {
    PolicyParts::new()
        .variable("names", "object.metadata.name")
        .mutation("[JSONPatch{op: \"add\", path: \"/metadata/labels\", value: {}}]")
}

fn pipeline(steps: Vec<Step>) -> Pipeline {
    let mut builder = Pipeline::builder("labels.example.com");
    for step in steps {
        builder = builder.step(step);
    }
    builder.build().unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_step_renders_as_a_policy_and_binding_with_its_matcher_as_constraints_and_conditions() {
    let pipeline = pipeline(vec![
        step("add")
            .when(matcher::namespace_label("team", "a").and(matcher::has_annotation("x.example.com/on")))
            .policy_form(Form(Ok(StepPolicy::Parts(parts())))),
    ]);
    let objects = render_policies(&[pipeline], &PolicyOptions::new().exclude_namespaces(["kube-system"]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objects.len(), 2, "{objects:#?}");
    let policy = &objects[0];
    assert_eq!(policy["kind"], "MutatingAdmissionPolicy");
    assert_eq!(policy["metadata"]["name"], "labels.example.com.add");
    let spec = &policy["spec"];
    assert_eq!(spec["failurePolicy"], "Fail");
    assert_eq!(spec["matchConstraints"]["resourceRules"][0]["resources"][0], "pods");
    assert_eq!(spec["matchConstraints"]["resourceRules"][0]["operations"][0], "CREATE");
    let ns = spec["matchConstraints"]["namespaceSelector"]["matchExpressions"].as_array().cloned().unwrap_or_default();
    assert!(ns.iter().any(|r| r["key"] == "team" && r["values"][0] == "a"), "{ns:?}");
    assert!(ns.iter().any(|r| r["key"] == "kubernetes.io/metadata.name" && r["operator"] == "NotIn"), "{ns:?}");
    let condition = spec["matchConditions"][0]["expression"].as_str().unwrap_or_default();
    assert!(condition.contains("x.example.com/on"), "{condition}");
    assert_eq!(spec["variables"][0]["name"], "names");
    assert_eq!(spec["mutations"][0]["patchType"], "JSONPatch");
    assert_eq!(objects[1]["kind"], "MutatingAdmissionPolicyBinding");
    assert_eq!(objects[1]["spec"]["policyName"], "labels.example.com.add");
}

#[test]
fn denials_render_as_a_validating_policy_that_denies() {
    let with_denial = parts().validation(Validation::new("false", "\"no\"").when("marked", "true"));
    let pipeline = pipeline(vec![step("add").policy_form(Form(Ok(StepPolicy::Parts(with_denial))))]);
    let objects = render_policies(&[pipeline], &PolicyOptions::new()).unwrap_or_else(|e| panic!("{e}"));
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        [
            "MutatingAdmissionPolicy",
            "MutatingAdmissionPolicyBinding",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding"
        ]
    );
    assert_eq!(objects[2]["spec"]["validations"][0]["messageExpression"], "\"no\"");
    assert_eq!(objects[2]["spec"]["matchConditions"][0]["name"], "marked");
    assert_eq!(objects[3]["spec"]["validationActions"][0], "Deny");
}

#[test]
fn every_step_that_cannot_be_rendered_is_named_with_its_reason() {
    let pipeline = pipeline(vec![
        step("rust"),
        step("refuses").policy_form(Form(Err("it needs the pod's namespace ConfigMaps".to_owned()))),
        step("within").policy_form(Form(Ok(StepPolicy::Within("rendered with `add`".to_owned())))),
        step("inexact").when(InProcessOnly).policy_form(Form(Ok(StepPolicy::Parts(parts())))),
    ]);
    let error = render_policies(&[pipeline], &PolicyOptions::new()).err().unwrap_or_else(|| panic!("rendered"));
    let steps: Vec<&str> = error.0.iter().map(|u| u.step.as_str()).collect();
    assert_eq!(steps, ["rust", "refuses", "inexact"]);
    let text = error.to_string();
    assert!(text.contains("step `rust` of `labels.example.com`: its mutator is Rust code"), "{text}");
    assert!(text.contains("namespace ConfigMaps"), "{text}");
    assert!(text.contains("more than the API server can check"), "{text}");
}

#[test]
fn a_step_name_that_is_no_dns_label_is_refused() {
    let pipeline = pipeline(vec![step("Add_Labels").policy_form(Form(Ok(StepPolicy::Parts(parts()))))]);
    let error = render_policies(&[pipeline], &PolicyOptions::new()).err().unwrap_or_else(|| panic!("rendered"));
    assert!(error.to_string().contains("is not a DNS subdomain"), "{error}");
}
