//! Expedia's command lines, accepted as they are: a Deployment written for the Expedia injector
//! (`ExpediaGroup/kubernetes-sidecar-injector`) starts this binary with its own arguments, and it
//! serves as that Deployment expects.
//!
//! Two generations of flags exist:
//!
//! - **2019** (Go's `flag` package, one dash): `-port` (443), `-certFile`, `-keyFile`, `-sideCar`
//!   (the catalog file, `/etc/mutator/sidecar.yaml`), glog's `-logtostderr` and `-v`;
//! - **2022** (cobra, two dashes): `--port` (443), `--metricsPort`, `--certFile`, `--keyFile`,
//!   `--local`, `--injectPrefix` (`sidecar-injector.expedia.com`), `--injectName` (`inject`),
//!   `--sidecarDataKey` (`sidecars.yaml`: sidecars come from `ConfigMaps` in the pod's namespace,
//!   named by the annotation), `--debug`.
//!
//! [`native`] recognises such an argument list (its first argument is one of these flags) and
//! returns the equivalent native one, `serve --set key=value …`, with a line saying what it
//! recognised. Unknown flags are errors naming the flag; `--local` (plain HTTP) is refused, since
//! the webhook serves HTTPS only.

use std::ffi::OsString;

/// Which generation an argument list was written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    /// Go's `flag` package, one dash.
    Flags2019,
    /// cobra, two dashes.
    Cobra2022,
}

impl Generation {
    fn name(self) -> &'static str {
        match self {
            Self::Flags2019 => "2019 (Go flag)",
            Self::Cobra2022 => "2022 (cobra)",
        }
    }
}

/// A recognised Expedia command line and its native equivalent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Native {
    /// The generation recognised.
    pub generation: Generation,
    /// The native arguments (without the program name): `serve --set key=value …`.
    pub args: Vec<String>,
}

impl Native {
    /// The start-up line: what was recognised and the equivalent native command line.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "Expedia {} command line recognised; serving as: sidecar-injector {}",
            self.generation.name(),
            self.args.join(" ")
        )
    }
}

/// Flags of both generations: name, generation (`None`: both), whether it takes a value.
const FLAGS: [(&str, Option<Generation>, bool); 13] = [
    ("port", None, true),
    ("certFile", None, true),
    ("keyFile", None, true),
    ("sideCar", Some(Generation::Flags2019), true),
    ("logtostderr", Some(Generation::Flags2019), false),
    ("v", Some(Generation::Flags2019), true),
    ("metricsPort", Some(Generation::Cobra2022), true),
    ("local", Some(Generation::Cobra2022), false),
    ("injectPrefix", Some(Generation::Cobra2022), true),
    ("injectName", Some(Generation::Cobra2022), true),
    ("sidecarDataKey", Some(Generation::Cobra2022), true),
    ("debug", Some(Generation::Cobra2022), false),
    // `-h`/`--help` stay ours: they print this binary's help.
    ("alsologtostderr", Some(Generation::Flags2019), false),
];

/// Whether `args` (without the program name) is an Expedia command line: its first argument is one
/// of the flags above, or `serve` followed by one (the image's entrypoint is `sidecar-injector
/// serve`, so a Deployment's `args` written for the Expedia image arrive after it). Then the native
/// equivalent, or why it cannot be served.
#[must_use]
pub fn native(args: &[OsString]) -> Option<Result<Native, String>> {
    let args = match args {
        [serve, rest @ ..] if serve == "serve" && is_expedia_flag(rest.first()) => rest,
        _ => args,
    };
    is_expedia_flag(args.first()).then(|| translate(args))
}

fn is_expedia_flag(arg: Option<&OsString>) -> bool {
    arg.and_then(|a| a.to_str()).and_then(flag_name).is_some_and(|name| FLAGS.iter().any(|(n, ..)| *n == name))
}

/// `-port=1` / `--port` → `port`.
fn flag_name(arg: &str) -> Option<&str> {
    let bare = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let name = bare.split_once('=').map_or(bare, |(n, _)| n);
    (!name.is_empty()).then_some(name)
}

