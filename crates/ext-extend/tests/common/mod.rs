//! Shared helpers for the end-to-end tests: build test images with the project's own script,
//! run the real `ext-extend` binary, and check results with independent tools (umoci, skopeo).
//! A missing tool fails the test with a hint: CI installs them with scripts/install-deps.sh.
#![allow(dead_code)]

pub mod container;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ext-extend"))
}

/// An example binary of this crate (`examples/NAME.rs`, static like every binary here), built
/// by cargo if needed: `cargo test --test X` alone does not build examples.
pub fn example_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    if !built.iter().any(|b| b == name) {
        let o = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ext-extend", "--example", name])
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(o.status.success(), "cargo build --example {name}: {}", String::from_utf8_lossy(&o.stderr));
        built.push(name.to_string());
    }
    let path = bin().parent().unwrap().join("examples").join(name);
    assert!(path.is_file(), "{} missing", path.display());
    path
}

pub fn require(tool: &str) {
    let ok = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().is_ok_and(|o| o.status.success());
    assert!(ok, "`{tool}` is not installed: run scripts/install-deps.sh (make test does)");
}

/// Builds the busybox test run image into `dir` (an OCI layout) as `dir:tag`.
pub fn make_run_image(dir: &Path, tag: &str, distroless: bool) {
    require("umoci");
    let mut cmd = Command::new(repo_root().join("testdata/scripts/make-run-image.sh"));
    cmd.arg(dir).arg(tag);
    if distroless {
        cmd.arg("--distroless");
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "make-run-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Builds a test image with the project's script; `flavor`: `--distroless` or `--fake-apt`.
pub fn make_image(dir: &Path, tag: &str, flavor: &str) {
    require("umoci");
    let out = Command::new(repo_root().join("testdata/scripts/make-run-image.sh"))
        .arg(dir)
        .arg(tag)
        .arg(flavor)
        .output()
        .unwrap();
    assert!(out.status.success(), "make-run-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn ext_extend(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        // The step cache would turn repeated builds into hits: tests of the step cache turn it on.
        .env("EXT_EXTEND_NO_CACHE", "1")
        .output()
        .unwrap()
}

/// The tests' blob/index/unpack cache: under the target dir, never the user's ~/.cache.
pub fn test_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("ext-extend-cache")
}

/// Runs ext-extend, expecting success; returns stdout's last line (the manifest digest).
pub fn build_ok(args: &[&str]) -> String {
    let out = ext_extend(args);
    assert!(
        out.status.success(),
        "ext-extend {args:?} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or("").to_string();
    assert!(last.starts_with("sha256:") && last.len() == 71, "last stdout line is not a digest: {stdout:?}");
    last
}

/// Runs ext-extend, expecting failure with `code`; returns stderr.
pub fn build_err(args: &[&str], code: i32) -> String {
    let out = ext_extend(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "ext-extend {args:?}: expected exit {code}; stderr:\n{stderr}");
    stderr
}

/// `layout` through a symlink without `:` when it has one (`<extended>/run/sha256:<hex>`):
/// skopeo's and umoci's `DIR:TAG` syntax cannot name such a directory.
pub fn colon_free(layout: &Path) -> (Option<tempfile::TempDir>, PathBuf) {
    if !layout.to_string_lossy().contains(':') {
        return (None, layout.to_path_buf());
    }
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("layout");
    std::os::unix::fs::symlink(layout, &link).unwrap();
    (Some(d), link)
}

/// `umoci unpack` of `layout:tag` into a fresh bundle; returns (tempdir guard, rootfs path).
pub fn umoci_unpack(layout: &Path, tag: &str) -> (tempfile::TempDir, PathBuf) {
    require("umoci");
    let (_link, layout) = colon_free(layout);
    let layout = layout.as_path();
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "umoci unpack failed: {}", String::from_utf8_lossy(&out.stderr));
    (d, bundle.join("rootfs"))
}

/// `skopeo inspect` (or `--config`/`--raw`) of an OCI layout image, as JSON.
pub fn skopeo_inspect(layout: &Path, tag: &str, extra: &[&str]) -> Value {
    require("skopeo");
    let (_link, layout) = colon_free(layout);
    let out = Command::new("skopeo")
        .arg("inspect")
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn layer_digests(inspect: &Value) -> Vec<String> {
    inspect["Layers"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// Every file under `dir` with its bytes, for "left exactly as it was" checks.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if !dir.exists() {
        return out;
    }
    for e in walkdir(dir) {
        let data = if e.is_file() { std::fs::read(&e).unwrap() } else { Vec::new() };
        out.push((e.strip_prefix(dir).unwrap().to_path_buf(), data));
    }
    out.sort();
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

pub fn write(path: &Path, content: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

/// The arguments of the plainest build: `build --from oci:BASE -f DF [--context CTX] --output
/// oci:OUT` (pass them through `strs`).
pub fn oci_build(base: &Path, df: &Path, ctx: Option<&Path>, out: &Path) -> Vec<String> {
    let mut args = vec!["build".into(), "--from".into(), format!("oci:{}", s(base)), "-f".into(), s(df)];
    if let Some(ctx) = ctx {
        args.extend(["--context".into(), s(ctx)]);
    }
    args.extend(["--output".into(), format!("oci:{}", s(out))]);
    args
}

pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Stores `bytes` as a blob of `layout`; returns its digest.
pub fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = ext_oci::Digest::of(bytes);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d.to_string()
}

/// Rewrites `layout:tag` like an image tool would: `edit` changes its manifest and config, then
/// the config, the manifest and the index entry are written anew.
pub fn rewrite_image(layout: &Path, tag: &str, edit: impl FnOnce(&mut Value, &mut Value)) {
    let read_blob = |d: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap(),
        )
        .unwrap()
    };
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let mut manifest = read_blob(entry["digest"].as_str().unwrap());
    let mut config = read_blob(manifest["config"]["digest"].as_str().unwrap());
    edit(&mut manifest, &mut config);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = put_blob(layout, &config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = put_blob(layout, &manifest_bytes).into();
    entry["size"] = manifest_bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Appends a layer (raw tar bytes, gzipped here) to `layout:tag`, rewriting config, manifest
/// and index like any image tool would; used to plant hostile layers in test images.
pub fn append_raw_layer(layout: &Path, tag: &str, tar: &[u8]) -> String {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let gz = gz.finish().unwrap();
    let layer_digest = put_blob(layout, &gz);
    let diff_id = ext_oci::Digest::of(tar).to_string();
    rewrite_image(layout, tag, |manifest, config| {
        config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(diff_id.into());
        manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gz.len()
        }));
    });
    layer_digest
}

/// A tar entry for [`raw_tar`]: name bytes are written verbatim (no sanitizing), so tests can
/// build the hostile archives that well-behaved tar writers refuse to produce.
pub enum RawEntry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

pub fn raw_tar(entries: &[RawEntry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (name, kind, link, data): (&str, u8, &str, &[u8]) = match e {
            RawEntry::File(n, d) => (n, b'0', "", d),
            RawEntry::Dir(n) => (n, b'5', "", b""),
            RawEntry::Symlink(n, t) => (n, b'2', t, b""),
            RawEntry::Hardlink(n, t) => (n, b'1', t, b""),
        };
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let mode = if kind == b'5' { b"0000755\0" } else { b"0000644\0" };
        h[100..108].copy_from_slice(mode);
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Runs ext-extend with extra environment variables (and without the caller's registry
/// credentials: `CNB_REGISTRY_AUTH` is removed unless given, `DOCKER_CONFIG` points at an empty
/// directory unless given).
pub fn ext_extend_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let no_config = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("SOURCE_DATE_EPOCH").env_remove("CNB_REGISTRY_AUTH");
    cmd.env("DOCKER_CONFIG", no_config.path());
    cmd.env("EXT_EXTEND_NO_CACHE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// A local registry (Debian's `docker-registry`) for one test: the config template from
/// `docker/registry/`, filesystem storage and a request log in a temp dir, a free port on
/// 127.0.0.1, optional htpasswd basic auth. Stopped by PID when dropped (so also when the test
/// fails); [`Registry::kill`] and [`Registry::restart`] simulate an outage.
pub struct Registry {
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub credentials: Option<(String, String)>,
    child: Option<std::process::Child>,
    /// The bearer-token server of a token-auth registry.
    pub tokens: Option<TokenServer>,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::launch(None, false)
    }

    /// With basic auth (htpasswd) for `user`/`password` only.
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_string(), password.to_string())), false)
    }

    /// With bearer-token auth: a [`TokenServer`] gives tokens to `user`/`password` only.
    pub fn start_with_token_auth(user: &str, password: &str) -> Registry {
        Registry::launch(Some((user.to_string(), password.to_string())), true)
    }

    fn launch(credentials: Option<(String, String)>, token: bool) -> Registry {
        require("docker-registry");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let mut tokens = None;
        let template = match (&credentials, token) {
            (Some((user, password)), true) => {
                tokens = Some(TokenServer::start(dir.path(), user, password));
                "config-token.yml"
            }
            (Some((user, password)), false) => {
                require("htpasswd");
                let out = Command::new("htpasswd").args(["-Bbn", user, password]).output().unwrap();
                assert!(out.status.success(), "htpasswd failed");
                std::fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
                "config-htpasswd.yml"
            }
            (None, _) => "config.yml",
        };
        let mut template = std::fs::read_to_string(repo_root().join("docker/registry").join(template)).unwrap();
        if let Some(t) = &tokens {
            template = template
                .replace("@REALM@", &format!("http://{}/token", t.addr))
                .replace("@CERT@", &s(&dir.path().join("token-cert.pem")));
        }
        std::fs::write(dir.path().join("config.template"), template).unwrap();
        let mut r = Registry { dir, addr: "127.0.0.1:0".into(), credentials, child: None, tokens };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let config = std::fs::read_to_string(d.join("config.template"))
            .unwrap()
            .replace("@ROOT@", &s(&d.join("data")))
            .replace("@ADDR@", &self.addr)
            .replace("@HTPASSWD@", &s(&d.join("htpasswd")));
        std::fs::write(d.join("config.yml"), config).unwrap();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("registry.log")).unwrap();
        let log_len = log.metadata().unwrap().len() as usize;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(d.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        // The registry logs "listening on 127.0.0.1:PORT" (the real port when asked for 0).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.log();
            if let Some(pos) = text[log_len.min(text.len())..].find("listening on ") {
                let rest = &text[log_len + pos + "listening on ".len()..];
                let addr: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
                if self.answers(&addr) {
                    self.addr = addr;
                    return;
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited ({status}):\n{text}");
            }
            assert!(std::time::Instant::now() < deadline, "docker-registry did not start:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether `GET /v2/` gets an HTTP answer (200, or 401 with auth).
    fn answers(&self, addr: &str) -> bool {
        use std::io::{Read, Write};
        let Ok(mut c) = std::net::TcpStream::connect(addr) else { return false };
        let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(2)));
        if c.write_all(format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// Stops the registry at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The storage root (`docker/registry/v2/...` is below it).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path().join("registry.log")).unwrap_or_default()).into_owned()
    }

    /// Every request in the access log so far: (method, URI, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.log()
            .lines()
            .filter_map(|l| {
                let quoted = l.split('"').nth(1)?;
                let mut parts = quoted.split(' ');
                let (method, uri) = (parts.next()?, parts.next()?);
                if !parts.next()?.starts_with("HTTP/") {
                    return None;
                }
                let status = l.split('"').nth(2)?.split_whitespace().next()?.parse().ok()?;
                Some((method.to_string(), uri.to_string(), status))
            })
            .collect()
    }

    /// `docker://127.0.0.1:PORT/<name>`.
    pub fn url(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// Pushes `layout:tag` to `<name>` with skopeo.
    pub fn push_layout(&self, layout: &Path, tag: &str, name: &str) {
        require("skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.credentials {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd.arg(format!("oci:{}:{tag}", s(layout))).arg(self.url(name)).output().unwrap();
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `skopeo inspect` (plus `extra`) of `<name>`; Err(stderr) if skopeo fails.
    pub fn inspect(&self, name: &str, extra: &[&str]) -> Result<Value, String> {
        require("skopeo");
        let mut cmd = Command::new("skopeo");
        cmd.args(["inspect", "--tls-verify=false"]).args(extra);
        if let Some((u, p)) = &self.credentials {
            cmd.arg(format!("--creds={u}:{p}"));
        }
        let out = cmd.arg(self.url(name)).output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    }

    /// Copies `<name>` back into an OCI layout `dir:tag` with skopeo.
    pub fn pull_layout(&self, name: &str, dir: &Path, tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
        if let Some((u, p)) = &self.credentials {
            cmd.arg(format!("--src-creds={u}:{p}"));
        }
        let out = cmd.arg(self.url(name)).arg(format!("oci:{}:{tag}", s(dir))).output().unwrap();
        assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.root().join("docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Base64 (standard with padding, or URL-safe without), for test credentials and JWTs.
pub fn base64(bytes: &[u8], url: bool) -> String {
    let abc: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(abc[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

/// A minimal Docker token server (the protocol of Docker Hub, GHCR, Harbor): `GET /token?
/// service=...&scope=repository:NAME:ACTIONS...` with basic credentials answers a JWT granting
/// the scopes asked for, signed RS256 (openssl) with a fresh key whose self-signed certificate
/// the registry trusts (`x5c` header); no credentials get a token granting nothing, wrong ones
/// a 401. Every scope asked for is recorded in `scopes`.
pub struct TokenServer {
    pub addr: String,
    basic: String,
    pub scopes: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        require("openssl");
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=ext-extend-test-tokens",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        let der = Command::new("openssl").args(["x509", "-outform", "DER", "-in"]).arg(&cert).output().unwrap();
        assert!(der.status.success());
        let x5c = base64(&der.stdout, false);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let scopes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes(), false));
        let (seen, stopping) = (scopes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    let _ = serve_token(stream, &key, &x5c, &expected, &seen);
                }
            }
        });
        let basic = format!("Basic {}", base64(format!("{user}:{password}").as_bytes(), false));
        TokenServer { addr, basic, scopes, stop, thread: Some(thread) }
    }

    /// A token for `scopes` (e.g. `repository:test/busybox:pull`), as a client would get it.
    pub fn mint(&self, scopes: &[&str]) -> String {
        use std::io::{Read, Write};
        let query: Vec<String> = scopes.iter().map(|s| format!("scope={}", s.replace(':', "%3A"))).collect();
        let mut c = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            c,
            "GET /token?service=ext-extend-test&{} HTTP/1.0\r\nAuthorization: {}\r\n\r\n",
            query.join("&"),
            self.basic
        )
        .unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: Value = serde_json::from_str(body).unwrap();
        v["token"].as_str().unwrap().to_string()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(
    stream: std::net::TcpStream,
    key: &Path,
    x5c: &str,
    expected: &str,
    seen: &std::sync::Mutex<Vec<String>>,
) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            authorization = Some(v.trim().to_string());
        }
    }
    let target = request_line.split(' ').nth(1).unwrap_or_default();
    let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
    let params: Vec<(String, String)> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    let mut out = stream;
    let reply = |out: &mut std::net::TcpStream, status: &str, body: &str| {
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let granted = match authorization.as_deref() {
        Some(a) if a == expected => true,
        Some(_) => return reply(&mut out, "401 Unauthorized", r#"{"details":"wrong credentials"}"#),
        None => false,
    };
    let mut access = Vec::new();
    for (k, v) in &params {
        if k != "scope" {
            continue;
        }
        seen.lock().unwrap().push(v.clone());
        let parts: Vec<&str> = v.split(':').collect();
        if let [kind, name, actions] = parts.as_slice()
            && granted
        {
            access.push(
                serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}),
            );
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "ext-extend-test-tokens", "sub": if granted { "builder" } else { "" }, "aud": "ext-extend-test",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": format!("{now}-{}", seen.lock().unwrap().len()),
        "access": access,
    });
    let signing_input =
        format!("{}.{}", base64(header.to_string().as_bytes(), true), base64(claims.to_string().as_bytes(), true));
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(signing_input.as_bytes())?;
    let signature = child.wait_with_output()?.stdout;
    let jwt = format!("{signing_input}.{}", base64(&signature, true));
    let body = serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    reply(&mut out, "200 OK", &body)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
