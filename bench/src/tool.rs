//! The load generators the harness runs as child processes (vegeta, oha): finding them through
//! their build-once scripts, and running them without blocking the harness's runtime.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, bail};

/// Runs `bash script args…`, a script that builds a tool once and prints where it is as the last
/// line of its stdout (its progress goes to stderr, passed through), and returns that line.
/// `hint` follows the error when the script fails.
pub fn script_last_line(script: &Path, args: &[&str], hint: &str) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    if !out.status.success() {
        bail!("{} {} failed ({}): {hint}", script.display(), args.join(" "), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().map(str::trim).unwrap_or_default();
    anyhow::ensure!(!last.is_empty(), "{} printed nothing", script.display());
    Ok(last.to_owned())
}

/// Runs `command` (named `name` in errors) to its end off the runtime's thread, stdin closed.
pub async fn run(mut command: Command, name: &str) -> anyhow::Result<Output> {
    command.stdin(Stdio::null());
    let program = command.get_program().to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || command.output())
        .await
        .with_context(|| format!("the thread waiting for {name} failed"))?
        .with_context(|| format!("failed to start {name} ({program})"))
}
