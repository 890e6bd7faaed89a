//! Downloads for `ADD <http(s) url>`: the same trust roots (tls.rs, never the image's),
//! `HTTP(S)_PROXY`/`NO_PROXY`, timeouts and retries as registry requests. The body is streamed
//! to a file and hashed on the way; with an expected digest (`ADD --checksum`) a mismatch is
//! an error naming both digests, and nothing is kept.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{OciError, Result};

const ATTEMPTS: u32 = 4;
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(500);
/// A response that sends nothing for this long is abandoned (and retried).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A downloaded file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
    /// The response's `Last-Modified`, in seconds since the epoch (0 without one, as
    /// BuildKit sets it).
    pub mtime: i64,
    /// The file name ADD gives it: the URL path's last component (BuildKit's), or
    /// `__unnamed__`.
    pub file_name: String,
}

/// The name BuildKit gives the file `ADD <url>` downloads.
pub fn file_name_of(url: &str) -> String {
    let path = reqwest::Url::parse(url).map(|u| u.path().to_string()).unwrap_or_default();
    match path.rsplit('/').find(|c| !c.is_empty()) {
        Some(base) if base != "." && base != ".." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// Downloads `url` into `path` (created or replaced). `expected`: the digest the content must
/// have.
pub fn download(url: &str, path: &Path, expected: Option<&Digest>) -> Result<Download> {
    let err = |message: String| OciError::Download { url: url.to_string(), message };
    let parsed = reqwest::Url::parse(url).map_err(|e| err(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(err("only http and https URLs can be downloaded".into()));
    }
    let client = client().map_err(|e| err(e.to_string()))?;
    let mut delay = FIRST_RETRY_DELAY;
    let mut attempt = 1;
    let started = std::time::Instant::now();
    tracing::info!("downloading {url}");
    loop {
        match crate::registry::runtime().block_on(fetch(&client, parsed.clone(), path)) {
            Ok((digest, size, mtime)) => {
                if let Some(expected) = expected
                    && *expected != digest
                {
                    let _ = std::fs::remove_file(path);
                    return Err(OciError::ChecksumMismatch {
                        url: url.to_string(),
                        expected: expected.clone(),
                        actual: digest,
                    });
                }
                tracing::info!(
                    "downloaded {url}: {size} bytes, {} in {:.2}s",
                    digest.short(),
                    started.elapsed().as_secs_f64()
                );
                return Ok(Download { path: path.to_path_buf(), digest, size, mtime, file_name: file_name_of(url) });
            }
            Err(Attempt::Fatal(m)) => {
                let _ = std::fs::remove_file(path);
                return Err(err(m));
            }
            Err(Attempt::Transient(m)) => {
                if attempt >= ATTEMPTS || crate::cleanup::interrupted().is_some() {
                    let _ = std::fs::remove_file(path);
                    return Err(err(format!("{m} (after {attempt} attempts)")));
                }
                tracing::warn!("{url}: {m}; retrying in {:.1}s (attempt {attempt} of {ATTEMPTS})", delay.as_secs_f64());
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

enum Attempt {
    Transient(String),
    Fatal(String),
}

fn client() -> std::result::Result<reqwest::Client, reqwest::Error> {
    let env = |names: &[&str]| names.iter().find_map(|n| std::env::var(n).ok().filter(|v| !v.is_empty()));
    let no_proxy = env(&["NO_PROXY", "no_proxy"]).unwrap_or_default();
    let roots: Vec<reqwest::Certificate> = crate::tls::trust_roots()
        .certificates
        .iter()
        .filter_map(|der| reqwest::Certificate::from_der(der).ok())
        .collect();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(READ_TIMEOUT)
        .user_agent(concat!("ext-extend/", env!("CARGO_PKG_VERSION")))
        .no_proxy()
        .tls_certs_only(roots);
    if let Some(p) = env(&["HTTPS_PROXY", "https_proxy"]).and_then(|p| reqwest::Proxy::https(p).ok()) {
        builder = builder.proxy(p.no_proxy(reqwest::NoProxy::from_string(&no_proxy)));
    }
    if let Some(p) = env(&["HTTP_PROXY", "http_proxy"]).and_then(|p| reqwest::Proxy::http(p).ok()) {
        builder = builder.proxy(p.no_proxy(reqwest::NoProxy::from_string(&no_proxy)));
    }
    builder.build()
}

async fn fetch(
    client: &reqwest::Client,
    url: reqwest::Url,
    path: &Path,
) -> std::result::Result<(Digest, u64, i64), Attempt> {
    let response = client.get(url).send().await.map_err(|e| Attempt::Transient(one_line(&e)))?;
    let status = response.status();
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(Attempt::Transient(format!("the server answered {status}")));
    }
    if !status.is_success() {
        return Err(Attempt::Fatal(format!("the server answered {status}")));
    }
    let mtime = response
        .headers()
        .get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date)
        .unwrap_or(0);
    let _ = std::fs::remove_file(path);
    // 0600, as BuildKit's HTTP source creates it; the mtime is set once the body is in.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Attempt::Fatal(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut response = response;
    while let Some(chunk) = response.chunk().await.map_err(|e| Attempt::Transient(one_line(&e)))? {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        file.write_all(&chunk).map_err(|e| Attempt::Fatal(format!("{}: {e}", path.display())))?;
    }
    let modified = if mtime >= 0 {
        std::time::UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        std::time::UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
    };
    file.set_modified(modified).map_err(|e| Attempt::Fatal(format!("{}: {e}", path.display())))?;
    let digest: Digest =
        format!("sha256:{}", hex::encode(hasher.finalize())).parse().expect("a sha256 hex digest is a digest");
    Ok((digest, size, mtime))
}

/// An error and its causes on one line.
fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// An HTTP date in the preferred format (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`), in
/// seconds since the epoch; `None` for anything else (the obsolete formats, which servers no
/// longer send).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let rest = s.trim().split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts.as_slice() else { return None };
    let day: i64 = day.parse().ok()?;
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| m == month)? as i64
        + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<i64> = time.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else { return None };
    if !(1..=31).contains(&day) || *h > 23 || *m > 59 || *sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_and_file_names() {
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("Wed, 29 Feb 2024 12:00:00 GMT"), Some(1_709_208_000));
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date("garbage"), None);
        assert_eq!(file_name_of("https://example.com/a/tool.tar.gz?x=1"), "tool.tar.gz");
        assert_eq!(file_name_of("https://example.com/dir/"), "dir");
        assert_eq!(file_name_of("https://example.com"), "__unnamed__");
    }
}