/// The flags given, by name (the last of a repeated flag wins), and the generation they belong to.
type Given = (Generation, Vec<(&'static str, String)>);

fn parse(args: &[OsString]) -> Result<Given, String> {
    let mut values: Vec<(&'static str, String)> = Vec::new();
    let mut generation: Option<Generation> = None;
    let mut dashes: Option<usize> = None;
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].to_str().ok_or_else(|| format!("argument `{}` is not UTF-8", args[i].display()))?;
        let Some(name) = flag_name(arg) else {
            return Err(format!("unexpected argument `{arg}` in an Expedia command line (flags only)"));
        };
        let &(known, of, takes_value) = FLAGS
            .iter()
            .find(|(n, ..)| *n == name)
            .ok_or_else(|| format!("unknown flag `{arg}` in an Expedia command line; known: {}", known_flags()))?;
        if let Some(of) = of {
            match generation {
                Some(g) if g != of => {
                    return Err(format!(
                        "`{arg}` is a {} flag, but the command line also has {} flags",
                        of.name(),
                        g.name()
                    ));
                }
                _ => generation = Some(of),
            }
        }
        dashes.get_or_insert(if arg.starts_with("--") { 2 } else { 1 });
        let value = match arg.split_once('=') {
            Some((_, value)) => value.to_owned(),
            None if takes_value => {
                i += 1;
                let next = args.get(i).and_then(|a| a.to_str()).ok_or_else(|| format!("`{arg}` needs a value"))?;
                next.to_owned()
            }
            None => "true".to_owned(),
        };
        values.push((known, value));
        i += 1;
    }
    // Only flags both generations share: the dashes tell (cobra takes two, Go's flag one).
    let generation =
        generation.unwrap_or(if dashes == Some(2) { Generation::Cobra2022 } else { Generation::Flags2019 });
    Ok((generation, values))
}

fn translate(args: &[OsString]) -> Result<Native, String> {
    let (generation, values) = parse(args)?;
    let get = |name: &str| values.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
    let boolean = |name: &str| -> Result<bool, String> {
        get(name).map_or(Ok(false), |v| match v.as_str() {
            "true" | "1" | "t" | "T" | "TRUE" | "True" => Ok(true),
            "false" | "0" | "f" | "F" | "FALSE" | "False" => Ok(false),
            other => Err(format!("flag `{name}` takes true or false, got `{other}`")),
        })
    };
    let port = |name: &str, default: u16| -> Result<u16, String> {
        get(name).map_or(Ok(default), |v| v.parse().map_err(|_| format!("flag `{name}`: `{v}` is not a port")))
    };
    let webhook_port = port("port", 443)?;
    let mut set = vec![
        format!("server.webhookAddr=0.0.0.0:{webhook_port}"),
        format!("server.tlsCertFile={}", get("certFile").unwrap_or_else(|| "/etc/mutator/certs/cert.pem".to_owned())),
        format!("server.tlsKeyFile={}", get("keyFile").unwrap_or_else(|| "/etc/mutator/certs/key.pem".to_owned())),
        // The sidecars are the ones the command line names, never the embedded example.
        "sidecars=[]".to_owned(),
        // The webhook configuration written for the Expedia injector decides which namespaces are
        // sent; this server trusts it rather than read namespace labels of its own.
        "server.namespaceCache=never".to_owned(),
    ];
    let mut debug = false;
    match generation {
        Generation::Flags2019 => {
            set.push(format!(
                "catalogPaths=[{}]",
                serde_json::to_string(&get("sideCar").unwrap_or_else(|| "/etc/mutator/sidecar.yaml".to_owned()))
                    .map_err(|e| e.to_string())?
            ));
            if let Some(v) = get("v") {
                let level: u32 = v.parse().map_err(|_| format!("flag `v` takes a number, got `{v}`"))?;
                debug = level >= 2;
            }
        }
        Generation::Cobra2022 => {
            if boolean("local")? {
                return Err("`--local` (plain HTTP with the local kubeconfig) is not supported: this webhook serves \
                            HTTPS only; run `sidecar-injector serve` for a local run (it makes its own certificate)"
                    .to_owned());
            }
            // `--metricsPort` defaults to `--port`: then the metrics are on the webhook port.
            let metrics_port = port("metricsPort", webhook_port)?;
            if metrics_port == webhook_port {
                set.push("server.metricsOnWebhookPort=true".to_owned());
            } else {
                set.push(format!("server.adminAddr=0.0.0.0:{metrics_port}"));
            }
            set.push(format!(
                "annotationPrefix={}",
                get("injectPrefix").unwrap_or_else(|| "sidecar-injector.expedia.com".to_owned())
            ));
            set.push(format!("injectAnnotationName={}", get("injectName").unwrap_or_else(|| "inject".to_owned())));
            set.push("namespaceCatalogs=true".to_owned());
            set.push(format!(
                "namespaceCatalogKey={}",
                get("sidecarDataKey").unwrap_or_else(|| "sidecars.yaml".to_owned())
            ));
            debug = boolean("debug")?;
        }
    }
    if debug {
        set.push("server.log=debug".to_owned());
    }
    let mut native = vec!["serve".to_owned()];
    for item in set {
        native.push("--set".to_owned());
        native.push(item);
    }
    Ok(Native { generation, args: native })
}

fn known_flags() -> String {
    FLAGS.iter().map(|(n, ..)| *n).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn sets(native: &Native) -> Vec<&str> {
        native.args.iter().skip(1).filter(|a| *a != "--set").map(String::as_str).collect()
    }

    #[test]
    fn the_2019_charts_command_line() {
        let native = native(&args(&[
            "-port=8443",
            "-certFile=/etc/webhook/certs/cert.pem",
            "-keyFile=/etc/webhook/certs/key.pem",
            "-sideCar=/etc/webhook/config/sidecarconfig.yaml",
            "-logtostderr",
            "-v",
            "4",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(native.generation, Generation::Flags2019);
        assert_eq!(native.args[0], "serve");
        assert_eq!(
            sets(&native),
            [
                "server.webhookAddr=0.0.0.0:8443",
                "server.tlsCertFile=/etc/webhook/certs/cert.pem",
                "server.tlsKeyFile=/etc/webhook/certs/key.pem",
                "sidecars=[]",
                "server.namespaceCache=never",
                "catalogPaths=[\"/etc/webhook/config/sidecarconfig.yaml\"]",
                "server.log=debug",
            ]
        );
        assert!(
            native.describe().starts_with(
                "Expedia 2019 (Go flag) command line recognised; serving as: sidecar-injector serve --set"
            )
        );
    }

    #[test]
    fn the_2022_charts_command_line() {
        let native = native(&args(&[
            "--port=8443",
            "--metricsPort",
            "9090",
            "--certFile=/opt/certs/tls.crt",
            "--keyFile=/opt/certs/tls.key",
            "--injectPrefix=injector.example.com",
            "--injectName=sidecars",
            "--sidecarDataKey=data.yaml",
            "--debug",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(native.generation, Generation::Cobra2022);
        assert_eq!(
            sets(&native),
            [
                "server.webhookAddr=0.0.0.0:8443",
                "server.tlsCertFile=/opt/certs/tls.crt",
                "server.tlsKeyFile=/opt/certs/tls.key",
                "sidecars=[]",
                "server.namespaceCache=never",
                "server.adminAddr=0.0.0.0:9090",
                "annotationPrefix=injector.example.com",
                "injectAnnotationName=sidecars",
                "namespaceCatalogs=true",
                "namespaceCatalogKey=data.yaml",
                "server.log=debug",
            ]
        );
        // The defaults: port 443, the certificate paths of the 2022 image, metrics on the webhook
        // port (and on the admin port, at its own default), debug off.
        let defaults = super::native(&args(&["--port=443", "--debug=false"])).unwrap().unwrap();
        assert_eq!(
            sets(&defaults),
            [
                "server.webhookAddr=0.0.0.0:443",
                "server.tlsCertFile=/etc/mutator/certs/cert.pem",
                "server.tlsKeyFile=/etc/mutator/certs/key.pem",
                "sidecars=[]",
                "server.namespaceCache=never",
                "server.metricsOnWebhookPort=true",
                "annotationPrefix=sidecar-injector.expedia.com",
                "injectAnnotationName=inject",
                "namespaceCatalogs=true",
                "namespaceCatalogKey=sidecars.yaml",
            ]
        );
    }

    #[test]
    fn after_the_images_serve_entrypoint_too() {
        let after_entrypoint = native(&args(&["serve", "--port=8443", "--injectName=sidecars"])).unwrap().unwrap();
        let alone = native(&args(&["--port=8443", "--injectName=sidecars"])).unwrap().unwrap();
        assert_eq!(after_entrypoint.args, alone.args);
        assert!(native(&args(&["serve", "--config", "c.yaml"])).is_none(), "native serve flags stay native");
    }

    #[test]
    fn native_command_lines_are_left_alone() {
        for list in [&["serve"][..], &["--config", "c.yaml", "serve"], &["--help"], &["-h"], &["--version"], &[]] {
            assert!(native(&args(list)).is_none(), "{list:?}");
        }
    }

    #[test]
    fn unknown_mixed_and_unsupported_flags_are_errors_naming_the_flag() {
        let error = |list: &[&str]| native(&args(list)).unwrap().unwrap_err();
        assert_eq!(
            error(&["-port=8443", "-sidecarConfig=x"]),
            "unknown flag `-sidecarConfig=x` in an Expedia command line; known: port, certFile, keyFile, sideCar, logtostderr, v, metricsPort, local, injectPrefix, injectName, sidecarDataKey, debug, alsologtostderr"
        );
        assert_eq!(
            error(&["--port=8443", "-sideCar=x", "--injectName=a"]),
            "`--injectName=a` is a 2022 (cobra) flag, but the command line also has 2019 (Go flag) flags"
        );
        assert!(
            error(&["--port=8443", "--local"])
                .starts_with("`--local` (plain HTTP with the local kubeconfig) is not supported")
        );
        assert_eq!(error(&["--port=https"]), "flag `port`: `https` is not a port");
        assert_eq!(error(&["--certFile"]), "`--certFile` needs a value");
        assert_eq!(
            error(&["--port=1", "serve"]),
            "unexpected argument `serve` in an Expedia command line (flags only)"
        );
    }
}
