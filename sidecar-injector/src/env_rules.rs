//! Which env vars a pod's annotations may set in the containers the catalog defines.
//!
//! Whoever may create a pod chooses its annotations, and so the names and values of env vars in
//! containers a platform team wrote — containers that may hold more privilege than the app (a
//! proxy with `NET_ADMIN`, an agent with host mounts or its own credentials). The rules here decide,
//! per injected container, which of those vars it takes:
//!
//! - `allow`: glob patterns of annotation keys (after the prefix) that may become env vars;
//! - `deny`: patterns of env var names refused, on top of the built-in [`DENIED`] list of loader,
//!   runtime-hook, shell, trust and traffic variables; `exempt` lifts built-in entries;
//! - `locked`: patterns of the container's own env vars (from the catalog) annotations may not replace;
//! - `maxVars` and `maxValueBytes`: how many vars annotations may set in one container, and how long
//!   each value may be;
//! - `onViolation`: `deny` the pod (default) or `skip` the var with a warning.
//!
//! The configuration's `annotationEnv` holds the defaults; a catalog entry's own `annotationEnv`
//! replaces any of them for its containers, except `deny`, which adds to them. Patterns are globs
//! (`*`, `?`, `[…]`, `{a,b}`); `deny` and the built-in list ignore case (the dynamic loader reads
//! only `LD_PRELOAD`, but many tools honour `http_proxy` and `HTTP_PROXY` alike, and refusing the
//! harmless variant costs nothing); `allow`, `exempt` and `locked` match exactly.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

/// The built-in deny-list: env vars that change what a program loads or runs, whom it trusts, or
/// where its traffic goes, matched without regard to case. A pod author who could set one of these
/// in a privileged sidecar could run code in it or read what it sends.
pub const DENIED: &[(&str, &str)] = &[
    // The dynamic loader and the C library.
    ("LD_*", "dynamic loader: preloaded libraries, library and audit paths"),
    ("GCONV_PATH", "glibc: loads character-set conversion modules from this path"),
    ("GLIBC_TUNABLES", "glibc: tunables (the CVE-2023-4911 class)"),
    ("LOCPATH", "glibc: locale data path"),
    ("NLSPATH", "C library: message catalog path"),
    ("HOSTALIASES", "C library: host name aliases file"),
    ("MALLOC_*", "C library: allocator hooks and tracing files"),
    // Language runtimes' start-up hooks and module paths.
    ("JAVA_TOOL_OPTIONS", "JVM: options including -javaagent"),
    ("_JAVA_OPTIONS", "JVM: options including -javaagent"),
    ("JDK_JAVA_OPTIONS", "JVM launcher: options including -javaagent"),
    ("JAVA_OPTS", "JVM start scripts: options including -javaagent"),
    ("CLASSPATH", "JVM: class path"),
    ("NODE_OPTIONS", "Node.js: options including --require and --import"),
    ("NODE_PATH", "Node.js: module path"),
    ("NODE_EXTRA_CA_CERTS", "Node.js: extra trusted CA certificates"),
    ("NODE_TLS_REJECT_UNAUTHORIZED", "Node.js: turns TLS certificate checks off"),
    ("PYTHON*", "Python: PYTHONSTARTUP, PYTHONPATH, PYTHONHOME, PYTHONWARNINGS (imports modules)"),
    ("PERL5*", "Perl: PERL5OPT (-M), PERL5LIB"),
    ("PERLLIB", "Perl: library path"),
    ("RUBYOPT", "Ruby: options including -r"),
    ("RUBYLIB", "Ruby: library path"),
    ("DOTNET_STARTUP_HOOKS", ".NET: start-up hook assemblies"),
    ("CORECLR_*", ".NET: profiler loading"),
    ("COR_*", ".NET Framework: profiler loading"),
    ("GODEBUG", "Go: runtime and TLS/X.509 behaviour switches"),
    ("PHPRC", "PHP: php.ini path (auto_prepend_file)"),
    ("PHP_INI_SCAN_DIR", "PHP: extra ini files"),
    ("LUA_*", "Lua: LUA_INIT (runs code), module paths"),
    ("OPENSSL_*", "OpenSSL: configuration file, engines and providers to load"),
    // Shells.
    ("BASH_ENV", "bash: file sourced by non-interactive shells"),
    ("ENV", "POSIX sh: file sourced by interactive shells"),
    ("BASH_FUNC_*", "bash: exported functions"),
    ("SHELLOPTS", "bash: shell options such as xtrace"),
    ("BASHOPTS", "bash: shell options"),
    ("PS4", "shells: trace prompt, expanded (runs command substitutions)"),
    ("PROMPT_COMMAND", "bash: command run before each prompt"),
    ("IFS", "shells: word splitting"),
    ("CDPATH", "shells: where `cd` looks"),
    ("PATH", "every program: where commands are found"),
    // Whom a program trusts and where its traffic goes.
    ("*_PROXY", "HTTP clients: HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY (traffic redirected)"),
    ("SSL_CERT_*", "TLS clients: trusted CA file and directory"),
    ("*_CA_BUNDLE", "TLS clients: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE"),
    ("KUBERNETES_*", "Kubernetes clients: the API server's address (the service account token would go there)"),
    ("KUBECONFIG", "Kubernetes clients: which cluster and credentials"),
    ("GIT_*", "git: GIT_SSH_COMMAND, GIT_CONFIG_*, GIT_ASKPASS run commands"),
];

