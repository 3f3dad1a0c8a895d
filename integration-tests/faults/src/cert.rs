//! Certificate rotation: "certificate rotation under load: zero failed requests, new cert served
//! within the reload interval".
//!
//! The certificate directory is laid out as kubelet mounts a Secret: `tls.crt -> ..data/tls.crt`,
//! `..data -> ..<version>/`; a rotation writes a new `..<version>/` directory and renames a new
//! `..data` symlink over the old one (kubelet's `AtomicWriter`), so the server sees the new pair at
//! once or not at all. The new leaf has a new serial and is signed by the same CA. While 10 KB
//! reviews run at 1,000/s over keep-alive connections, fresh TLS handshakes (no session resumption,
//! verified against the CA) probe every 10 ms which certificate is served.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber};
use tokio::time::Instant;

use super::{Ctx, Outcome, Scenario, Verdict, admin, check_load, spread_s, still_serving};
use bench::client::{Tls, served_certificate};
use bench::load;

/// The reload interval the server is configured with.
const INTERVAL: Duration = Duration::from_secs(1);
/// Slack on top of the interval for "within the reload interval": the probes' own spacing (10 ms)
/// and a timer or read that is a little late.
const SLACK: Duration = Duration::from_millis(250);
/// A probe interval.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// A CA that signs serving certificates for `localhost` and `127.0.0.1`.
pub(super) struct Authority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub(super) ca_pem: String,
}

/// A serving certificate and its key.
pub(super) struct Leaf {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    /// The certificate, DER: what a handshake presents.
    pub(super) der: Vec<u8>,
}

impl Authority {
    pub(super) fn new() -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "bench fault-test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&key)?;
        Ok(Self { ca_pem: ca.pem(), issuer: Issuer::new(params, key) })
    }

    /// A new leaf with its own key and serial `serial`.
    pub(super) fn issue(&self, serial: u64) -> anyhow::Result<Leaf> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, "localhost");
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() })
    }
}

/// Publishes `leaf` into `dir` as kubelet updates a Secret volume: a new `..<version>` directory,
/// a `..data_tmp` symlink to it renamed over `..data` (atomic), `tls.crt`/`tls.key` symlinks
/// through `..data` (made once), the previous version removed.
pub(super) fn publish(dir: &Path, version: u32, leaf: &Leaf) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let name = format!("..v{version:04}");
    let data = dir.join(&name);
    std::fs::create_dir_all(&data)?;
    std::fs::write(data.join("tls.crt"), &leaf.cert_pem)?;
    std::fs::write(data.join("tls.key"), &leaf.key_pem)?;
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp)?;
    let previous = std::fs::read_link(dir.join("..data")).ok();
    std::fs::rename(&tmp, dir.join("..data")).context("swapping ..data")?;
    for file in ["tls.crt", "tls.key"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(file), &link)?;
        }
    }
    if let Some(previous) = previous
        && previous != Path::new(&name)
    {
        let _ = std::fs::remove_dir_all(dir.join(previous));
    }
    Ok(())
}

/// One rotation as the probes saw it.
struct Rotation {
    serial: u64,
    /// From the `..data` swap to the first handshake presenting the new certificate.
    taken: Option<Duration>,
}

