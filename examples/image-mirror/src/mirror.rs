//! The mirror policy: which images are pulled through the mirror, and what they are renamed to.
//!
//! An image `registry/path[:tag][@digest]` becomes `mirror/registry/path[:tag][@digest]`, the
//! layout of pull-through caches that serve several upstream registries (for example
//! `mirror.example.com/docker.io/library/nginx:1.25`). The upstream registry becomes a path
//! component, so it is written in lower case and its `:port` as `_port` (host names never contain
//! `_`, so the form is unambiguous). Images on an allowed registry, or already on the mirror's
//! registry, are left as they are — which also makes the rewrite idempotent.

use std::fmt;
use std::str::FromStr;

use crate::reference::{ImageReference, MAX_NAME_LENGTH, ReferenceError, Registry, names_registry};

/// Where mirrored images are pulled from: a registry and an optional path inside it, such as
/// `mirror.example.com` or `registry.corp:5000/mirrors`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorPrefix {
    registry: Registry,
    path: Option<String>,
}

impl MirrorPrefix {
    /// The mirror's registry.
    #[must_use]
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Why a text is not a mirror prefix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PrefixError {
    /// The first component would be read as a Docker Hub user, not a registry.
    #[error(
        "`{0}` would be read as a Docker Hub user, not a registry; a mirror host needs a `.` or a `:port`, or is `localhost`"
    )]
    NotARegistry(String),
    /// The registry or a path component is malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

impl FromStr for MirrorPrefix {
    type Err = PrefixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim_end_matches('/');
        let (host, path) = text.split_once('/').map_or((text, None), |(h, p)| (h, Some(p)));
        if !names_registry(host) {
            return Err(PrefixError::NotARegistry(host.to_owned()));
        }
        let registry: Registry = host.parse()?;
        // Validate the path with the reference grammar: `registry/path` must be a repository name.
        if let Some(path) = path {
            ImageReference::parse(&format!("{host}/{path}"))?;
        }
        Ok(Self { registry, path: path.map(str::to_owned) })
    }
}

impl fmt::Display for MirrorPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{}/{path}", self.registry),
            None => write!(f, "{}", self.registry),
        }
    }
}

/// Why an image cannot be pulled through the mirror.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    /// The image is not a valid reference, so the runtime could not pull it either.
    #[error("image `{image}` is not a valid image reference: {source}")]
    Invalid {
        /// The image as written.
        image: String,
        /// What is wrong with it.
        #[source]
        source: ReferenceError,
    },
    /// An IPv6 address cannot be written as a path component of the mirror.
    #[error(
        "image `{image}` is on a registry addressed by IPv6, which has no name in the mirror; allow the registry or address it by host name"
    )]
    Ipv6Registry {
        /// The image as written.
        image: String,
    },
    /// The mirrored name would exceed the runtimes' limit.
    #[error(
        "image `{image}` would be `{mirrored}` through the mirror, whose name is longer than {MAX_NAME_LENGTH} characters"
    )]
    TooLong {
        /// The image as written.
        image: String,
        /// The name it would get.
        mirrored: String,
    },
}

/// The mirror policy: a mirror prefix and the registries whose images stay as they are.
#[derive(Clone, Debug)]
pub struct ImageMirror {
    prefix: MirrorPrefix,
    allowed: Vec<Registry>,
}

impl ImageMirror {
    /// Pulls images through `prefix`, except those from `allowed` registries (and from the
    /// mirror's own registry, which is always allowed).
    pub fn new(prefix: MirrorPrefix, allowed: impl IntoIterator<Item = Registry>) -> Self {
        Self { prefix, allowed: allowed.into_iter().collect() }
    }

    /// The mirror prefix.
    #[must_use]
    pub fn prefix(&self) -> &MirrorPrefix {
        &self.prefix
    }

    /// Whether images from `registry` stay as they are.
    #[must_use]
    pub fn allows(&self, registry: &Registry) -> bool {
        *registry == self.prefix.registry || self.allowed.contains(registry)
    }

