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