/// Glob patterns compiled once, kept with their text for messages and for the configuration's
/// own output. `IGNORE_CASE` patterns match without regard to ASCII case.
#[derive(Clone)]
pub struct Patterns<const IGNORE_CASE: bool> {
    texts: Vec<String>,
    set: GlobSet,
}

impl<const IGNORE_CASE: bool> Patterns<IGNORE_CASE> {
    /// Compiles `texts`; the error names the pattern that is not a glob.
    pub fn new<S: AsRef<str>>(texts: &[S]) -> Result<Self, String> {
        let mut builder = GlobSetBuilder::new();
        for text in texts {
            let text = text.as_ref();
            if text.is_empty() {
                return Err("an empty pattern matches nothing; remove it".to_owned());
            }
            let glob = GlobBuilder::new(text)
                .case_insensitive(IGNORE_CASE)
                .build()
                .map_err(|e| format!("`{text}` is not a glob pattern: {}", e.kind()))?;
            builder.add(glob);
        }
        let set = builder.build().map_err(|e| format!("failed to compile the patterns: {e}"))?;
        Ok(Self { texts: texts.iter().map(|t| t.as_ref().to_owned()).collect(), set })
    }

    /// The first pattern (in written order) that matches `name`.
    #[must_use]
    pub fn first_match(&self, name: &str) -> Option<&str> {
        if self.texts.is_empty() {
            return None;
        }
        self.set.matches(name).into_iter().min().map(|i| self.texts[i].as_str())
    }

    /// Whether any pattern matches `name`.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        !self.texts.is_empty() && self.set.is_match(name)
    }

    /// The patterns as written.
    #[must_use]
    pub fn texts(&self) -> &[String] {
        &self.texts
    }
}

impl<const I: bool> fmt::Debug for Patterns<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.texts).finish()
    }
}

impl<const I: bool> PartialEq for Patterns<I> {
    fn eq(&self, other: &Self) -> bool {
        self.texts == other.texts
    }
}

impl<const I: bool> Eq for Patterns<I> {}

impl<const I: bool> Serialize for Patterns<I> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.texts.serialize(serializer)
    }
}

impl<'de, const I: bool> Deserialize<'de> for Patterns<I> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        Self::new(&texts).map_err(de::Error::custom)
    }
}

/// What a var that breaks a rule does to the pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OnViolation {
    /// Deny the pod, naming the sidecar, the annotation and the rule (default).
    #[default]
    Deny,
    /// Admit the pod without the var, with a warning naming the same.
    Skip,
}

