//! image-mirror: pull every container image through a mirror registry, except images from an
//! allow-list of registries.
//!
//! A pod's `containers`, `initContainers` and `ephemeralContainers` images are normalised as the
//! container runtimes read them ([`reference`]) and renamed to the mirror's layout
//! ([`mirror`]): with mirror `mirror.example.com`, `nginx` becomes
//! `mirror.example.com/docker.io/library/nginx`, `registry:5000/x:1` becomes
//! `mirror.example.com/registry_5000/x:1`; tags and digests are kept. An image that is not a valid
//! reference is denied, with the reason, rather than let through unmirrored.
//!
//! The webhook serves CREATE and UPDATE (a bare pod's images can be changed) and asks to be called
//! again when a later webhook changed the pod (`reinvocationPolicy: IfNeeded`), so that sidecars
//! injected after it are mirrored too. See
//! <https://kubernetes.io/docs/concepts/containers/images/> and
//! <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/#reinvocation-policy>.
#![warn(missing_docs)]

pub mod mirror;
pub mod reference;

use admission_kit::pipeline::ReinvocationPolicy;
use admission_kit::prelude::*;
use k8s_openapi::api::core::v1::Pod;

pub use mirror::{ImageMirror, MirrorError, MirrorPrefix};
pub use reference::{ImageReference, ReferenceError, Registry};

/// The webhook's name.
pub const WEBHOOK_NAME: &str = "image-mirror.admission-kit.dev";

/// Rewrites a pod's images with an [`ImageMirror`]; denies the pod if an image cannot be mirrored.
#[async_trait]
impl Mutator<Pod> for ImageMirror {
    async fn mutate(&self, pod: &mut Pod, _ctx: &mut Context<'_>) -> MutationResult {
        let Some(spec) = pod.spec.as_mut() else { return Ok(()) };
        let containers = spec.containers.iter_mut().map(|c| ("container", &c.name, &mut c.image));
        let init = spec.init_containers.iter_mut().flatten().map(|c| ("init container", &c.name, &mut c.image));
        let ephemeral =
            spec.ephemeral_containers.iter_mut().flatten().map(|c| ("ephemeral container", &c.name, &mut c.image));
        let mut problems = Vec::new();
        for (kind, name, image) in containers.chain(init).chain(ephemeral) {
            // A missing image is the API server's to reject (pod validation requires one).
            let Some(current) = image.as_mut() else { continue };
            match self.rewrite(current) {
                Ok(Some(mirrored)) => *current = mirrored,
                Ok(None) => {}
                Err(error) => problems.push(format!("{kind} `{name}`: {error}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(MutationError::deny(format!(
                "cannot pull these images through the mirror `{}`: {}",
                self.prefix(),
                problems.join("; ")
            )))
        }
    }
}

