//! `bench layout`: the functions of a sidecar-injector build that run when it starts and serves,
//! hottest first, written as the linker's symbol-ordering file.
//!
//! The `dist` build hands that file to the linker (`sidecar-injector/build.rs`), which then places
//! those functions next to each other. At idle the kernel maps a file's pages around each touched
//! code page (fault-around, 64 KiB), so start-up code spread over the whole binary keeps most of it
//! resident; laid out together it keeps about the size of what actually runs.
//!
//! The names are measured, not guessed: the binary runs under valgrind's callgrind, starts, answers
//! reviews of every corpus size over TLS (and a malformed one; and over every cipher suite and
//! key-exchange group it supports), serves `/metrics`, `/readyz` and
//! `/healthz`, and stops on `SIGTERM`. Every function of the binary that executed an instruction is
//! listed. Symbol names carry a hash of the compiler, the lock file, the profile, the target and
//! `RUSTFLAGS`, not of the source: the file stays valid across source changes, and has to be
//! written again after a toolchain or dependency update (names the linker cannot find are ignored).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::client::{Connection, REVIEW_PATH, Tls};
use crate::corpus::{Size, entry};
use crate::servers::{free_port, get_status, ours_serve_args, readyz, write_certificates};

/// What `bench layout` measured for one binary.
#[derive(Debug)]
pub struct Measured {
    /// The binary's functions that ran, hottest (most instructions of their own) first.
    pub functions: Vec<String>,
    /// Instructions executed in the binary's own code.
    pub instructions: u64,
}

