//! End-to-end: `ADD <http url>` against a real HTTP server on 127.0.0.1 (a small one in this
//! file, so the test can count requests and act as a proxy): BuildKit's file name, mode,
//! owner and mtime; `--chown`/`--chmod`; redirects; `--unpack`; a 404 and a wrong checksum
//! fail naming what is at fault; `HTTP_PROXY` is used; with `--checksum` a step cache hit
//! downloads nothing, without it the key follows the content.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::*;

/// `Last-Modified` of the served files, and the same instant in seconds.
const LAST_MODIFIED: &str = "Tue, 15 Nov 1994 08:12:31 GMT";
const LAST_MODIFIED_SECS: i64 = 784_887_151;

#[derive(Default)]
struct Served {
    /// Path -> body.
    files: HashMap<String, Vec<u8>>,
    /// Every request target, as sent (absolute when the client talks to a proxy).
    requests: Vec<String>,
}

/// An HTTP/1.1 server on a free port of 127.0.0.1: `files` with `Last-Modified`, `/moved`
/// redirecting to `/files/tool.sh`, 404 for anything else. Absolute request targets (a
/// client using it as its proxy) are served by their path.
struct HttpServer {
    addr: String,
    served: Arc<Mutex<Served>>,
}

impl HttpServer {
    fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let served = Arc::new(Mutex::new(Served::default()));
        let state = served.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let path = match target.strip_prefix("http://") {
                    Some(rest) => rest.find('/').map_or("/".to_string(), |i| rest[i..].to_string()),
                    None => target.clone(),
                };
                let mut served = state.lock().unwrap();
                served.requests.push(target);
                let response: Vec<u8> = if path == "/moved" {
                    b"HTTP/1.1 302 Found\r\nLocation: /files/tool.sh\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                } else if let Some(body) = served.files.get(&path) {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: {LAST_MODIFIED}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
                };
                drop(served);
                let _ = conn.write_all(&response);
            }
        });
        HttpServer { addr, served }
    }

    fn serve(&self, path: &str, body: &[u8]) {
        self.served.lock().unwrap().files.insert(path.to_string(), body.to_vec());
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many requests named `path` (directly or through the proxy).
    fn requests_for(&self, path: &str) -> usize {
        self.served.lock().unwrap().requests.iter().filter(|t| t.ends_with(path)).count()
    }

    fn requests(&self) -> Vec<String> {
        self.served.lock().unwrap().requests.clone()
    }
}