    /// The image to pull instead of `image`, or `None` when `image` stays as it is.
    pub fn rewrite(&self, image: &str) -> Result<Option<String>, MirrorError> {
        let reference =
            ImageReference::parse(image).map_err(|source| MirrorError::Invalid { image: image.to_owned(), source })?;
        if self.allows(&reference.registry) {
            return Ok(None);
        }
        if reference.registry.is_ipv6() {
            return Err(MirrorError::Ipv6Registry { image: image.to_owned() });
        }
        let upstream = reference.registry.as_str().to_ascii_lowercase().replace(':', "_");
        let mirrored = ImageReference {
            registry: self.prefix.registry.clone(),
            path: match &self.prefix.path {
                Some(prefix) => format!("{prefix}/{upstream}/{}", reference.path),
                None => format!("{upstream}/{}", reference.path),
            },
            ..reference
        };
        if mirrored.name().len() > MAX_NAME_LENGTH {
            return Err(MirrorError::TooLong { image: image.to_owned(), mirrored: mirrored.to_string() });
        }
        Ok(Some(mirrored.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn mirror(prefix: &str, allowed: &[&str]) -> ImageMirror {
        ImageMirror::new(prefix.parse().unwrap(), allowed.iter().map(|r| r.parse().unwrap()))
    }

    #[test]
    fn rewrites_images_to_the_mirror_layout() {
        let m = mirror("mirror.example.com", &[]);
        let cases = [
            ("nginx", "mirror.example.com/docker.io/library/nginx"),
            ("nginx:1.25", "mirror.example.com/docker.io/library/nginx:1.25"),
            ("user/app:1", "mirror.example.com/docker.io/user/app:1"),
            ("index.docker.io/user/app", "mirror.example.com/docker.io/user/app"),
            ("registry:5000/x", "mirror.example.com/registry_5000/x"),
            ("localhost/x", "mirror.example.com/localhost/x"),
            ("Registry.Example.COM:443/team/app:v1", "mirror.example.com/registry.example.com_443/team/app:v1"),
            ("10.0.0.1:5000/app", "mirror.example.com/10.0.0.1_5000/app"),
        ];
        for (image, expected) in cases {
            assert_eq!(m.rewrite(image), Ok(Some(expected.to_owned())), "rewriting `{image}`");
        }
        assert_eq!(
            m.rewrite(&format!("quay.io/org/app:2@{SHA}")),
            Ok(Some(format!("mirror.example.com/quay.io/org/app:2@{SHA}")))
        );
        let with_path = mirror("registry.corp:5000/mirrors/", &[]);
        assert_eq!(with_path.rewrite("nginx"), Ok(Some("registry.corp:5000/mirrors/docker.io/library/nginx".into())));
    }

    #[test]
    fn keeps_allowed_and_already_mirrored_images() {
        let m = mirror("mirror.example.com", &["registry.k8s.io", "Quay.IO", "index.docker.io"]);
        for image in [
            "registry.k8s.io/pause:3.10",
            "quay.io/org/app",
            "nginx",
            "user/app",
            "mirror.example.com/docker.io/library/nginx",
            "MIRROR.example.com/anything/else:1",
        ] {
            assert_eq!(m.rewrite(image), Ok(None), "`{image}` should stay");
        }
        assert_eq!(m.rewrite("gcr.io/x/y"), Ok(Some("mirror.example.com/gcr.io/x/y".into())));
    }

    #[test]
    fn explains_images_it_cannot_mirror() {
        let m = mirror("mirror.example.com", &[]);
        let invalid = m.rewrite("Nginx:latest").unwrap_err();
        assert_eq!(
            invalid.to_string(),
            "image `Nginx:latest` is not a valid image reference: repository path component `Nginx` must be lower-case letters and digits, separated by `.`, `_`, `__` or dashes"
        );
        assert!(matches!(m.rewrite("[fd00::1]:5000/app"), Err(MirrorError::Ipv6Registry { .. })));
        assert_eq!(mirror("mirror.example.com", &["[FD00::1]:5000"]).rewrite("[fd00::1]:5000/app"), Ok(None));
        let long = format!("quay.io/{}", "a".repeat(240));
        assert!(matches!(m.rewrite(&long), Err(MirrorError::TooLong { .. })));
    }

    #[test]
    fn mirror_prefixes_must_read_as_registries() {
        assert_eq!("mirror".parse::<MirrorPrefix>(), Err(PrefixError::NotARegistry("mirror".into())));
        assert!("localhost".parse::<MirrorPrefix>().is_ok());
        assert!("localhost:5000/a/b".parse::<MirrorPrefix>().is_ok());
        assert!(matches!("mirror.io/Bad".parse::<MirrorPrefix>(), Err(PrefixError::Reference(_))));
        assert!(matches!("mirror.io:x".parse::<MirrorPrefix>(), Err(PrefixError::Reference(_))));
        assert_eq!("mirror.io/a/".parse::<MirrorPrefix>().unwrap().to_string(), "mirror.io/a");
    }
}
