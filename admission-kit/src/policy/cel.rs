//! CEL text for policies: literals that convert back to the JSON they came from, and messages
//! written once for both the in-process denial and the policy's.

use std::fmt::Write as _;

use serde_json::Value;

/// `text` as a CEL string literal: double-quoted, with backslash, quote and control characters
/// escaped; other characters are written as they are (CEL source is UTF-8).
#[must_use]
pub fn string(text: &str) -> String {
    quoted(text, '"')
}

/// `text` as a CEL string literal between `quote`s (`"` or `'`).
#[must_use]
pub fn quoted(text: &str, quote: char) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// A CEL expression whose value is `value`, for a `JSONPatch` operation's `value`. Every element of
/// a map or list is wrapped in `dyn(…)`: the API server's CEL refuses literals that mix types
/// (`{"name": "a", "args": ["x"]}`) unless each element is `dyn`.
#[must_use]
pub fn value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.to_string()
            } else if let Some(u) = n.as_u64() {
                format!("{u}u")
            } else {
                let f = n.as_f64().unwrap_or_default();
                // A CEL double literal needs a fraction or an exponent.
                let text = f.to_string();
                if text.contains(['.', 'e', 'E']) { text } else { format!("{text}.0") }
            }
        }
        Value::String(s) => string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| format!("dyn({})", self::value(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let entries: Vec<String> =
                map.iter().map(|(k, v)| format!("{}: dyn({})", string(k), self::value(v))).collect();
            format!("{{{}}}", entries.join(", "))
        }
    }
}

/// A list of strings as a CEL list literal.
#[must_use]
pub fn strings<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| string(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// `container` (a JSON object) as a CEL expression with the env vars of `env`, a CEL list whose
/// items (`item`) give a var's name and value through the expressions `name` and `value`: the
/// container's own vars of those names replaced in place (`valueFrom` and all), the others appended
/// in the list's order. With an empty list, the container as it is.
#[must_use]
pub fn container_with_env(container: &Value, env: &str, item: &str, name: &str, value: &str) -> String {
    let plain = self::value(container);
    let Some(fields) = container.as_object() else { return plain };
    let own = fields.get("env").and_then(Value::as_array).cloned().unwrap_or_default();
    let own_names: Vec<&str> = own.iter().map(|v| v.get("name").and_then(Value::as_str).unwrap_or_default()).collect();
    let var = format!("{{\"name\": dyn({name}), \"value\": dyn({value})}}");
    let mut parts: Vec<String> = own
        .iter()
        .zip(&own_names)
        .map(|(v, n)| {
            let n = string(n);
            format!(
                "[{env}.exists({item}, {name} == {n}) ? dyn({env}.filter({item}, {name} == {n}).map({item}, {var})[0]) : dyn({})]",
                self::value(v)
            )
        })
        .collect();
    parts.push(format!("{env}.filter({item}, !({name} in {})).map({item}, dyn({var}))", strings(&own_names)));
    let mut items: Vec<String> = fields
        .iter()
        .filter(|(k, _)| *k != "env")
        .map(|(k, v)| format!("{}: dyn({})", string(k), self::value(v)))
        .collect();
    items.push(format!("\"env\": dyn({})", parts.join(" + ")));
    format!("(size({env}) == 0 ? {plain} : {{{}}})", items.join(", "))
}

/// One token of a JSON pointer (RFC 6901): `~` as `~0`, `/` as `~1`.
#[must_use]
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// A glob pattern (`*`, `?`, `[…]`, `[!…]`, `{a,b}`, `\\` escapes; as the `globset` crate reads
/// them, with `*` crossing `/`) as an anchored RE2 regular expression for CEL's `matches`, which
/// the API server evaluates with Go's `regexp`.
///
/// # Errors
/// An unclosed `[` or `{`, a nested `{`, or a trailing `\\`.
pub fn glob_regex(glob: &str, ignore_case: bool) -> Result<String, String> {
    // Inside `{…}`, the branches so far and the one being written; `globset` drops empty branches.
    let mut alternation: Option<(Vec<String>, String)> = None;
    let mut out = String::from(if ignore_case { "(?is)^" } else { "(?s)^" });
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        let mut piece = String::new();
        match c {
            '*' => {
                while chars.peek() == Some(&'*') {
                    chars.next();
                }
                piece.push_str(".*");
            }
            '?' => piece.push('.'),
            '[' => {
                piece.push('[');
                if matches!(chars.peek(), Some('!' | '^')) {
                    chars.next();
                    piece.push('^');
                }
                let mut first = true;
                loop {
                    let Some(c) = chars.next() else { return Err(format!("`{glob}`: unclosed `[`")) };
                    match c {
                        ']' if !first => break,
                        '\\' | '[' | ']' | '^' => {
                            piece.push('\\');
                            piece.push(c);
                        }
                        c => piece.push(c),
                    }
                    first = false;
                }
                piece.push(']');
            }
            '{' if alternation.is_some() => return Err(format!("`{glob}`: nested `{{`")),
            '{' => {
                alternation = Some((Vec::new(), String::new()));
                continue;
            }
            ',' if alternation.is_some() => {
                if let Some((branches, current)) = &mut alternation
                    && !current.is_empty()
                {
                    branches.push(std::mem::take(current));
                }
                continue;
            }
            '}' if alternation.is_some() => {
                if let Some((mut branches, current)) = alternation.take() {
                    if !current.is_empty() {
                        branches.push(current);
                    }
                    piece = format!("(?:{})", branches.join("|"));
                }
            }
            '\\' => match chars.next() {
                Some(escaped) => push_literal(&mut piece, escaped),
                None => return Err(format!("`{glob}`: a trailing `\\`")),
            },
            c => push_literal(&mut piece, c),
        }
        match &mut alternation {
            Some((_, current)) => current.push_str(&piece),
            None => out.push_str(&piece),
        }
    }
    if alternation.is_some() {
        return Err(format!("`{glob}`: unclosed `{{`"));
    }
    out.push('$');
    Ok(out)
}