/// The configuration's `annotationEnv`: the rules for every injected container whose catalog entry
/// does not set its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
#[non_exhaustive]
pub struct AnnotationEnv {
    /// Annotation keys (after `<prefix>/`) that may become env vars.
    pub allow: Patterns<false>,
    /// Env var names refused besides the built-in [`DENIED`] list.
    pub deny: Patterns<true>,
    /// Env var names the built-in list does not refuse.
    pub exempt: Patterns<false>,
    /// The container's own env vars annotations may not replace.
    pub locked: Patterns<false>,
    /// Most env vars annotations may set in one container.
    pub max_vars: usize,
    /// Most bytes in one value.
    pub max_value_bytes: usize,
    /// Deny the pod or skip the var.
    pub on_violation: OnViolation,
}

impl Default for AnnotationEnv {
    fn default() -> Self {
        Self {
            allow: Patterns::new(&["*"]).unwrap_or_else(|_| unreachable!("`*` is a glob")),
            deny: Patterns::new::<&str>(&[]).unwrap_or_else(|_| unreachable!("no patterns")),
            exempt: Patterns::new::<&str>(&[]).unwrap_or_else(|_| unreachable!("no patterns")),
            locked: Patterns::new(&["*"]).unwrap_or_else(|_| unreachable!("`*` is a glob")),
            max_vars: 100,
            max_value_bytes: 8 * 1024,
            on_violation: OnViolation::Deny,
        }
    }
}

/// A catalog entry's `annotationEnv`: any rule it sets replaces the configuration's for its
/// containers, but `deny`, which adds to it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct SidecarEnvRules {
    /// Replaces `annotationEnv.allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Patterns<false>>,
    /// Added to `annotationEnv.deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<Patterns<true>>,
    /// Replaces `annotationEnv.exempt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exempt: Option<Patterns<false>>,
    /// Replaces `annotationEnv.locked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked: Option<Patterns<false>>,
    /// Replaces `annotationEnv.maxVars`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vars: Option<usize>,
    /// Replaces `annotationEnv.maxValueBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_value_bytes: Option<usize>,
    /// Replaces `annotationEnv.onViolation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_violation: Option<OnViolation>,
}

/// The built-in deny-list, compiled once.
fn denied() -> &'static Patterns<true> {
    static DENIED_PATTERNS: std::sync::OnceLock<Patterns<true>> = std::sync::OnceLock::new();
    DENIED_PATTERNS.get_or_init(|| {
        let texts: Vec<&str> = DENIED.iter().map(|(pattern, _)| *pattern).collect();
        Patterns::new(&texts).unwrap_or_else(|e| unreachable!("the built-in deny-list compiles: {e}"))
    })
}

/// The rules one container follows: the configuration's, with its catalog entry's over them.
#[derive(Clone, Copy, Debug)]
pub struct Rules<'a> {
    global: &'a AnnotationEnv,
    sidecar: Option<&'a SidecarEnvRules>,
}

/// Which rule a var breaks, and how, for the denial or warning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// The value is longer than `maxValueBytes`.
    ValueBytes {
        /// The value's length.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The key matches none of `allow`.
    NotAllowed {
        /// The patterns.
        allow: Vec<String>,
    },
    /// The name matches a built-in deny pattern.
    Denied {
        /// The pattern.
        pattern: String,
        /// Why it is on the list.
        reason: &'static str,
    },
    /// The name matches a `deny` pattern of the configuration or the entry.
    DeniedByRule {
        /// The pattern.
        pattern: String,
    },
    /// The container already has the var, and `locked` covers it.
    Locked {
        /// The pattern.
        pattern: String,
    },
    /// The container already took `maxVars` vars from annotations.
    TooMany {
        /// The limit.
        limit: usize,
    },
}