fn sha256_of(bytes: &[u8]) -> String {
    let out =
        Command::new("sha256sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn();
    let mut child = out.unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!("sha256:{}", String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap())
}

/// A `.tar.gz` holding `inner.txt`.
fn tar_gz(dir: &Path) -> Vec<u8> {
    let src = dir.join("tar-src");
    write(&src.join("inner.txt"), "from the archive\n");
    let archive = dir.join("a.tar.gz");
    let ok = Command::new("tar").arg("-czf").arg(&archive).arg("-C").arg(&src).arg("inner.txt").status().unwrap();
    assert!(ok.success());
    std::fs::read(archive).unwrap()
}

/// `ext-extend build` of `dockerfile` on a fresh base, with `env`; the step cache in `cache`
/// if given (else off).
fn build(t: &Path, name: &str, dockerfile: &str, cache: Option<&Path>, env: &[(&str, &str)]) -> Output {
    let base = t.join("base");
    if !base.exists() {
        make_run_image(&base, "latest", false);
    }
    let df = t.join(format!("{name}.Dockerfile"));
    write(&df, dockerfile);
    let ctx = t.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["build", "--from", &format!("oci:{}:latest", s(&base)), "-f", &s(&df), "--context", &s(&ctx)])
        .args(["--output", &format!("oci:{}:{name}", s(&t.join("out")))])
        .env_remove("SOURCE_DATE_EPOCH")
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy");
    match cache {
        Some(dir) => cmd.env("EXT_EXTEND_CACHE_DIR", dir).env_remove("EXT_EXTEND_NO_CACHE"),
        None => cmd.env("EXT_EXTEND_CACHE_DIR", test_cache()).env("EXT_EXTEND_NO_CACHE", "1"),
    };
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn add_url_makes_the_file_buildkit_makes() {
    let t = tempfile::tempdir().unwrap();
    let server = HttpServer::start();
    server.serve("/files/tool.sh", b"#!/bin/sh\necho tool\n");
    server.serve("/files/a.tar.gz", &tar_gz(t.path()));
    let df = format!(
        "FROM ${{base_image}}
ADD {tool} /opt/
ADD --chown=1000 --chmod=755 {tool} /opt/renamed
ADD {moved} /opt/r/
ADD {archive} /opt/packed/
ADD --unpack=true {archive} /opt/unpacked/
",
        tool = server.url("/files/tool.sh"),
        moved = server.url("/moved"),
        archive = server.url("/files/a.tar.gz"),
    );
    // SOURCE_DATE_EPOCH clamps mtimes instead of fixing them (the default), so the file's
    // own mtime shows.
    let o = build(t.path(), "url", &df, None, &[("SOURCE_DATE_EPOCH", "2000000000")]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_g, root) = umoci_unpack(&t.path().join("out"), "url");

    let tool = std::fs::metadata(root.join("opt/tool.sh")).unwrap();
    assert_eq!(std::fs::read(root.join("opt/tool.sh")).unwrap(), b"#!/bin/sh\necho tool\n");
    assert_eq!(tool.mode() & 0o7777, 0o600, "BuildKit's HTTP source writes 0600");
    assert_eq!((tool.uid(), tool.gid()), (0, 0));
    assert_eq!(tool.mtime(), LAST_MODIFIED_SECS, "mtime from Last-Modified");

    let renamed = std::fs::metadata(root.join("opt/renamed")).unwrap();
    assert_eq!(renamed.mode() & 0o7777, 0o755);
    assert_eq!((renamed.uid(), renamed.gid()), (1000, 1000));

    // Named after the URL asked for, not where it redirected to.
    assert_eq!(std::fs::read(root.join("opt/r/moved")).unwrap(), b"#!/bin/sh\necho tool\n");
    assert!(!root.join("opt/r/tool.sh").exists());

    // A downloaded archive stays an archive unless --unpack.
    assert!(root.join("opt/packed/a.tar.gz").is_file());
    assert!(!root.join("opt/packed/inner.txt").exists());
    assert_eq!(std::fs::read_to_string(root.join("opt/unpacked/inner.txt")).unwrap(), "from the archive\n");
    assert!(!root.join("opt/unpacked/a.tar.gz").exists());
}

#[test]
fn add_url_goes_through_http_proxy() {
    let t = tempfile::tempdir().unwrap();
    let proxy = HttpServer::start();
    proxy.serve("/files/tool.sh", b"via the proxy\n");
    // `.invalid` never resolves: only a proxy can answer.
    let df = "FROM ${base_image}\nADD http://ext-extend.invalid/files/tool.sh /opt/\n";
    let o = build(t.path(), "proxy", df, None, &[("HTTP_PROXY", &format!("http://{}", proxy.addr))]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(proxy.requests(), vec!["http://ext-extend.invalid/files/tool.sh".to_string()]);
    let (_g, root) = umoci_unpack(&t.path().join("out"), "proxy");
    assert_eq!(std::fs::read(root.join("opt/tool.sh")).unwrap(), b"via the proxy\n");
}

#[test]
fn add_url_errors_name_the_line_the_url_and_the_digests() {
    let t = tempfile::tempdir().unwrap();
    let server = HttpServer::start();
    server.serve("/files/tool.sh", b"the real content\n");

    let missing = server.url("/files/missing");
    let o = build(t.path(), "missing", &format!("FROM ${{base_image}}\nADD {missing} /opt/\n"), None, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.Dockerfile:2") && err.contains(&missing) && err.contains("404"), "{err}");
    assert_eq!(server.requests_for("/files/missing"), 1, "a 404 is not retried");

    let actual = sha256_of(b"the real content\n");
    let wrong = sha256_of(b"something else\n");
    let url = server.url("/files/tool.sh");
    let o =
        build(t.path(), "checksum", &format!("FROM ${{base_image}}\nADD --checksum={wrong} {url} /opt/\n"), None, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("checksum.Dockerfile:2") && err.contains(&wrong) && err.contains(&actual), "{err}");
    assert!(!t.path().join("out").join("index.json").exists(), "nothing is written");
}

#[test]
fn with_a_checksum_a_step_cache_hit_downloads_nothing() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let server = HttpServer::start();
    server.serve("/files/tool.sh", b"version 1\n");
    let url = server.url("/files/tool.sh");
    let checksum = sha256_of(b"version 1\n");
    let pinned = format!("FROM ${{base_image}}\nADD --checksum={checksum} {url} /opt/\n");

    let first = build(t.path(), "pinned1", &pinned, Some(&cache), &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(server.requests_for("/files/tool.sh"), 1);
    let second = build(t.path(), "pinned2", &pinned, Some(&cache), &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(stderr(&second).contains("step cache hit"), "{}", stderr(&second));
    assert_eq!(server.requests_for("/files/tool.sh"), 1, "a hit with --checksum needs no download");
    assert_eq!(first.stdout, second.stdout, "same image digest");

    // Without --checksum the download decides the key: same content hits, new content misses.
    let unpinned = format!("FROM ${{base_image}}\nADD {url} /opt/\n");
    let a = build(t.path(), "unpinned1", &unpinned, Some(&cache), &[]);
    let b = build(t.path(), "unpinned2", &unpinned, Some(&cache), &[]);
    assert!(a.status.success() && b.status.success(), "{}{}", stderr(&a), stderr(&b));
    assert!(stderr(&b).contains("step cache hit"), "{}", stderr(&b));
    assert_eq!(a.stdout, b.stdout);
    server.serve("/files/tool.sh", b"version 2\n");
    let c = build(t.path(), "unpinned3", &unpinned, Some(&cache), &[]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(stderr(&c).contains("step cache miss"), "{}", stderr(&c));
    let (_g, root) = umoci_unpack(&t.path().join("out"), "unpinned3");
    assert_eq!(std::fs::read(root.join("opt/tool.sh")).unwrap(), b"version 2\n");
}
