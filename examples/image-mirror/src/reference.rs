//! Container image references, parsed and normalised the way the container runtimes do.
//!
//! Implements the grammar of `distribution/reference` (`ParseNormalizedNamed`), which containerd,
//! CRI-O and the kubelet all use: `[registry/]path[:tag][@digest]`, where the first component is a
//! registry only if it contains `.` or `:`, is `localhost`, or has an upper-case letter. Otherwise
//! the image is on Docker Hub (`docker.io`), and single-component Hub names live under `library/`:
//! `nginx` is `docker.io/library/nginx`, `user/app:1` is `docker.io/user/app:1`. `index.docker.io`
//! is the same registry as `docker.io`. See
//! <https://github.com/distribution/reference/blob/main/reference.go> and
//! <https://kubernetes.io/docs/concepts/containers/images/#image-names>.

use std::fmt;
use std::str::FromStr;

/// The registry images without one come from.
pub const DOCKER_HUB: &str = "docker.io";
const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// Docker Hub's namespace for single-component ("official") image names.
const OFFICIAL_REPOSITORY_PREFIX: &str = "library/";
/// The longest repository name (registry and path) the runtimes accept.
pub const MAX_NAME_LENGTH: usize = 255;

/// Why a text is not an image reference.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// The text is empty.
    #[error("the image reference is empty")]
    Empty,
    /// The registry part is not a host name, IP address or `[IPv6]`, with an optional port.
    #[error("`{0}` is not a registry host (a host name, IP address or [IPv6] address, with an optional :port)")]
    Registry(String),
    /// A path component breaks the repository grammar.
    #[error(
        "repository path component `{0}` must be lower-case letters and digits, separated by `.`, `_`, `__` or dashes"
    )]
    PathComponent(String),
    /// The tag breaks the tag grammar.
    #[error("tag `{0}` must be 1 to 128 letters, digits, `_`, `.` or `-`, and not start with `.` or `-`")]
    Tag(String),
    /// The digest breaks the digest grammar.
    #[error("digest `{0}` must be `algorithm:hex`, e.g. `sha256:` followed by 64 lower-case hex digits")]
    Digest(String),
    /// The repository name (registry and path) is too long.
    #[error("repository name `{0}` is longer than {MAX_NAME_LENGTH} characters")]
    TooLong(String),
    /// A bare 64-digit hex string is an image id, not a name.
    #[error("`{0}` is an image id (64 hex digits), not an image name")]
    ImageId(String),
}

/// A registry host: a DNS name, IPv4 address or bracketed IPv6 address, with an optional port.
///
/// Kept as written (a registry named `Upper` only reads as a registry because of its capital), but
/// compared without regard to case, as host names are; `index.docker.io` becomes `docker.io`.
#[derive(Clone, Debug, Eq)]
pub struct Registry(String);

impl Registry {
    /// The host (and port) as written.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the host is a bracketed IPv6 address.
    #[must_use]
    pub fn is_ipv6(&self) -> bool {
        self.0.starts_with('[')
    }

    /// Docker Hub.
    #[must_use]
    pub fn docker_hub() -> Self {
        Self(DOCKER_HUB.to_owned())
    }
}

impl PartialEq for Registry {
    fn eq(&self, other: &Self) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }
}

impl FromStr for Registry {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if !is_registry(text) {
            return Err(ReferenceError::Registry(text.to_owned()));
        }
        let hub = text.eq_ignore_ascii_case(DOCKER_HUB) || text.eq_ignore_ascii_case(LEGACY_DOCKER_HUB);
        Ok(if hub { Self::docker_hub() } else { Self(text.to_owned()) })
    }
}