#[allow(clippy::too_many_lines, reason = "one scenario read top to bottom: set-up, fault, checks, figures")]
pub(super) async fn run(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let dir = ctx.scenario_dir(Scenario::CertRotation)?;
    let certs = dir.join("certs");
    let ca = Authority::new()?;
    let first = ca.issue(1)?;
    publish(&certs, 1, &first)?;
    let tls = Tls::verifying(&ca.ca_pem)?;
    let fresh = Tls::verifying_fresh(&ca.ca_pem)?;
    let spec = ctx.spec(&certs, &dir);
    let interval = format!("{}ms", INTERVAL.as_millis());
    let mut server =
        ctx.start(&spec, 1, &[format!("--set=server.certReloadInterval={interval}")], "info", &tls).await?;
    let admin = server.admin.context("no admin address")?;
    let initially = served_certificate(server.webhook, &fresh).await?;
    let (seconds, at): (f64, &[f64]) = ctx.pick((7.0, &[1.5, 4.0]), (20.0, &[2.0, 6.0, 10.0, 14.0]));
    let load_spec = ctx.load(1000.0, 1.0, seconds);
    let start = Instant::now();
    let rotations = async {
        let mut out = Vec::new();
        let mut probe_failures = Vec::new();
        let mut probes = 0u64;
        for (i, t) in at.iter().enumerate() {
            let serial = u64::try_from(i).unwrap_or(0) + 2;
            let leaf = ca.issue(serial)?;
            tokio::time::sleep_until(start + Duration::from_secs_f64(*t)).await;
            publish(&certs, u32::try_from(serial).unwrap_or(u32::MAX), &leaf)?;
            let swapped = Instant::now();
            let mut taken = None;
            while swapped.elapsed() < INTERVAL * 5 {
                probes += 1;
                match tokio::time::timeout(Duration::from_secs(2), served_certificate(server.webhook, &fresh)).await {
                    Ok(Ok(der)) if der == leaf.der => {
                        taken = Some(swapped.elapsed());
                        break;
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => probe_failures.push(format!("{error:#}")),
                    Err(_) => probe_failures.push("a probe handshake took more than 2 s".to_owned()),
                }
                tokio::time::sleep(PROBE_EVERY).await;
            }
            out.push(Rotation { serial, taken });
        }
        anyhow::Ok((out, probes, probe_failures))
    };
    let (report, rotations) = tokio::join!(load::open_loop(server.webhook, &tls, &load_spec), rotations);
    let report = report?;
    let (rotations, probes, probe_failures) = rotations?;
    let metrics = admin::metrics(admin).await?;
    let reloaded = admin::value(&metrics, "admission_kit_certificate_reloads_total{result=\"success\"}");
    let reload_failures = admin::value(&metrics, "admission_kit_certificate_reloads_total{result=\"failure\"}");
    let log = super::log_text(&server);
    let logged = log.lines().filter(|l| l.contains("serving certificate reloaded")).count();
    let alive = still_serving(ctx, &mut server, &tls).await;
    let _ = server.stop();

    let mut v = Verdict::new(ctx.short);
    check_load(&mut v, "load during the rotations", &report);
    v.check(initially == first.der, || {
        "before any rotation the server did not present the first certificate".to_owned()
    });
    v.check(probe_failures.is_empty(), || {
        format!("{} of {probes} probe handshakes failed: {}", probe_failures.len(), probe_failures.join(" / "))
    });
    for r in &rotations {
        v.check(r.taken.is_some(), || {
            format!("the certificate with serial {} was not served within {:?} of its swap", r.serial, INTERVAL * 5)
        });
        if let Some(taken) = r.taken {
            v.timing(taken <= INTERVAL + SLACK, || {
                format!(
                    "serial {} served {:.0} ms after the swap: more than the {} ms reload interval + {} ms",
                    r.serial,
                    super::ms(taken),
                    INTERVAL.as_millis(),
                    SLACK.as_millis()
                )
            });
        }
    }
    v.check(report.reopened == 0, || {
        format!("{} keep-alive connections had to be reopened during the rotations", report.reopened)
    });
    v.check(reloaded >= super::f(u64::try_from(rotations.len()).unwrap_or(0)), || {
        format!("certificate_reloads_total{{result=\"success\"}} is {reloaded}, expected {}", rotations.len())
    });
    v.check(logged >= rotations.len(), || {
        format!("{logged} `serving certificate reloaded` log lines for {} rotations", rotations.len())
    });
    v.check(alive.is_ok(), || format!("after the rotations: {}", alive.clone().err().unwrap_or_default()));
    let taken: Vec<Duration> = rotations.iter().filter_map(|r| r.taken).collect();
    let each: Vec<String> = rotations
        .iter()
        .map(|r| {
            r.taken.map_or_else(
                || format!("serial {}: never", r.serial),
                |t| format!("serial {}: {:.0} ms", r.serial, super::ms(t)),
            )
        })
        .collect();
    let worst = taken.iter().max().copied().unwrap_or_default();
    let figures = format!(
        "{} rotations at 1,000 reviews/s: {} of {} requests failed, {} keep-alive connections reopened; new certificate served after {} (min/median/max {}; worst {:.2}× the {} ms interval); {probes} probe handshakes, {} failed; reloads counted {reloaded} (failed reloads {reload_failures}); p99 {:.2} ms",
        rotations.len(),
        report.errors,
        report.scheduled,
        report.reopened,
        each.join(", "),
        spread_s(&taken),
        worst.as_secs_f64() / INTERVAL.as_secs_f64(),
        INTERVAL.as_millis(),
        probe_failures.len(),
        report.latency_ms(0.99),
    );
    let checked = format!(
        "cert/key replaced {} times mid-load (new serial, same CA, kubelet-style `..data` symlink swap), `server.certReloadInterval` {} ms: zero failed requests; keep-alive connections kept (none reopened); fresh verified handshakes every 10 ms see the new certificate within the interval + {} ms{}; reload counter and log line per rotation",
        rotations.len(),
        INTERVAL.as_millis(),
        SLACK.as_millis(),
        if ctx.short { " (reported; enforced: within 5× the interval)" } else { "" },
    );
    Ok(v.outcome(Scenario::CertRotation, checked, figures))
}
