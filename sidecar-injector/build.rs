//! Lays out the functions that run when the injector starts and serves next to each other in the
//! `dist` build, from `symbol-order.txt` (written by `bench layout`).
//!
//! At idle the kernel keeps mapped the 64 KiB around every code page a process touched
//! (fault-around), so start-up code spread over the whole binary keeps most of it resident; laid
//! out together, about the size of what ran stays. The file's names hold a hash of the compiler,
//! the lock file, the profile, the target and `RUSTFLAGS`, so it applies only to the builds it was
//! written from, and only where the linker is the one that reads it: LLD, the default of the
//! `x86_64-unknown-linux-gnu` target since Rust 1.90. Everywhere else the build is the same as
//! without it.

use std::path::Path;

const ORDER_FILE: &str = "symbol-order.txt";

fn main() {
    println!("cargo::rerun-if-changed={ORDER_FILE}");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    // OUT_DIR is <target dir>/[<triple>/]<profile>/build/<package>-<hash>/out.
    let out_dir = var("OUT_DIR");
    let profile = Path::new(&out_dir).ancestors().nth(3).and_then(Path::file_name).and_then(|p| p.to_str());
    if profile != Some("dist") || var("TARGET") != "x86_64-unknown-linux-gnu" {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(ORDER_FILE);
    let Ok(text) = std::fs::read_to_string(&order) else { return };
    let written_with = text.lines().find_map(|l| l.strip_prefix("# rustc: ")).unwrap_or("").trim().to_owned();
    let rustc = std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let custom_linker = std::env::var_os("RUSTC_LINKER").is_some()
        || var("CARGO_ENCODED_RUSTFLAGS").split('\x1f').any(|f| f.contains("linker") || f.contains("fuse-ld"));
    if rustc != written_with {
        println!(
            "cargo::warning={ORDER_FILE} was written with `{written_with}`, this is `{rustc}`: the binary's start-up code is not laid out together (more of it stays resident at idle); `bench layout` writes it again"
        );
    } else if custom_linker {
        println!(
            "cargo::warning=a linker is configured, so {ORDER_FILE} is not passed to it (it needs LLD's --symbol-ordering-file)"
        );
    } else {
        println!("cargo::rustc-link-arg-bin=sidecar-injector=-Wl,--symbol-ordering-file={}", order.display());
        // Names of the other builds the file lists, or of functions since renamed, are expected.
        println!("cargo::rustc-link-arg-bin=sidecar-injector=-Wl,--no-warn-symbol-ordering");
    }
}
