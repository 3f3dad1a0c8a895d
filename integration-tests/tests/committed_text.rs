//! Committed files stand on their own: no text file in the repository names a directory of the
//! machine it was written on (a home or work directory), and none cites an issue or pull request by
//! number, which means nothing to a reader of the repository.
//!
//! Runtime paths are fine (`/tmp/…` that a command creates, `/etc/sidecar-injector` inside the
//! image), and so are links to other projects' issues (`…/issues/123` is a URL, not a citation).
//! Left out: third-party data committed as it was published (the advisory database snapshot) and
//! fuzz inputs.

use std::path::Path;
use std::process::Command;

/// Directories of a machine, never of the project (where the project's files sit, or a home).
const MACHINE_DIRECTORIES: &[&str] = &["/work/", "/root/", "/home/", "/Users/"];

/// Committed paths whose text is not ours to word.
const NOT_OURS: &[&str] = &["deny/advisory-db/", "fuzz/corpus/", "fuzz/artifacts-found/"];

/// Where `line` cites an issue or pull request by number: the word `issue` (or `issues`, or
/// `pull request`) followed by a number with or without `#`, or `PR` followed by `#` and a number,
/// in any case.
fn issue_citation(line: &str) -> Option<usize> {
    let lower = line.to_ascii_lowercase();
    for (word, needs_hash) in [("issue", false), ("pull request", false), ("pr", true)] {
        for (at, _) in lower.match_indices(word) {
            let starts_word = lower[..at].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric());
            if !starts_word {
                continue;
            }
            let rest = &lower[at + word.len()..];
            let rest = rest.strip_prefix('s').unwrap_or(rest).trim_start_matches([' ', '\t']);
            let (hash, rest) = rest.strip_prefix('#').map_or((false, rest), |r| (true, r));
            if (hash || !needs_hash) && rest.starts_with(|c: char| c.is_ascii_digit()) {
                return Some(at);
            }
        }
    }
    None
}

#[test]
fn the_citation_check_tells_citations_from_prose() {
    // Built at run time, so that this file cites nothing itself.
    for (before, word, after) in [
        ("the harness of ", "issue", " #7"),
        ("", "Issue", " 12 asked"),
        ("see ", "issues", " #6"),
        ("(", "PR", " #40)"),
        ("", "pull request", " 3"),
    ] {
        let cited = format!("{before}{word}{after}");
        assert!(issue_citation(&cited).is_some(), "{cited}");
    }
    for fine in [
        "issues a certificate",
        "the issuer 2 lines down",
        "https://github.com/kubernetes/kubernetes/issues/123",
        "prefix 12",
        "pr 2 is not a citation without #",
        "tissue 5",
    ] {
        assert!(issue_citation(fine).is_none(), "{fine}");
    }
}

#[test]
fn committed_text_names_no_machine_directory_and_cites_no_issue_number() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root");
    if !root.join(".git").exists() {
        eprintln!("SKIPPED: {} is not a git checkout, so the committed files are unknown", root.display());
        return;
    }
    let listing = Command::new("git").arg("-C").arg(root).args(["ls-files", "-z"]).output().expect("git runs");
    assert!(listing.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&listing.stderr));
    let this_file = Path::new(file!()).file_name().expect("a file name");
    let mut findings = Vec::new();
    let mut checked = 0;
    for path in listing.stdout.split(|&b| b == 0).filter(|p| !p.is_empty()) {
        let path = String::from_utf8_lossy(path);
        if NOT_OURS.iter().any(|prefix| path.starts_with(prefix)) || Path::new(&*path).file_name() == Some(this_file) {
            continue;
        }
        // Text files only: a file that is not UTF-8 or holds a NUL byte is binary.
        let Ok(bytes) = std::fs::read(root.join(&*path)) else { continue };
        let Ok(text) = String::from_utf8(bytes) else { continue };
        if text.contains('\0') {
            continue;
        }
        checked += 1;
        for (number, line) in text.lines().enumerate() {
            if let Some(directory) = MACHINE_DIRECTORIES.iter().find(|d| line.contains(**d)) {
                findings.push(format!("{path}:{}: names a machine directory ({directory}): {line}", number + 1));
            }
            if issue_citation(line).is_some() {
                findings.push(format!("{path}:{}: cites an issue by number: {line}", number + 1));
            }
        }
    }
    assert!(checked > 100, "only {checked} committed text files found: is this the repository?");
    assert!(findings.is_empty(), "committed files must stand on their own:\n{}", findings.join("\n"));
}
