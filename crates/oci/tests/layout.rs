//! OCI layout reading: tags, image indexes and platforms, verification.

use std::fs;
use std::path::Path;

use ext_oci::{Digest, LayoutWriter, OciError, OciLayout, Platform};
use serde_json::json;

fn put(dir: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    fs::write(dir.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// A layout with a two-platform index tagged `multi` and a plain manifest tagged `single`.
fn layout(dir: &Path) {
    fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = serde_json::to_vec(&json!({"architecture": arch, "os": "linux", "config": {"Env": [format!("ARCH={arch}")]}, "rootfs": {"type": "layers", "diff_ids": []}})).unwrap();
        let cd = put(dir, &config);
        let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": config.len()}, "layers": []})).unwrap();
        let md = put(dir, &manifest);
        manifests.push(json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md.to_string(), "size": manifest.len(), "platform": {"os": "linux", "architecture": arch, "variant": if arch == "arm64" { "v8" } else { "v1" }}}));
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests.clone()})).unwrap();
    let id = put(dir, &index);
    let mut top = json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": id.to_string(), "size": index.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}},
    ]});
    let mut single = manifests[0].clone();
    single["annotations"] = json!({"org.opencontainers.image.ref.name": "single"});
    top["manifests"].as_array_mut().unwrap().push(single);
    fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

fn arch_of(image: &ext_oci::Image) -> String {
    image.config.env()[0].1.clone()
}

#[test]
fn index_platform_selection() {
    let d = tempfile::tempdir().unwrap();
    layout(d.path());
    let l = OciLayout::open(d.path()).unwrap();
    assert_eq!(arch_of(&l.resolve(Some("multi"), &"linux/amd64".parse().unwrap()).unwrap()), "amd64");
    assert_eq!(arch_of(&l.resolve(Some("multi"), &"linux/arm64".parse().unwrap()).unwrap()), "arm64");
    assert_eq!(arch_of(&l.resolve(Some("multi"), &"linux/arm64/v8".parse().unwrap()).unwrap()), "arm64");
    match l.resolve(Some("multi"), &"linux/s390x".parse().unwrap()) {
        Err(OciError::PlatformNotFound { available, .. }) => {
            assert!(available.contains("linux/amd64") && available.contains("linux/arm64/v8"))
        }
        other => panic!("{other:?}"),
    }
    // A single-platform manifest whose config says amd64 is refused for arm64.
    assert!(matches!(
        l.resolve(Some("single"), &"linux/arm64".parse().unwrap()),
        Err(OciError::PlatformNotFound { .. })
    ));
    assert!(matches!(l.resolve(None, &Platform::host()), Err(OciError::AmbiguousImage { count: 2, .. })));
    assert!(matches!(l.resolve(Some("nope"), &Platform::host()), Err(OciError::TagNotFound { .. })));
}

#[test]
fn corrupt_json_blobs_are_named() {
    let d = tempfile::tempdir().unwrap();
    layout(d.path());
    let l = OciLayout::open(d.path()).unwrap();
    let image = l.resolve(Some("single"), &"linux/amd64".parse().unwrap()).unwrap();
    let cfg = d.path().join("blobs/sha256").join(image.config_digest.hex());
    fs::write(&cfg, b"{\"tampered\":true}").unwrap();
    match l.resolve(Some("single"), &"linux/amd64".parse().unwrap()) {
        Err(e @ OciError::SizeMismatch { .. }) | Err(e @ OciError::DigestMismatch { .. }) => {
            assert!(e.to_string().contains(image.config_digest.as_str()), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn writer_keeps_other_tags_and_refuses_non_layouts() {
    let d = tempfile::tempdir().unwrap();
    layout(d.path());
    let mut w = LayoutWriter::begin(d.path()).unwrap();
    let cfg_bytes = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cfg = w.add_blob_bytes(cfg_bytes).unwrap();
    let manifest = serde_json::to_vec(&json!({"schemaVersion": 2, "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.to_string(), "size": cfg_bytes.len()}, "layers": []})).unwrap();
    w.commit(&manifest, "application/vnd.oci.image.manifest.v1+json", "single").unwrap();
    let l = OciLayout::open(d.path()).unwrap();
    let mut tags = l.tags().unwrap();
    tags.sort();
    assert_eq!(tags, vec!["multi", "single"], "the tag is replaced, the other kept");
    assert_eq!(
        l.resolve(Some("single"), &"linux/amd64".parse().unwrap()).unwrap().manifest_digest,
        Digest::of(&manifest)
    );
    assert!(
        fs::read_dir(d.path().parent().unwrap())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".ext-extend-staging"))
    );

    let not_layout = tempfile::tempdir().unwrap();
    fs::write(not_layout.path().join("precious.txt"), "x").unwrap();
    assert!(matches!(LayoutWriter::begin(not_layout.path()), Err(OciError::NotALayout { .. })));
}