impl Violation {
    /// Describes the violation for the sentence "annotation … may not set env var …: {this}",
    /// naming the rule's key and `whose` rules they are.
    #[must_use]
    pub fn describe(&self, whose: &str) -> String {
        match self {
            Self::ValueBytes { bytes, limit } => {
                format!("its value is {bytes} bytes, over the limit of {limit} ({whose} `annotationEnv.maxValueBytes`)")
            }
            Self::NotAllowed { allow } => format!(
                "the key matches none of {whose} `annotationEnv.allow` ({})",
                allow.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
            ),
            Self::Denied { pattern, reason } => format!(
                "it matches `{pattern}` of the built-in deny-list ({reason}); `annotationEnv.exempt` lifts it for the sidecars that must take it"
            ),
            Self::DeniedByRule { pattern } => format!("it matches `{pattern}` of {whose} `annotationEnv.deny`"),
            Self::Locked { pattern } => {
                format!("the sidecar sets this var itself and {whose} `annotationEnv.locked` (`{pattern}`) keeps it")
            }
            Self::TooMany { limit } => format!(
                "annotations would set more than {limit} env vars in this container ({whose} `annotationEnv.maxVars`)"
            ),
        }
    }
}

impl<'a> Rules<'a> {
    /// The configuration's rules, with `sidecar`'s over them when the entry sets any.
    #[must_use]
    pub fn new(global: &'a AnnotationEnv, sidecar: Option<&'a SidecarEnvRules>) -> Self {
        Self { global, sidecar }
    }

