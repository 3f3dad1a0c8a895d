//! The server's admin port from async code: `/readyz`, `/livez`, `/metrics` over plain HTTP/1.1.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `GET path` on the admin address: the status and the body (within two seconds).
pub(super) async fn get(admin: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = TcpStream::connect(admin).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no end of headers")?;
        let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok((status, body))
    })
    .await
    .context("the admin port did not answer within 2 s")?
}

/// The body of a chunked response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The server's metrics, as text.
pub(super) async fn metrics(admin: SocketAddr) -> anyhow::Result<String> {
    let (status, body) = get(admin, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    Ok(body)
}

/// The value of one series (`name` with its labels exactly as exposed, e.g.
/// `admission_kit_certificate_reloads_total{result="success"}`); 0 when absent (a labelled counter
/// appears only once it has been counted).
pub(super) fn value(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every series of the metric `name`, whatever its labels (`x_total{reason="a"}` and
/// `x_total{reason="b"}`, or an unlabelled `x_total`); 0 when there is none.
pub(super) fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// [`sum`] from the live server.
pub(super) async fn read_sum(admin: SocketAddr, name: &str) -> anyhow::Result<f64> {
    Ok(sum(&metrics(admin).await?, name))
}

/// One series' value from the live server (0 when absent or unreachable, with the error).
pub(super) async fn read(admin: SocketAddr, series: &str) -> anyhow::Result<f64> {
    Ok(value(&metrics(admin).await?, series))
}

#[cfg(test)]
mod tests {
    #[test]
    fn series_values_and_chunks() {
        let text = "# TYPE x counter\nx_total{result=\"success\"} 3\nx_total{result=\"failure\"} 1\ng 2.5\n";
        assert!((super::value(text, "x_total{result=\"failure\"}") - 1.0).abs() < f64::EPSILON);
        assert!((super::value(text, "g") - 2.5).abs() < f64::EPSILON);
        assert!(super::value(text, "x_total{result=\"other\"}").abs() < f64::EPSILON);
        assert!((super::sum(text, "x_total") - 4.0).abs() < f64::EPSILON);
        assert!((super::sum(text, "g") - 2.5).abs() < f64::EPSILON);
        assert!(super::sum(text, "x").abs() < f64::EPSILON, "a name that is only a prefix of another");
        assert_eq!(super::dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), "hello world");
    }
}