fn push_literal(out: &mut String, c: char) {
    if "\\.+*?()|[]{}^$".contains(c) {
        out.push('\\');
    }
    out.push(c);
}

/// A message with `{placeholders}`, rendered as text in-process and as a CEL string concatenation
/// in a policy, so that both modes say the same words.
///
/// ```
/// use admission_kit::policy::cel::Template;
/// let t = Template::new("sidecar `{name}` is unknown");
/// assert_eq!(t.text(&[("name", "x")]), "sidecar `x` is unknown");
/// assert_eq!(t.cel(&[("name", "n")]), r#""sidecar `" + (n) + "` is unknown""#);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Slot(String),
}

impl Template {
    /// Parses `text`: `{name}` is a placeholder; any other brace is text.
    #[must_use]
    pub fn new(text: &str) -> Self {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut literal = String::new();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let slot = after
                .find('}')
                .map(|close| &after[..close])
                .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            literal.push_str(&rest[..open]);
            if let Some(slot) = slot {
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Slot(slot.to_owned()));
                rest = &after[slot.len() + 1..];
            } else {
                literal.push('{');
                rest = after;
            }
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Self { parts }
    }

    /// The message with each placeholder replaced by its value (a placeholder without one stays).
    #[must_use]
    pub fn text(&self, values: &[(&str, &str)]) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(t) => t.clone(),
                Part::Slot(s) => {
                    values.iter().find(|(k, _)| k == s).map_or_else(|| format!("{{{s}}}"), |(_, v)| (*v).to_owned())
                }
            })
            .collect()
    }

    /// The message as a CEL expression, each placeholder replaced by its (string-typed) expression.
    #[must_use]
    pub fn cel(&self, expressions: &[(&str, &str)]) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|part| match part {
                Part::Text(t) => string(t),
                Part::Slot(s) => expressions
                    .iter()
                    .find(|(k, _)| k == s)
                    .map_or_else(|| string(&format!("{{{s}}}")), |(_, e)| format!("({e})")),
            })
            .collect();
        if parts.is_empty() { string("") } else { parts.join(" + ") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_escape_what_cel_requires() {
        assert_eq!(string("a\"b\\c\nd\u{1}é"), r#""a\"b\\c\nd\u0001é""#);
    }

    #[test]
    fn values_wrap_every_element_in_dyn() {
        assert_eq!(
            value(&json!({"name": "a", "args": ["x", 1], "n": null, "f": 1.5, "t": true})),
            r#"{"args": dyn([dyn("x"), dyn(1)]), "f": dyn(1.5), "n": dyn(null), "name": dyn("a"), "t": dyn(true)}"#
        );
        assert_eq!(value(&json!([])), "[]");
        assert_eq!(value(&json!({})), "{}");
        assert_eq!(value(&json!(2.0)), "2.0");
    }

    #[test]
    fn globs_become_anchored_regular_expressions() {
        assert_eq!(glob_regex("LD_*", true).as_deref(), Ok("(?is)^LD_.*$"));
        assert_eq!(glob_regex("a.b?[!x-z]{c,d}\\*", false).as_deref(), Ok("(?s)^a\\.b.[^x-z](?:c|d)\\*$"));
        // `globset` drops empty branches: `_{,a}` is `_a`.
        assert_eq!(glob_regex("_{,a}", false).as_deref(), Ok("(?s)^_(?:a)$"));
        assert!(glob_regex("[ab", false).is_err());
        assert!(glob_regex("{a", false).is_err());
    }

    proptest::proptest! {
        /// The regular expression matches exactly what `globset` matches (the `regex` crate reads
        /// these constructs as Go's `regexp` does).
        #[test]
        fn glob_regexes_match_what_globset_matches(
            glob in "([a-c_.]|\\*|\\?|\\[!?[a-c]{1,2}\\]|\\{[a-c]{0,2},[a-c]{1,2}\\}){1,5}",
            text in "[a-cA-C_.]{0,6}",
            ignore_case: bool,
        ) {
            let set = globset::GlobBuilder::new(&glob).case_insensitive(ignore_case).build()
                .map_err(|e| proptest::test_runner::TestCaseError::reject(e.to_string()))?
                .compile_matcher();
            let regex = regex::Regex::new(&glob_regex(&glob, ignore_case).map_err(proptest::test_runner::TestCaseError::fail)?)
                .map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?;
            proptest::prop_assert_eq!(set.is_match(&text), regex.is_match(&text), "glob {} regex {}", glob, regex);
        }
    }

    #[test]
    fn pointer_tokens_escape_tilde_then_slash() {
        assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn templates_keep_braces_that_are_not_placeholders() {
        let t = Template::new("{a} and {not a slot} and {} and {b}");
        assert_eq!(t.text(&[("a", "1"), ("b", "2")]), "1 and {not a slot} and {} and 2");
        assert_eq!(t.cel(&[("a", "x"), ("b", "y")]), r#"(x) + " and {not a slot} and {} and " + (y)"#);
        assert_eq!(Template::new("").cel(&[]), r#""""#);
    }
}