    /// Whose rules decided `violation`: the catalog entry's, or the configuration's.
    #[must_use]
    pub fn whose(&self, violation: &Violation) -> &'static str {
        let Some(sidecar) = self.sidecar else { return "the configuration's" };
        let own = match violation {
            Violation::ValueBytes { .. } => sidecar.max_value_bytes.is_some(),
            Violation::NotAllowed { .. } => sidecar.allow.is_some(),
            Violation::Denied { .. } => false,
            Violation::DeniedByRule { pattern } => {
                sidecar.deny.as_ref().is_some_and(|d| d.texts().iter().any(|t| t == pattern))
            }
            Violation::Locked { .. } => sidecar.locked.is_some(),
            Violation::TooMany { .. } => sidecar.max_vars.is_some(),
        };
        if own { "the catalog entry's" } else { "the configuration's" }
    }

    /// What a violation does.
    #[must_use]
    pub fn on_violation(&self) -> OnViolation {
        self.sidecar.and_then(|s| s.on_violation).unwrap_or(self.global.on_violation)
    }

    /// Most vars from annotations in one container.
    #[must_use]
    pub fn max_vars(&self) -> usize {
        self.sidecar.and_then(|s| s.max_vars).unwrap_or(self.global.max_vars)
    }

    /// Checks one var: the annotation `key` (after the prefix) setting env var `name` to `value`;
    /// `existing` says whether the container already has a var of that name.
    pub fn check(&self, key: &str, name: &str, value: &str, existing: bool) -> Result<(), Violation> {
        let sidecar = self.sidecar;
        let limit = sidecar.and_then(|s| s.max_value_bytes).unwrap_or(self.global.max_value_bytes);
        if value.len() > limit {
            return Err(Violation::ValueBytes { bytes: value.len(), limit });
        }
        let allow = sidecar.and_then(|s| s.allow.as_ref()).unwrap_or(&self.global.allow);
        if !allow.matches(key) {
            return Err(Violation::NotAllowed { allow: allow.texts().to_vec() });
        }
        for deny in [Some(&self.global.deny), sidecar.and_then(|s| s.deny.as_ref())].into_iter().flatten() {
            if let Some(pattern) = deny.first_match(name) {
                return Err(Violation::DeniedByRule { pattern: pattern.to_owned() });
            }
        }
        let exempt = sidecar.and_then(|s| s.exempt.as_ref()).unwrap_or(&self.global.exempt);
        if let Some(pattern) = denied().first_match(name)
            && !exempt.matches(name)
        {
            let reason = DENIED.iter().find(|(p, _)| *p == pattern).map_or("", |(_, reason)| *reason);
            return Err(Violation::Denied { pattern: pattern.to_owned(), reason });
        }
        if existing {
            let locked = sidecar.and_then(|s| s.locked.as_ref()).unwrap_or(&self.global.locked);
            if let Some(pattern) = locked.first_match(name) {
                return Err(Violation::Locked { pattern: pattern.to_owned() });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global() -> AnnotationEnv {
        AnnotationEnv::default()
    }

    #[test]
    fn the_built_in_list_refuses_loader_and_runtime_hook_names_in_any_case() {
        let global = global();
        let rules = Rules::new(&global, None);
        for name in [
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "ld_preload",
            "GCONV_PATH",
            "JAVA_TOOL_OPTIONS",
            "NODE_OPTIONS",
            "PYTHONSTARTUP",
            "https_proxy",
            "KUBERNETES_SERVICE_HOST",
            "BASH_ENV",
            "PATH",
        ] {
            let violation = rules.check(name, name, "x", false).unwrap_err();
            assert!(matches!(violation, Violation::Denied { .. }), "{name}: {violation:?}");
        }
        for name in ["api-key", "some-api-key", "SOME_API_KEY", "haystack_env", "LOG_LEVEL", "PATHS_TO_WATCH"] {
            assert_eq!(rules.check(name, name, "x", false), Ok(()), "{name}");
        }
    }

    #[test]
    fn every_built_in_pattern_compiles_and_says_why() {
        assert_eq!(denied().texts().len(), DENIED.len());
        assert!(DENIED.iter().all(|(_, reason)| !reason.is_empty()));
    }

    #[test]
    fn a_sidecar_narrows_allow_adds_deny_and_may_exempt() {
        let global = global();
        let own: SidecarEnvRules = serde_json::from_value(serde_json::json!({
            "allow": ["api-key", "JAVA_TOOL_OPTIONS", "team-*"],
            "deny": ["TEAM-SECRET*"],
            "exempt": ["JAVA_TOOL_OPTIONS"],
        }))
        .unwrap();
        let rules = Rules::new(&global, Some(&own));
        assert_eq!(rules.check("api-key", "api-key", "v", false), Ok(()));
        assert_eq!(rules.check("JAVA_TOOL_OPTIONS", "JAVA_TOOL_OPTIONS", "-Xmx1g", false), Ok(()));
        let not_allowed = rules.check("other", "other", "v", false).unwrap_err();
        assert!(matches!(not_allowed, Violation::NotAllowed { .. }));
        assert_eq!(rules.whose(&not_allowed), "the catalog entry's");
        let denied = rules.check("team-secret-x", "team-secret-x", "v", false).unwrap_err();
        assert_eq!(denied, Violation::DeniedByRule { pattern: "TEAM-SECRET*".into() });
        // Exempt lifts the built-in list only for what it names.
        assert!(matches!(rules.check("team-x", "LD_PRELOAD", "v", false), Err(Violation::Denied { .. })));
    }

    #[test]
    fn locked_vars_value_size_and_rule_owners() {
        let global = global();
        let rules = Rules::new(&global, None);
        let locked = rules.check("haystack_env", "haystack_env", "prod", true).unwrap_err();
        assert_eq!(locked, Violation::Locked { pattern: "*".into() });
        assert_eq!(rules.whose(&locked), "the configuration's");
        assert!(locked.describe(rules.whose(&locked)).contains("`annotationEnv.locked`"));
        let long = "x".repeat(8 * 1024 + 1);
        assert_eq!(
            rules.check("api-key", "api-key", &long, false),
            Err(Violation::ValueBytes { bytes: long.len(), limit: 8 * 1024 })
        );
        let unlocked: SidecarEnvRules = serde_json::from_value(serde_json::json!({"locked": []})).unwrap();
        assert_eq!(Rules::new(&global, Some(&unlocked)).check("haystack_env", "haystack_env", "prod", true), Ok(()));
    }

    #[test]
    fn bad_patterns_are_refused_naming_them() {
        let error = serde_json::from_value::<SidecarEnvRules>(serde_json::json!({"allow": ["api-[key"]})).unwrap_err();
        assert!(error.to_string().contains("`api-[key` is not a glob pattern"), "{error}");
        let error = serde_json::from_value::<AnnotationEnv>(serde_json::json!({"deny": [""]})).unwrap_err();
        assert!(error.to_string().contains("empty pattern"), "{error}");
    }
}
