//! End-to-end: tar+zstd layers. A base whose layers skopeo recompressed with zstd (an independent
//! producer) is read by COPY's tree scan and RUN's unpack; `--compression zstd` writes new layers
//! that skopeo and the zstd CLI read (and umoci after skopeo's gzip copy); the tar inside is the one gzip would have carried.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// COPY over a directory of the base (tree scan), RUN reading base files (unpack).
const DOCKERFILE: &str = r#"FROM ${base_image}
USER root
COPY hello.txt /etc/hello.txt
RUN cat /etc/passwd /etc/hello.txt > /from-run.txt && rm /etc/motd
"#;

fn manifest(layout: &Path, tag: &str) -> Value {
    skopeo_inspect(layout, tag, &["--raw"])
}

fn layer_types(m: &Value) -> Vec<String> {
    m["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap().to_string()).collect()
}

fn diff_ids(layout: &Path, tag: &str) -> Vec<String> {
    let c = skopeo_inspect(layout, tag, &["--config"]);
    c["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect()
}

fn skopeo_copy(args: &[&str]) {
    require("skopeo");
    let out = Command::new("skopeo").arg("copy").arg("-q").args(args).output().unwrap();
    assert!(out.status.success(), "skopeo copy failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn build(t: &Path, base: &Path, out: &Path, extra: &[&str]) -> String {
    let df = t.join("Dockerfile");
    fs::write(&df, DOCKERFILE).unwrap();
    let ctx = t.join("ctx");
    write(&ctx.join("hello.txt"), "hello\n");
    let from = format!("oci:{}:latest", s(base));
    let output = format!("oci:{}:latest", s(out));
    let mut args = vec!["build", "--from", &from, "-f", df.to_str().unwrap(), "--context", ctx.to_str().unwrap()];
    args.extend(["--output", &output]);
    args.extend(extra);
    build_ok(&args)
}

#[test]
fn zstd_base_layers_are_read_and_zstd_output_is_read_by_umoci_and_skopeo() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let zbase = t.path().join("zbase");
    skopeo_copy(&[
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:latest", s(&base)),
        &format!("oci:{}:latest", s(&zbase)),
    ]);
    let zbase_manifest = manifest(&zbase, "latest");
    assert!(layer_types(&zbase_manifest).iter().all(|t| t == ZSTD), "skopeo wrote zstd: {zbase_manifest}");

    // gzip base, gzip output: the reference.
    let gz_out = t.path().join("gz-out");
    build(t.path(), &base, &gz_out, &[]);
    // zstd base, zstd output.
    let z_out = t.path().join("z-out");
    let digest = build(t.path(), &zbase, &z_out, &["--compression", "zstd", "--compression-level", "5"]);

    let m = manifest(&z_out, "latest");
    let types = layer_types(&m);
    let base_layers = layer_types(&zbase_manifest).len();
    assert_eq!(types.len(), base_layers + 2, "{m}");
    assert!(types.iter().all(|t| t == ZSTD), "base layers keep their type, new ones are zstd: {types:?}");
    assert_eq!(m["layers"][0]["digest"], zbase_manifest["layers"][0]["digest"], "base layers carried over");
    let new_blob_hex = m["layers"][base_layers]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let head = fs::read(z_out.join("blobs/sha256").join(&new_blob_hex)).unwrap();
    assert!(head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), "zstd magic");
    assert!(layer_types(&manifest(&gz_out, "latest")).iter().all(|t| t == GZIP));

    // The tar inside does not depend on the compression: same diffIDs for the new layers, so
    // the COPY saw the same tree and the RUN the same files from the zstd base.
    assert_eq!(diff_ids(&z_out, "latest"), diff_ids(&gz_out, "latest"));

    // skopeo (Go's zstd decoder, klauspost/compress) decompresses our zstd layers to recompress
    // them as gzip; umoci 0.4.7 (Debian's) has no zstd, so it unpacks that copy: the files of
    // every layer, ours and skopeo's, are there.
    let regz = t.path().join("regz");
    skopeo_copy(&[
        "--dest-compress-format",
        "gzip",
        &format!("oci:{}:latest", s(&z_out)),
        &format!("oci:{}:latest", s(&regz)),
    ]);
    assert!(layer_types(&manifest(&regz, "latest")).iter().all(|t| t == GZIP), "skopeo recompressed every layer");
    assert_eq!(diff_ids(&regz, "latest"), diff_ids(&gz_out, "latest"));
    let (_g, rootfs) = umoci_unpack(&regz, "latest");
    let from_run = fs::read_to_string(rootfs.join("from-run.txt")).unwrap();
    assert!(from_run.contains("root:") && from_run.ends_with("hello\n"), "{from_run}");
    assert_eq!(fs::read_to_string(rootfs.join("etc/hello.txt")).unwrap(), "hello\n");
    assert!(!rootfs.join("etc/motd").exists(), "the RUN's whiteout applies");

    // The zstd CLI (the reference decoder) checks our frames and their content checksums.
    require("zstd");
    let new_blob = t.path().join("new-layer.zst");
    fs::copy(z_out.join("blobs/sha256").join(&new_blob_hex), &new_blob).unwrap();
    let out = Command::new("zstd").arg("-tq").arg(&new_blob).output().unwrap();
    assert!(out.status.success(), "zstd -t: {}", String::from_utf8_lossy(&out.stderr));

    // Deterministic: the same build again gives the same manifest.
    let again = t.path().join("again");
    assert_eq!(build(t.path(), &zbase, &again, &["--compression", "zstd", "--compression-level", "5"]), digest);
}

#[test]
fn bad_compression_flags_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let from = format!("oci:{}:latest", s(&base));
    let df = t.path().join("Dockerfile");
    fs::write(&df, "FROM ${base_image}\nENV A=1\n").unwrap();
    let out = format!("oci:{}:latest", s(&t.path().join("out")));
    let common = ["build", "--from", &from, "-f", df.to_str().unwrap(), "--output", &out];
    for (extra, says) in [
        (&["--compression", "zstd", "--compression-level", "22"][..], "zstd compression level 22: expected 1-19"),
        (&["--compression-level", "10"][..], "gzip compression level 10: expected 0-9"),
    ] {
        let err = build_err(&[&common[..], extra].concat(), 2);
        assert!(err.contains(says), "{err}");
    }
    let err = build_err(&[&common[..], &["--compression", "xz"]].concat(), 2);
    assert!(err.contains("xz"), "{err}");
}
