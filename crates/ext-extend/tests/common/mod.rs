//! Shared helpers for the end-to-end tests: build test images with the project's own script,
//! run the real `ext-extend` binary, and check results with independent tools (umoci, skopeo).
//! A missing tool fails the test with a hint: CI installs them with scripts/install-deps.sh.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ext-extend"))
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

pub fn ext_extend(args: &[&str]) -> Output {
    Command::new(bin()).args(args).env_remove("SOURCE_DATE_EPOCH").output().unwrap()
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

/// `umoci unpack` of `layout:tag` into a fresh bundle; returns (tempdir guard, rootfs path).
pub fn umoci_unpack(layout: &Path, tag: &str) -> (tempfile::TempDir, PathBuf) {
    require("umoci");
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

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Appends a layer (raw tar bytes, gzipped here) to `layout:tag`, rewriting config, manifest
/// and index like any image tool would; used to plant hostile layers in test images.
pub fn append_raw_layer(layout: &Path, tag: &str, tar: &[u8]) -> String {
    use std::io::Write;
    let blob = |bytes: &[u8]| -> String {
        let d = ext_oci::Digest::of(bytes);
        std::fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d.to_string()
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar).unwrap();
    let gz = gz.finish().unwrap();
    let layer_digest = blob(&gz);
    let diff_id = ext_oci::Digest::of(tar).to_string();
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let read_blob = |d: &str| -> Value {
        serde_json::from_slice(
            &std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap(),
        )
        .unwrap()
    };
    let mut manifest = read_blob(entry["digest"].as_str().unwrap());
    let mut config = read_blob(manifest["config"]["digest"].as_str().unwrap());
    config["rootfs"]["diff_ids"].as_array_mut().unwrap().push(diff_id.into());
    let config_bytes = serde_json::to_vec(&config).unwrap();
    manifest["config"]["digest"] = blob(&config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    manifest["layers"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": gz.len()
    }));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    entry["digest"] = blob(&manifest_bytes).into();
    entry["size"] = manifest_bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
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