impl fmt::Display for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed, normalised image reference: `registry/path[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageReference {
    /// The registry (`docker.io` when the text names none).
    pub registry: Registry,
    /// The repository path inside the registry (`library/nginx`).
    pub path: String,
    /// The tag, if any (`1.25`).
    pub tag: Option<String>,
    /// The digest, if any (`sha256:…`).
    pub digest: Option<String>,
}

impl ImageReference {
    /// Parses and normalises an image reference as the container runtimes do.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::ImageId(text.to_owned()));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) if is_digest(digest) => (rest, Some(digest.to_owned())),
            Some((_, digest)) => return Err(ReferenceError::Digest(digest.to_owned())),
            None => (text, None),
        };
        // A `:` after the last `/` starts the tag; one before it is a registry port.
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if rest[colon..].find('/').is_none() => (&rest[..colon], Some(&rest[colon + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag.filter(|t| !is_tag(t)) {
            return Err(ReferenceError::Tag(tag.to_owned()));
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, path)) if names_registry(first) => (first.parse::<Registry>()?, path.to_owned()),
            _ => (Registry::docker_hub(), name.to_owned()),
        };
        let path = if registry == Registry::docker_hub() && !path.contains('/') {
            format!("{OFFICIAL_REPOSITORY_PREFIX}{path}")
        } else {
            path
        };
        if let Some(bad) = path.split('/').find(|c| !is_path_component(c)) {
            return Err(ReferenceError::PathComponent(bad.to_owned()));
        }
        let reference = Self { registry, path, tag: tag.map(str::to_owned), digest };
        if reference.name().len() > MAX_NAME_LENGTH {
            return Err(ReferenceError::TooLong(reference.name()));
        }
        Ok(reference)
    }

    /// The repository name: `registry/path`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }
}

/// The fully qualified form: `docker.io/library/nginx:1.25`.
impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Whether the first component of a name is a registry rather than a Docker Hub user.
pub(crate) fn names_registry(first: &str) -> bool {
    first.contains(['.', ':']) || first == "localhost" || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]`, where host is a DNS name or IPv4 address (components of letters, digits and
/// inner dashes) or a bracketed IPv6 address.
fn is_registry(text: &str) -> bool {
    let (host_ok, port) = if let Some((ipv6, rest)) = text.strip_prefix('[').and_then(|t| t.split_once(']')) {
        let ipv6_ok = !ipv6.is_empty() && ipv6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        (ipv6_ok, if rest.is_empty() { None } else { Some(rest.strip_prefix(':').unwrap_or_default()) })
    } else {
        let (host, port) = text.split_once(':').map_or((text, None), |(h, p)| (h, Some(p)));
        (!text.starts_with('[') && host.split('.').all(is_dns_component), port)
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_dns_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_path_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Every run of separators must be `.`, `_`, `__` or one or more dashes.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let run = &c[start..i];
        if !matches!(run, "." | "_" | "__") && !run.bytes().all(|b| b == b'-') {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    tag.len() <= 128 && tag.bytes().next().is_some_and(word) && tag.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:encoded`, the algorithm `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*` and the
/// encoded part at least 32 hex digits; the registered algorithms need their exact lower-case length.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else { return false };
    let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
        part.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) && part.bytes().all(|b| b.is_ascii_alphanumeric())
    });
    let lower_hex = |len: usize| hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    algorithm_ok
        && match algorithm {
            "sha256" => lower_hex(64),
            "sha384" => lower_hex(96),
            "sha512" => lower_hex(128),
            _ => hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn normalised(text: &str) -> String {
        ImageReference::parse(text).map_or_else(|e| panic!("`{text}` should parse: {e}"), |r| r.to_string())
    }

    #[test]
    fn normalises_like_the_container_runtimes() {
        let cases = [
            ("nginx", "docker.io/library/nginx"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("user/app:1", "docker.io/user/app:1"),
            ("docker.io/nginx", "docker.io/library/nginx"),
            ("index.docker.io/user/app", "docker.io/user/app"),
            ("registry:5000/x", "registry:5000/x"),
            ("registry:5000/x:v2", "registry:5000/x:v2"),
            ("localhost/x", "localhost/x"),
            ("localhost:5000/team/x:dev", "localhost:5000/team/x:dev"),
            ("Registry.Example.COM/app", "Registry.Example.COM/app"),
            ("Upper/app", "Upper/app"),
            ("10.0.0.1:5000/app", "10.0.0.1:5000/app"),
            ("[fd00::1]:5000/app", "[fd00::1]:5000/app"),
            ("gcr.io/project/sub/app_x__y-z--w.v", "gcr.io/project/sub/app_x__y-z--w.v"),
            // Without a `/`, `localhost:5000` is Docker Hub's `localhost` with tag `5000`, as in Docker.
            ("localhost:5000", "docker.io/library/localhost:5000"),
        ];
        for (text, expected) in cases {
            assert_eq!(normalised(text), expected, "normalising `{text}`");
        }
        assert_eq!(normalised(&format!("nginx@{SHA}")), format!("docker.io/library/nginx@{SHA}"));
        assert_eq!(normalised(&format!("quay.io/a/b:1.0@{SHA}")), format!("quay.io/a/b:1.0@{SHA}"));
    }

    #[test]
    fn splits_registry_path_tag_and_digest() {
        let r = ImageReference::parse(&format!("registry:5000/team/app:v1@{SHA}")).unwrap();
        assert_eq!(r.registry.as_str(), "registry:5000");
        assert_eq!(r.path, "team/app");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.digest.as_deref(), Some(SHA));
    }

    #[test]
    fn rejects_what_the_runtimes_reject() {
        let hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let cases: [(&str, ReferenceError); 11] = [
            ("", ReferenceError::Empty),
            ("Nginx", ReferenceError::PathComponent("Nginx".into())),
            ("nginx:", ReferenceError::Tag(String::new())),
            ("nginx:.x", ReferenceError::Tag(".x".into())),
            ("nginx@sha256:abc", ReferenceError::Digest("sha256:abc".into())),
            ("nginx@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef", {
                ReferenceError::Digest("sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef".into())
            }),
            ("foo:bar/baz", ReferenceError::Registry("foo:bar".into())),
            ("-bad.io/app", ReferenceError::Registry("-bad.io".into())),
            ("a//b", ReferenceError::PathComponent(String::new())),
            ("app/x_-y", ReferenceError::PathComponent("x_-y".into())),
            (hex64, ReferenceError::ImageId(hex64.into())),
        ];
        for (text, expected) in cases {
            assert_eq!(ImageReference::parse(text), Err(expected), "parsing `{text}`");
        }
        let long = format!("registry.io/{}", "a".repeat(250));
        assert!(matches!(ImageReference::parse(&long), Err(ReferenceError::TooLong(_))));
    }

    #[test]
    fn registries_are_case_insensitive_and_know_docker_hubs_old_name() {
        assert_eq!("Index.Docker.IO".parse::<Registry>().unwrap(), Registry::docker_hub());
        assert_eq!("Quay.io:443".parse::<Registry>().unwrap(), "quay.IO:443".parse::<Registry>().unwrap());
        for bad in ["", "a/b", "host:", "host:x", "[zz]", "[::1", "[::1]x", "[::1]:", "a..b", "a-.b"] {
            assert!(bad.parse::<Registry>().is_err(), "`{bad}` should not be a registry");
        }
    }
}