/// Runs `binary` under callgrind with the workload above; the functions that ran.
pub fn measure(binary: &Path, work_dir: &Path) -> anyhow::Result<Measured> {
    let version = Command::new("valgrind").arg("--version").output();
    if !version.is_ok_and(|o| o.status.success()) {
        bail!(
            "`bench layout` runs the binary under valgrind, which is not installed (Debian: `apt-get install valgrind`)"
        );
    }
    std::fs::create_dir_all(work_dir)?;
    let ca = write_certificates(work_dir)?;
    let (webhook, admin) = (free_port()?, free_port()?);
    let profile = work_dir.join("callgrind.out");
    let log = work_dir.join("server.log");
    let _ = std::fs::remove_file(&profile);
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--demangle=no")
        .arg("--dump-instr=no")
        .arg(format!("--callgrind-out-file={}", profile.display()))
        .arg(binary)
        .args(ours_serve_args(webhook, admin, work_dir))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(work_dir.join("valgrind.log"))?)
        .spawn()
        .context("failed to start valgrind")?;
    let served = serve_workload(&mut child, webhook, admin, &ca);
    let _ = Command::new("kill").args(["-s", "TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("{} did not stop within 120 s of SIGTERM under valgrind", binary.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    served.with_context(|| format!("the workload failed; server log: {}", log.display()))?;
    if !status.success() {
        bail!("{} exited with {status} after SIGTERM; server log: {}", binary.display(), log.display());
    }
    let file_name = binary.file_name().and_then(|n| n.to_str()).context("the binary's path has no file name")?;
    let reader = std::io::BufReader::new(
        std::fs::File::open(&profile)
            .with_context(|| format!("callgrind wrote no profile at {}", profile.display()))?,
    );
    let measured = functions_of(reader, file_name)?;
    ensure_named(&measured, binary)?;
    Ok(measured)
}

/// Refuses a measurement that names no Rust function: a stripped binary, whose functions callgrind
/// can name only by address, gives the linker nothing to order.
fn ensure_named(measured: &Measured, binary: &Path) -> anyhow::Result<()> {
    if measured.functions.is_empty() {
        bail!("callgrind saw no function of {}", binary.display());
    }
    if !measured.functions.iter().any(|f| f.starts_with("_ZN") || f.starts_with("_R")) {
        bail!(
            "{} has no symbol table (callgrind names its functions by address): the `dist` profile keeps it (`strip = \"debuginfo\"`)",
            binary.display()
        );
    }
    Ok(())
}

/// Start-up, reviews of every size on one keep-alive connection, one malformed review, a review
/// over every cipher suite and key-exchange group, the admin endpoints.
fn serve_workload(
    child: &mut std::process::Child,
    webhook: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    ca: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    while !readyz(admin) {
        if let Some(status) = child.try_wait()? {
            bail!("the server exited with {status} before it was ready");
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the server was not ready within 120 s under valgrind");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let tls = Tls::verifying(ca)?;
        let mut conn = Connection::open(webhook, &tls).await?;
        for size in [Size::K2, Size::K10, Size::K100, Size::M1, Size::K2, Size::K10] {
            let reply = conn.post(REVIEW_PATH, Bytes::from(entry(size).body), false).await?;
            if !reply.is_admitted() {
                bail!("the {} review was not admitted: {}", size.name(), reply.status);
            }
        }
        let reply = conn.post(REVIEW_PATH, Bytes::from_static(b"{\"kind\":\"AdmissionReview\""), false).await?;
        if reply.status != http::StatusCode::BAD_REQUEST {
            bail!("a malformed review was answered {}, not 400", reply.status);
        }
        // A handshake with every cipher suite and key-exchange group the server supports, each
        // on a connection of its own: whichever a client chooses, its code is laid out with the
        // rest. (TLS 1.2 suites that need another kind of certificate than the generated ECDSA
        // one are refused by the server, and are not counted.)
        let provider = admission_kit::tls::provider();
        let mut handshakes = 0;
        for suite in &provider.cipher_suites {
            for group in &provider.kx_groups {
                let Ok(mut fresh) = Connection::open(webhook, &Tls::verifying_only(ca, *suite, *group)?).await else {
                    continue;
                };
                if !fresh.post(REVIEW_PATH, Bytes::from(entry(Size::K2).body), true).await?.is_admitted() {
                    bail!("the review over {:?} with {:?} was not admitted", suite.suite(), group.name());
                }
                handshakes += 1;
            }
        }
        println!(
            "  {handshakes} handshakes of {} suites × {} groups",
            provider.cipher_suites.len(),
            provider.kx_groups.len()
        );
        if handshakes < provider.kx_groups.len() {
            bail!("only {handshakes} handshakes of the server's suites and groups succeeded");
        }
        anyhow::Ok(())
    })?;
    for path in ["/metrics", "/readyz", "/livez"] {
        let status = get_status(admin, path, Duration::from_secs(30))?;
        if status != 200 {
            bail!("GET {path} answered {status}");
        }
    }
    Ok(())
}

/// The functions of the object file named `file_name` in a callgrind profile, hottest first.
///
/// The format (valgrind's "Callgrind Format Specification"): `ob=`/`fn=` lines set the current
/// object and function, naming them on first use as `(id) name` and by `(id)` after that; `cob=`/
/// `cfn=` name a called function the same way; a cost line after `calls=` is the call's inclusive
/// cost, any other cost line is the current function's own. Callgrind marks recursion depth with a
/// `'N` suffix, which is not part of the symbol.
pub fn functions_of(reader: impl BufRead, file_name: &str) -> anyhow::Result<Measured> {
    #[derive(Default)]
    struct Names(HashMap<String, String>);
    impl Names {
        fn resolve(&mut self, text: &str) -> Option<String> {
            let text = text.trim();
            let Some(rest) = text.strip_prefix('(') else { return Some(text.to_owned()) };
            let (id, name) = rest.split_once(')')?;
            let name = name.trim();
            if name.is_empty() {
                self.0.get(id).cloned()
            } else {
                self.0.insert(id.to_owned(), name.to_owned());
                Some(name.to_owned())
            }
        }
    }
    let (mut objects, mut names) = (Names::default(), Names::default());
    let mut object_of: HashMap<String, Option<String>> = HashMap::new();
    let mut own: HashMap<String, u64> = HashMap::new();
    let mut first_seen: Vec<String> = Vec::new();
    let (mut object, mut function, mut called_object) = (None::<String>, None::<String>, None::<String>);
    let mut call_cost_next = false;
    let mut note = |name: &str, ob: Option<String>, object_of: &mut HashMap<String, Option<String>>| {
        if !object_of.contains_key(name) {
            object_of.insert(name.to_owned(), ob);
            first_seen.push(name.to_owned());
        }
    };
    for line in reader.lines() {
        let line = line?;
        if let Some(rest) = line.strip_prefix("ob=") {
            object = objects.resolve(rest);
        } else if let Some(rest) = line.strip_prefix("cob=") {
            called_object = objects.resolve(rest);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            function = names.resolve(rest);
            if let Some(name) = &function {
                note(name, object.clone(), &mut object_of);
            }
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            if let Some(name) = names.resolve(rest) {
                note(&name, called_object.take().or_else(|| object.clone()), &mut object_of);
            }
        } else if line.starts_with("calls=") {
            call_cost_next = true;
        } else if line.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '*')) {
            if std::mem::take(&mut call_cost_next) {
                continue;
            }
            let cost = line.split_whitespace().nth(1).and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
            if let Some(name) = &function {
                *own.entry(name.clone()).or_default() += cost;
            }
        }
    }
    let in_binary = |ob: &Option<String>| {
        ob.as_deref().is_some_and(|ob| Path::new(ob).file_name().and_then(|n| n.to_str()) == Some(file_name))
    };
    // One symbol per entry: callgrind's recursion copies (`name'2`) add their cost to the symbol's.
    let mut cost: HashMap<String, u64> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    for name in &first_seen {
        if !in_binary(&object_of[name]) {
            continue;
        }
        let symbol = strip_recursion(name);
        if !cost.contains_key(symbol) {
            order.push(symbol.to_owned());
        }
        *cost.entry(symbol.to_owned()).or_default() += own.get(name).copied().unwrap_or(0);
    }
    // Hottest first; ties (functions that ran a few instructions) keep the order they were seen in.
    order.sort_by_key(|name| std::cmp::Reverse(cost[name]));
    let instructions = order.iter().map(|n| cost[n]).sum();
    Ok(Measured { functions: order, instructions })
}