/// The webhook [`WEBHOOK_NAME`]: `mirror` on pods created or updated in any namespace but
/// `skip_namespaces` (rendered as the webhook's `namespaceSelector`).
///
/// # Panics
/// Never: the name and step are constants, and tests build it.
#[must_use]
pub fn pipeline<S: Into<String>>(mirror: ImageMirror, skip_namespaces: impl IntoIterator<Item = S>) -> Pipeline {
    Pipeline::builder(WEBHOOK_NAME)
        .step(
            Step::new("image-mirror", mirror)
                .operations([Operation::Create, Operation::Update])
                .when(matcher::namespace_not_in(skip_namespaces)),
        )
        .reinvocation(ReinvocationPolicy::IfNeeded)
        .build()
        .expect("the pipeline is valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use admission_kit::testing::proptest::prelude::*;
    use admission_kit::testing::{Harness, check_property, review};
    use k8s_openapi::api::core::v1::{Container, EphemeralContainer, PodSpec};
    use serde_json::{Value, json};

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const MIRROR: &str = "mirror.example.com";
    const ALLOWED: &str = "registry.k8s.io";

    fn image_mirror() -> ImageMirror {
        ImageMirror::new(MIRROR.parse().unwrap(), [ALLOWED.parse().unwrap()])
    }

    fn harness() -> Harness {
        Harness::new(pipeline(image_mirror(), ["kube-system"]))
    }

    fn container(name: &str, image: &str) -> Container {
        Container { name: name.into(), image: Some(image.into()), ..Container::default() }
    }

    fn pod(containers: &[&str], init: &[&str]) -> Pod {
        let named = |prefix: &str, images: &[&str]| {
            images.iter().enumerate().map(|(i, image)| container(&format!("{prefix}{i}"), image)).collect::<Vec<_>>()
        };
        Pod {
            spec: Some(PodSpec {
                containers: named("c", containers),
                init_containers: (!init.is_empty()).then(|| named("i", init)),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn images(pod: &Value, list: &str) -> Vec<Value> {
        pod["spec"][list].as_array().map(|l| l.iter().map(|c| c["image"].clone()).collect()).unwrap_or_default()
    }

    #[tokio::test]
    async fn mirrors_every_container_list_and_keeps_allowed_images() {
        let mut pod = pod(&["nginx:1.25", "registry.k8s.io/pause:3.10"], &[&format!("busybox@{SHA}")]);
        if let Some(spec) = pod.spec.as_mut() {
            let debug = EphemeralContainer { name: "debug".into(), image: Some("alpine".into()), ..Default::default() };
            spec.ephemeral_containers = Some(vec![debug]);
        }
        let checked = harness().check(&review(&pod).namespace("apps").build()).await;
        let result = checked.patched();
        assert_eq!(
            images(result, "containers"),
            [json!("mirror.example.com/docker.io/library/nginx:1.25"), json!("registry.k8s.io/pause:3.10")]
        );
        assert_eq!(
            images(result, "initContainers"),
            [json!(format!("mirror.example.com/docker.io/library/busybox@{SHA}"))]
        );
        assert_eq!(images(result, "ephemeralContainers"), [json!("mirror.example.com/docker.io/library/alpine")]);
    }

    #[tokio::test]
    async fn leaves_mirrored_allowed_and_skipped_pods_alone() {
        let mirrored = pod(&["mirror.example.com/docker.io/library/nginx", "registry.k8s.io/pause"], &[]);
        harness().check(&review(&mirrored).namespace("apps").build()).await.assert_unchanged();
        harness().check(&review(&pod(&["nginx"], &[])).namespace("kube-system").build()).await.assert_unchanged();
    }

    #[tokio::test]
    async fn mirrors_images_changed_by_an_update() {
        let old = serde_json::to_value(pod(&["mirror.example.com/docker.io/library/nginx:1"], &[])).unwrap();
        let update = review(&pod(&["nginx:2"], &[])).namespace("apps").operation(Operation::Update).old_object(old);
        let checked = harness().check(&update.build()).await;
        assert_eq!(images(checked.patched(), "containers"), [json!("mirror.example.com/docker.io/library/nginx:2")]);
    }

    #[tokio::test]
    async fn denies_images_it_cannot_mirror_naming_each_container() {
        let bad = pod(&["nginx", "Nginx"], &["[fd00::1]:5000/tool"]);
        let checked = harness().check(&review(&bad).namespace("apps").build()).await;
        checked.assert_denied(
            "cannot pull these images through the mirror `mirror.example.com`: container `c1`: image `Nginx` is not a valid image reference: repository path component `Nginx` must be lower-case",
        );
        checked.assert_denied("; init container `i0`: image `[fd00::1]:5000/tool` is on a registry addressed by IPv6");
    }

    /// An image reference with what it must normalise to, computed apart from the parser.
    #[derive(Debug, Clone)]
    struct Case {
        image: String,
        registry: String,
        path: String,
        suffix: String,
    }

    fn references() -> impl Strategy<Value = Case> {
        // (registry as written, registry it normalises to)
        let fixed = |written: &str, registry: &str| Just((written.to_owned(), registry.to_owned()));
        let same = |r: String| (r.clone(), r);
        let registry = prop_oneof![
            fixed("docker.io", "docker.io"),
            fixed("index.docker.io", "docker.io"),
            fixed("localhost", "localhost"),
            fixed("localhost:5000", "localhost:5000"),
            fixed("Registry.Example.COM:443", "Registry.Example.COM:443"),
            fixed(ALLOWED, ALLOWED),
            fixed(MIRROR, MIRROR),
            "[a-z0-9]{1,4}(-[a-z0-9]{1,3})?\\.[a-z]{2,4}(:[0-9]{1,5})?".prop_map(same),
            "10\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?".prop_map(same),
        ];
        let implicit_hub = any::<bool>();
        let component = "[a-z0-9]{1,4}(([._]|__|-{1,2})[a-z0-9]{1,3})?";
        let path = prop::collection::vec(component, 1..4);
        let tag = prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,8}");
        let digest = prop::option::of("[0-9a-f]{64}");
        (registry, implicit_hub, path, tag, digest).prop_map(
            |((written, registry), implicit_hub, path, tag, digest)| {
                let hub = registry == "docker.io";
                // Docker Hub may be left implicit, unless the path's first component would then read as
                // a registry; Hub's single-component names live under `library/`.
                let looks_like_registry = path.len() > 1 && path[0].contains('.');
                let written = if hub && implicit_hub && !looks_like_registry { None } else { Some(written) };
                let mut full_path = path.join("/");
                if hub && path.len() == 1 {
                    full_path = format!("library/{full_path}");
                }
                let suffix = tag.map(|t| format!(":{t}")).unwrap_or_default()
                    + &digest.map(|d| format!("@sha256:{d}")).unwrap_or_default();
                let image = written.map(|r| format!("{r}/")).unwrap_or_default() + &path.join("/") + &suffix;
                Case { image, registry, path: full_path, suffix }
            },
        )
    }

    #[test]
    fn property_every_image_is_mirrored_or_allowed_and_rewriting_is_idempotent() {
        let m = image_mirror();
        check_property(references(), |case| {
            let out = m.rewrite(&case.image).map_err(|e| TestCaseError::fail(format!("{case:?}: {e}")))?;
            let kept = [ALLOWED, MIRROR].iter().any(|r| r.eq_ignore_ascii_case(&case.registry));
            match &out {
                None => prop_assert!(kept, "{case:?} was kept but is not allowed"),
                Some(mirrored) => {
                    prop_assert!(!kept, "{case:?} is allowed but became {mirrored}");
                    let upstream = case.registry.to_ascii_lowercase().replace(':', "_");
                    prop_assert_eq!(mirrored, &format!("{MIRROR}/{upstream}/{}{}", case.path, case.suffix));
                }
            }
            let result = out.unwrap_or_else(|| case.image.clone());
            prop_assert!(ImageReference::parse(&result).is_ok(), "{result} does not parse");
            prop_assert_eq!(m.rewrite(&result), Ok(None), "rewriting {} again changed it", result);
            Ok(())
        });
    }

    #[test]
    fn property_any_text_is_mirrored_kept_or_denied_never_mangled() {
        let m = image_mirror();
        let outcomes = std::sync::Mutex::new([0usize; 3]);
        // Half arbitrary text (mostly no reference at all), half generated references, so every
        // outcome is exercised.
        let text = prop_oneof!["[a-zA-Z0-9:/@._\\-\\[\\] ä]{0,24}", references().prop_map(|c| c.image)];
        check_property(text, |text| {
            let parsed = ImageReference::parse(&text);
            match m.rewrite(&text) {
                Ok(Some(mirrored)) => {
                    outcomes.lock().unwrap()[0] += 1;
                    let parsed = ImageReference::parse(&mirrored).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(parsed.registry.as_str(), MIRROR);
                    prop_assert_eq!(m.rewrite(&mirrored), Ok(None));
                }
                Ok(None) => {
                    outcomes.lock().unwrap()[1] += 1;
                    prop_assert!(m.allows(&parsed.unwrap().registry));
                }
                // Each error for its reason only: text that is no reference, or one the mirror
                // cannot name (an IPv6 registry, a name too long); never a valid, nameable one.
                Err(MirrorError::Invalid { image, .. }) => {
                    outcomes.lock().unwrap()[2] += 1;
                    prop_assert!(parsed.is_err(), "`{}` parses, yet was called invalid", text);
                    prop_assert_eq!(image, text);
                }
                Err(MirrorError::Ipv6Registry { .. }) => {
                    prop_assert!(parsed.is_ok_and(|r| r.registry.is_ipv6()), "`{}` is not on an IPv6 registry", text);
                }
                Err(MirrorError::TooLong { mirrored, .. }) => {
                    prop_assert!(mirrored.len() > crate::reference::MAX_NAME_LENGTH, "`{}` is not too long", mirrored);
                }
            }
            Ok(())
        });
        // Every outcome is exercised, not only the errors of mostly invalid text.
        let [mirrored, kept, invalid] = *outcomes.lock().unwrap();
        assert!(mirrored >= 100 && kept >= 50 && invalid >= 100, "mirrored {mirrored}, kept {kept}, invalid {invalid}");
    }

    #[test]
    fn property_pods_patch_cleanly_and_idempotently() {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let harness = harness();
        let images = |n| prop::collection::vec(references().prop_map(|c| c.image), n);
        check_property((images(1..4), images(0..3)), |(c, i)| {
            let c: Vec<&str> = c.iter().map(String::as_str).collect();
            let i: Vec<&str> = i.iter().map(String::as_str).collect();
            // `check` asserts the patch applies, is idempotent and loses nothing.
            let checked = runtime.block_on(harness.try_check(&review(&pod(&c, &i)).namespace("apps").build()))?;
            for image in images_of(checked.patched()) {
                let registry = ImageReference::parse(&image).map_err(|e| TestCaseError::fail(e.to_string()))?.registry;
                prop_assert!(image_mirror().allows(&registry), "{image} escaped the mirror");
            }
            Ok(())
        });
    }

    fn images_of(pod: &Value) -> Vec<String> {
        ["containers", "initContainers"]
            .iter()
            .flat_map(|list| images(pod, list))
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    }
}