fn strip_recursion(name: &str) -> &str {
    match name.rsplit_once('\'') {
        Some((symbol, depth)) if !depth.is_empty() && depth.bytes().all(|b| b.is_ascii_digit()) => symbol,
        _ => name,
    }
}

/// The symbol-ordering file for `measured` builds (a label, what ran): a header naming the
/// compiler, then each build's functions in order, every name once.
#[must_use]
pub fn ordering_file(rustc: &str, measured: &[(String, Measured)]) -> String {
    let mut out = String::from(
        "# The functions of sidecar-injector's `dist` builds that run when it starts and serves, hottest\n\
         # first: the linker places them together (see sidecar-injector/build.rs). Written by\n\
         # `cargo run --release -p bench -- layout`; names of another toolchain, lock file or build are\n\
         # ignored by the linker, so write it again after updating either. The build uses it only\n\
         # with the compiler named here.\n",
    );
    let _ = writeln!(out, "# rustc: {rustc}");
    let mut seen = std::collections::HashSet::new();
    for (build, m) in measured {
        let _ = writeln!(out, "# {build}: {} functions, {} instructions", m.functions.len(), m.instructions);
        // Functions with no symbol (callgrind names them by address) cannot be ordered by name.
        for name in m.functions.iter().filter(|name| !name.starts_with("0x")) {
            if seen.insert(name.as_str()) {
                out.push_str(name);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callgrind profile in the format valgrind 3.19 writes (`--dump-instr=no`): name compression,
    /// a call into another object, a call within the binary to a function named only there, a
    /// recursion copy.
    const PROFILE: &str = "\
version: 1
creator: callgrind-3.19.0
events: Ir

ob=(1) /usr/lib/x86_64-linux-gnu/libc.so.6
fl=(1) ???
fn=(1) memcpy
0 50

ob=(2) /srv/build/sidecar-injector
fl=(2) ???
fn=(2) _ZN4main17h0000000000000001E
0 10
cob=(1)
cfn=(1)
calls=2 0
0 500
cfn=(3) _ZN4cold17h0000000000000002E
calls=1 0
0 5
fn=(4) _ZN3hot17h0000000000000003E
0 1000
fn=(5) _ZN3rec17h0000000000000004E'2
0 30
fn=(6) _ZN3rec17h0000000000000004E
0 40
fn=(3)
0 5
";

    #[test]
    fn lists_the_binarys_functions_hottest_first_with_their_own_cost() {
        let measured = functions_of(PROFILE.as_bytes(), "sidecar-injector").unwrap();
        assert_eq!(
            measured.functions,
            [
                "_ZN3hot17h0000000000000003E",
                "_ZN3rec17h0000000000000004E",
                "_ZN4main17h0000000000000001E",
                "_ZN4cold17h0000000000000002E",
            ]
        );
        // main's own 10, not the 500 and 5 of its calls; the recursion copy's 30 counts for rec.
        assert_eq!(measured.instructions, 1000 + 70 + 10 + 5);
    }

    #[test]
    fn another_objects_functions_are_not_listed() {
        let measured = functions_of(PROFILE.as_bytes(), "libc.so.6").unwrap();
        assert_eq!(measured.functions, ["memcpy"]);
        assert!(functions_of(PROFILE.as_bytes(), "injector").unwrap().functions.is_empty());
    }

    #[test]
    fn a_stripped_binary_is_refused_with_the_reason() {
        let stripped = PROFILE
            .replace("_ZN4main17h0000000000000001E", "0x0000000000012340")
            .replace("_ZN4cold17h0000000000000002E", "0x0000000000012350")
            .replace("_ZN3hot17h0000000000000003E", "0x0000000000012360")
            .replace("_ZN3rec17h0000000000000004E", "0x0000000000012370");
        let measured = functions_of(stripped.as_bytes(), "sidecar-injector").unwrap();
        let error = ensure_named(&measured, Path::new("sidecar-injector")).unwrap_err().to_string();
        assert!(error.contains("no symbol table"), "{error}");
        let none = functions_of(PROFILE.as_bytes(), "other-binary").unwrap();
        assert!(ensure_named(&none, Path::new("other-binary")).unwrap_err().to_string().contains("saw no function"));
        ensure_named(&functions_of(PROFILE.as_bytes(), "sidecar-injector").unwrap(), Path::new("x")).unwrap();
    }

    #[test]
    fn the_file_names_the_compiler_and_lists_every_symbol_once_and_no_address() {
        let m = |names: &[&str]| Measured { functions: names.iter().map(|&n| n.to_owned()).collect(), instructions: 1 };
        let file = ordering_file(
            "rustc 1.95.0 (59807616e 2026-04-14)",
            &[("dist/sidecar-injector".to_owned(), m(&["x", "0x12340", "y"])), ("static".to_owned(), m(&["y", "z"]))],
        );
        let symbols: Vec<&str> = file.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(symbols, ["x", "y", "z"]);
        // sidecar-injector/build.rs compares this line with the compiler that builds.
        assert!(file.lines().any(|l| l == "# rustc: rustc 1.95.0 (59807616e 2026-04-14)"));
    }
}
