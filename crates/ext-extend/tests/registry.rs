//! End-to-end against real local registries (Debian's `docker-registry`, started per test by
//! the `Registry` fixture with the configs in docker/registry/): pull and push, cross-repository
//! mounts, the blob cache, credentials, a tampered blob and a registry that dies mid-push.
//! Results are checked with skopeo and umoci and with the registry's own request log.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const DOCKERFILE: &str =
    "FROM ${base_image}\nCOPY hello.txt /etc/hello.txt\nUSER 0\nRUN echo ran > /ran.txt\nUSER 1000:1000\n";

/// A registry holding the busybox test image as test/busybox:latest; returns its layer digests.
fn registry_with_busybox(reg: &Registry, t: &Path) -> Vec<String> {
    let base = t.join("base");
    make_run_image(&base, "latest", false);
    reg.push_layout(&base, "latest", "test/busybox:latest");
    layer_digests(&reg.inspect("test/busybox:latest", &[]).unwrap())
}

fn context(t: &Path) -> (String, String) {
    write(&t.join("ctx/hello.txt"), "hello from a registry build\n");
    write(&t.join("run.Dockerfile"), DOCKERFILE);
    (s(&t.join("run.Dockerfile")), s(&t.join("ctx")))
}

fn build_args<'a>(from: &'a str, output: &'a str, dockerfile: &'a str, ctx: &'a str, cache: &'a str) -> Vec<&'a str> {
    vec!["build", "--from", from, "-f", dockerfile, "--context", ctx, "--output", output, "--cache-dir", cache]
}

fn ok(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ext-extend failed ({:?}):\n{stderr}", out.status.code());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let digest = stdout.lines().last().unwrap_or_default().to_string();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "not a digest: {stdout:?}");
    digest
}

fn failed(out: &std::process::Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "expected exit {code}; stderr:\n{stderr}");
    let line = stderr.lines().rev().find(|l| l.starts_with("error: "));
    line.unwrap_or_else(|| panic!("no error line:\n{stderr}")).into()
}

/// Requests logged since `from` (an index into `reg.requests()`).
fn requests_since(reg: &Registry, from: usize) -> Vec<(String, String, u16)> {
    reg.requests().split_off(from)
}

fn hex(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

#[test]
fn docker_to_docker_mounts_base_layers_and_caches_pulls() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let base_layers = registry_with_busybox(&reg, t.path());
    assert_eq!(base_layers.len(), 2);
    let (dockerfile, ctx) = context(t.path());
    let cache = s(&t.path().join("cache"));
    let from = reg.url("test/busybox:latest");
    let output = reg.url("test/extended:v1");
    let before = reg.requests().len();
    let digest = ok(&ext_extend_env(&build_args(&from, &output, &dockerfile, &ctx, &cache), &[]));

    // skopeo: the tag holds our manifest; base layers unchanged, then COPY and RUN layers.
    let info = reg.inspect("test/extended:v1", &[]).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    let layers = layer_digests(&info);
    assert_eq!(layers.len(), 4, "{layers:?}");
    assert_eq!(layers[..2], base_layers[..], "base layers carried over by digest");
    let config = reg.inspect("test/extended:v1", &["--config"]).unwrap();
    assert_eq!(config["config"]["User"], "1000:1000");

    // skopeo copy back to a layout, umoci unpack: the files are there, the base's too.
    let pulled = t.path().join("pulled");
    reg.pull_layout("test/extended:v1", &pulled, "x");
    let (_g, rootfs) = umoci_unpack(&pulled, "x");
    assert_eq!(fs::read_to_string(rootfs.join("etc/hello.txt")).unwrap(), "hello from a registry build\n");
    assert_eq!(fs::read_to_string(rootfs.join("ran.txt")).unwrap(), "ran\n");
    assert!(rootfs.join("bin/busybox").is_file() && rootfs.join("etc/motd").is_file());
    assert!(!rootfs.join("etc/obsolete.conf").exists(), "the base's whiteout still applies");

    // The registry log: base blobs were never uploaded again, but mounted from test/busybox;
    // exactly the two new layers and the config were uploaded, each once.
    let log = requests_since(&reg, before);
    for base in &base_layers {
        let uploads =
            log.iter().filter(|(m, u, _)| m == "PUT" && u.contains(&format!("digest=sha256%3A{}", hex(base))));
        assert_eq!(uploads.count(), 0, "base layer {base} uploaded again");
        let mounted = log.iter().any(|(m, u, st)| {
            m == "POST" && u.starts_with("/v2/test/extended/blobs/uploads/?") && u.contains(hex(base)) && *st == 201
        });
        assert!(mounted, "base layer {base} not mounted:\n{log:#?}");
    }
    let sessions = log.iter().filter(|(m, u, _)| m == "POST" && u == "/v2/test/extended/blobs/uploads/").count();
    let puts: Vec<_> = log.iter().filter(|(m, u, _)| m == "PUT" && u.contains("/blobs/uploads/")).collect();
    assert_eq!((sessions, puts.len()), (3, 3), "2 new layers + config:\n{log:#?}");
    for new in &layers[2..] {
        assert_eq!(puts.iter().filter(|(_, u, _)| u.contains(hex(new))).count(), 1, "{new} uploaded once");
    }
    // The first build downloaded the config and both base layers (the COPY scan and the RUN
    // rootfs need them) once each.
    let blob_gets = |log: &[(String, String, u16)]| {
        log.iter().filter(|(m, u, _)| m == "GET" && u.starts_with("/v2/test/busybox/blobs/")).count()
    };
    assert_eq!(blob_gets(&log), 3, "{log:#?}");
    // The tag was written last: after every blob.
    let manifest_put = log.iter().position(|(m, u, _)| m == "PUT" && u == "/v2/test/extended/manifests/v1").unwrap();
    assert!(log.iter().skip(manifest_put + 1).all(|(m, _, _)| m == "GET" || m == "HEAD"));

    // A second build with the same cache downloads no blob, and gives the same image.
    let before = reg.requests().len();
    let output2 = reg.url("test/extended:v2");
    let again = ok(&ext_extend_env(&build_args(&from, &output2, &dockerfile, &ctx, &cache), &[]));
    assert_eq!(again, digest, "same inputs, same manifest digest");
    let log = requests_since(&reg, before);
    assert_eq!(blob_gets(&log), 0, "the cache was not used:\n{log:#?}");
    // Everything is already in test/extended now: HEADs only, no upload at all.
    assert!(!log.iter().any(|(m, u, _)| m == "POST" && u.contains("/blobs/uploads/")), "{log:#?}");

    // Unknown tags and repositories are clear input errors.
    let missing = reg.url("test/busybox:nope");
    let err = failed(&ext_extend_env(&build_args(&missing, &output, &dockerfile, &ctx, &cache), &[]), 2);
    assert!(err.contains(&format!("no image {}/test/busybox:nope", reg.addr)), "{err}");
    let missing = reg.url("test/nothing:latest");
    let err = failed(&ext_extend_env(&build_args(&missing, &output, &dockerfile, &ctx, &cache), &[]), 2);
    assert!(err.contains("no image") && err.contains("test/nothing:latest"), "{err}");
}

#[test]
fn layout_to_registry_and_registry_to_layout() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let base_layers = layer_digests(&skopeo_inspect(&base, "latest", &[]));
    let (dockerfile, ctx) = context(t.path());
    let cache = s(&t.path().join("cache"));

    // oci: -> docker://: the registry has nothing, so base layers are uploaded (from the layout).
    let from = format!("oci:{}:latest", s(&base));
    let output = reg.url("test/from-layout:v1");
    let digest = ok(&ext_extend_env(&build_args(&from, &output, &dockerfile, &ctx, &cache), &[]));
    let info = reg.inspect("test/from-layout:v1", &[]).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(layer_digests(&info)[..2], base_layers[..]);

    // docker:// -> oci:, from what was just pushed: the same image, byte for byte.
    let out = t.path().join("out");
    let output = format!("oci:{}:back", s(&out));
    let from = reg.url("test/from-layout:v1");
    let plain = t.path().join("plain.Dockerfile");
    write(&plain, "FROM ${base_image}\nLABEL round=trip\n");
    let back = ok(&ext_extend_env(&build_args(&from, &output, &s(&plain), &ctx, &cache), &[]));
    let info = skopeo_inspect(&out, "back", &[]);
    assert_eq!(info["Digest"], back.as_str());
    assert_eq!(info["Labels"]["round"], "trip");
    assert_eq!(layer_digests(&info).len(), 4);
    let (_g, rootfs) = umoci_unpack(&out, "back");
    assert_eq!(fs::read_to_string(rootfs.join("ran.txt")).unwrap(), "ran\n");
    // The layout's base blobs are hard links to the cache's (downloaded once, not copied).
    let cached = t.path().join("cache/blobs/sha256").join(hex(&base_layers[0]));
    let linked = out.join("blobs/sha256").join(hex(&base_layers[0]));
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(&cached).unwrap().ino(), fs::metadata(&linked).unwrap().ino());
}

#[test]
fn credentials_from_docker_config_and_cnb_registry_auth() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start_with_auth("builder", "s3cret");
    registry_with_busybox(&reg, t.path());
    let (dockerfile, ctx) = context(t.path());
    let cache = s(&t.path().join("cache"));
    let from = reg.url("test/busybox:latest");
    let output = reg.url("test/extended:auth");
    let args = build_args(&from, &output, &dockerfile, &ctx, &cache);

    // ~/.docker/config.json style, through DOCKER_CONFIG.
    let docker = t.path().join("docker");
    write(
        &docker.join("config.json"),
        &format!(r#"{{"auths":{{"http://{}/v1/":{{"auth":"{}"}}}}}}"#, reg.addr, base64(b"builder:s3cret", false)),
    );
    let digest = ok(&ext_extend_env(&args, &[("DOCKER_CONFIG", &s(&docker))]));
    assert_eq!(reg.inspect("test/extended:auth", &[]).unwrap()["Digest"], digest.as_str());

    // CNB_REGISTRY_AUTH, as the lifecycle passes it.
    let cnb = format!(r#"{{"{}":"Basic {}"}}"#, reg.addr, base64(b"builder:s3cret", false));
    assert_eq!(ok(&ext_extend_env(&args, &[("CNB_REGISTRY_AUTH", &cnb)])), digest);

    // Wrong password, and no credentials: exit 2 with one clear line.
    let wrong = format!(r#"{{"{}":"Basic {}"}}"#, reg.addr, base64(b"builder:wrong", false));
    let err = failed(&ext_extend_env(&args, &[("CNB_REGISTRY_AUTH", &wrong)]), 2);
    assert!(err.contains("authentication failed") && err.contains("CNB_REGISTRY_AUTH"), "{err}");
    assert!(err.contains(&reg.addr) && err.contains("test/busybox"), "{err}");
    let err = failed(&ext_extend_env(&args, &[]), 2);
    assert!(err.contains("authentication failed") && err.contains("no credentials found"), "{err}");
    // A malformed CNB_REGISTRY_AUTH is named as such.
    let err = failed(&ext_extend_env(&args, &[("CNB_REGISTRY_AUTH", "{oops")]), 2);
    assert!(err.contains("CNB_REGISTRY_AUTH"), "{err}");
}

#[test]
fn bearer_token_registry_pulls_pushes_and_mounts() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start_with_token_auth("builder", "s3cret");
    let base_layers = registry_with_busybox(&reg, t.path());
    let (dockerfile, ctx) = context(t.path());
    let cache = s(&t.path().join("cache"));
    let from = reg.url("test/busybox:latest");
    let output = reg.url("test/extended:token");
    let args = build_args(&from, &output, &dockerfile, &ctx, &cache);
    let tokens = reg.tokens.as_ref().unwrap();

    // Basic credentials from the Docker config, exchanged for bearer tokens.
    let docker = t.path().join("docker");
    let auth = base64(b"builder:s3cret", false);
    write(&docker.join("config.json"), &format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.addr));
    let before = reg.requests().len();
    let digest = ok(&ext_extend_env(&args, &[("DOCKER_CONFIG", &s(&docker))]));
    assert_eq!(reg.inspect("test/extended:token", &[]).unwrap()["Digest"], digest.as_str());
    // One token covered pushing to test/extended and pulling from test/busybox, so the base
    // layers were mounted, not uploaded again.
    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(scopes.iter().any(|s| s == "repository:test/busybox:pull"), "{scopes:?}");
    let log = requests_since(&reg, before);
    for base in &base_layers {
        assert!(!log.iter().any(|(m, u, _)| m == "PUT" && u.contains(hex(base))), "{base} uploaded again");
        let mounted =
            log.iter().any(|(m, u, st)| m == "POST" && u.contains("mount=") && u.contains(hex(base)) && *st == 201);
        assert!(mounted, "{base} not mounted:\n{log:#?}");
    }

    // A bearer token given directly (CNB_REGISTRY_AUTH), as a platform that minted it would.
    let token = tokens.mint(&["repository:test/busybox:pull", "repository:test/extended:pull,push"]);
    let cnb = format!(r#"{{"{}":"Bearer {token}"}}"#, reg.addr);
    assert_eq!(ok(&ext_extend_env(&args, &[("CNB_REGISTRY_AUTH", &cnb)])), digest);

    // Wrong password (the token server refuses) and no credentials (a token granting nothing).
    let wrong = format!(r#"{{"{}":"Basic {}"}}"#, reg.addr, base64(b"builder:wrong", false));
    let err = failed(&ext_extend_env(&args, &[("CNB_REGISTRY_AUTH", &wrong)]), 2);
    assert!(err.contains("authentication failed") && err.contains("test/busybox"), "{err}");
    let err = failed(&ext_extend_env(&args, &[]), 2);
    assert!(err.contains("authentication failed") && err.contains("no credentials found"), "{err}");
}

#[test]
fn tampered_blob_fails_with_its_digest_and_writes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let base_layers = registry_with_busybox(&reg, t.path());
    let (dockerfile, ctx) = context(t.path());
    // Flip bytes in the middle of the busybox layer, keeping its size.
    let data = reg.blob_data(&base_layers[0]);
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 64] {
        *b ^= 0xff;
    }
    fs::write(&data, bytes).unwrap();

    let cache = t.path().join("cache");
    let from = reg.url("test/busybox:latest");
    let out = t.path().join("out");
    let layout = format!("oci:{}:x", s(&out));
    let err = failed(&ext_extend_env(&build_args(&from, &layout, &dockerfile, &ctx, &s(&cache)), &[]), 1);
    assert!(err.contains(&base_layers[0]) && err.contains("corrupt"), "{err}");
    assert!(!out.exists(), "no output layout");
    assert!(!cache.join("blobs/sha256").join(hex(&base_layers[0])).exists(), "nothing unverified cached");

    let output = reg.url("test/extended:tampered");
    let err = failed(&ext_extend_env(&build_args(&from, &output, &dockerfile, &ctx, &s(&cache)), &[]), 1);
    assert!(err.contains(&base_layers[0]), "{err}");
    let missing = reg.inspect("test/extended:tampered", &[]).unwrap_err();
    assert!(missing.contains("manifest unknown") || missing.contains("not found"), "{missing}");
}

#[test]
fn registry_dying_mid_push_leaves_no_tag_and_a_rerun_succeeds() {
    let t = tempfile::tempdir().unwrap();
    let mut reg = Registry::start();
    registry_with_busybox(&reg, t.path());
    // A 100 MB incompressible layer, stored (level 0) so the build itself is quick.
    let ctx = t.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let mut big = vec![0u8; 100 << 20];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for chunk in big.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs::write(ctx.join("big.bin"), &big).unwrap();
    drop(big);
    let dockerfile = t.path().join("big.Dockerfile");
    write(&dockerfile, "FROM ${base_image}\nCOPY big.bin /data/big.bin\n");
    let cache = s(&t.path().join("cache"));
    let from = reg.url("test/busybox:latest");
    let output = reg.url("test/big:v1");
    let (dockerfile, ctx_dir) = (s(&dockerfile), s(&ctx));
    let mut args = build_args(&from, &output, &dockerfile, &ctx_dir, &cache);
    args.extend(["--compression-level", "0"]);
    let uploads = reg.root().join("docker/registry/v2/repositories/test/big/_uploads");

    // Kill the registry while the big layer is streaming into its upload area.
    let child = Command::new(bin())
        .args(&args)
        .env("DOCKER_CONFIG", t.path())
        .env_remove("CNB_REGISTRY_AUTH")
        .env("EXT_EXTEND_NO_CACHE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if upload_bytes(&uploads) > (1 << 20) {
            break;
        }
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(2));
    }
    let seen = upload_bytes(&uploads);
    reg.kill();
    let out = child.wait_with_output().unwrap();
    assert!(seen < 100 << 20, "killed mid-upload ({seen} bytes in)");
    let err = failed(&out, 1);
    assert!(err.contains(&format!("registry {} unreachable after 5 attempts", reg.addr)), "{err}");

    // Back up: the tag does not exist (nothing half-tagged), and the same command succeeds.
    reg.restart();
    let missing = reg.inspect("test/big:v1", &[]).unwrap_err();
    assert!(missing.contains("manifest unknown"), "{missing}");
    let digest = ok(&ext_extend_env(&args, &[]));
    let info = reg.inspect("test/big:v1", &[]).unwrap();
    assert_eq!(info["Digest"], digest.as_str());
    assert_eq!(layer_digests(&info).len(), 3);
}

#[test]
fn image_index_in_a_registry_selects_the_platform() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    add_arm64_index(&base);
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", s(&base)))
        .arg(reg.url("test/multi:latest"))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy --all failed: {}", String::from_utf8_lossy(&out.stderr));
    let raw = reg.inspect("test/multi:latest", &["--raw"]).unwrap();
    assert_eq!(raw["manifests"].as_array().unwrap().len(), 2, "the registry holds an index: {raw}");

    let plain = t.path().join("label.Dockerfile");
    write(&plain, "FROM ${base_image}\nLABEL picked=yes\n");
    let plain = s(&plain);
    let ctx = t.path().join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let ctx = s(&ctx);
    let cache = s(&t.path().join("cache"));
    let from = reg.url("test/multi:latest");
    for (platform, arch) in [("linux/arm64", "arm64"), ("linux/amd64", "amd64")] {
        let output = reg.url(&format!("test/picked:{arch}"));
        let mut args =
            build_args(&from, &output, &plain, &ctx, &cache).iter().map(|a| a.to_string()).collect::<Vec<_>>();
        args.extend(["--target-platform".into(), platform.into()]);
        let digest = ok(&ext_extend_env(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[]));
        let config = reg.inspect(&format!("test/picked:{arch}"), &["--config"]).unwrap();
        assert_eq!(config["architecture"], arch);
        assert_eq!(config["config"]["Labels"]["picked"], "yes");
        let info = reg.inspect(&format!("test/picked:{arch}"), &[]).unwrap();
        assert_eq!(info["Digest"], digest.as_str());
    }
    let output = reg.url("test/picked:s390x");
    let mut args = build_args(&from, &output, &plain, &ctx, &cache);
    // `--platform` is still accepted by build (an alias of --target-platform).
    args.extend(["--platform", "linux/s390x"]);
    let err = failed(&ext_extend_env(&args, &[]), 2);
    assert!(err.contains("linux/s390x") && err.contains("linux/amd64") && err.contains("linux/arm64"), "{err}");
}

/// Adds an image index tagged `multi` to `layout`: its `latest` manifest as linux/amd64 and a
/// copy whose config says linux/arm64 (same layers: only the platform choice is tested).
fn add_arm64_index(layout: &Path) {
    use serde_json::{Value, json};
    let blobs = layout.join("blobs/sha256");
    let read = |d: &str| -> Value { serde_json::from_slice(&fs::read(blobs.join(hex(d))).unwrap()).unwrap() };
    let put = |v: &Value| -> (String, usize) {
        let bytes = serde_json::to_vec(v).unwrap();
        let d = ext_oci::Digest::of(&bytes);
        fs::write(blobs.join(d.hex()), &bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let latest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "latest")
        .unwrap()
        .clone();
    let mut manifest = read(latest["digest"].as_str().unwrap());
    let mut config = read(manifest["config"]["digest"].as_str().unwrap());
    config["architecture"] = "arm64".into();
    let (cd, cs) = put(&config);
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put(&manifest);
    let entry = |d: &Value, s: &Value, arch: &str| {
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s,
               "platform": {"os": "linux", "architecture": arch}})
    };
    let multi = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        entry(&latest["digest"], &latest["size"], "amd64"),
        entry(&md.into(), &ms.into(), "arm64"),
    ]});
    let (id, is) = put(&multi);
    index["manifests"].as_array_mut().unwrap().push(json!({
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
        "annotations": {"org.opencontainers.image.ref.name": "multi"}
    }));
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

/// Bytes in the registry's partial uploads under `dir`.
fn upload_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else { return 0 };
    entries.flatten().filter_map(|e| fs::metadata(e.path().join("data")).ok()).map(|m| m.len()).sum()
}

/// `COPY --from=HOST:PORT/repo:tag`, a plain Docker name: the source comes from the registry
/// through the same store as a base image; the step cache key holds the source's manifest
/// digest, so a rebuild hits, and the tag moving to another image misses and reads that one.
#[test]
fn copy_from_an_image_in_a_registry() {
    let t = tempfile::tempdir().unwrap();
    let reg = Registry::start();
    registry_with_busybox(&reg, t.path());
    let base = t.path().join("distroless");
    make_run_image(&base, "latest", true);
    let from = format!("oci:{}:latest", s(&base));
    let source = format!("{}/test/busybox:latest", reg.addr);
    write(&t.path().join("ctx/.keep"), "");
    let dockerfile = t.path().join("Dockerfile");
    write(&dockerfile, &format!("FROM ${{base_image}}\nCOPY --from={source} /bin/sh /etc/motd /opt/bb/\n"));
    let cache = s(&t.path().join("cache"));
    let (df, ctx) = (s(&dockerfile), s(&t.path().join("ctx")));
    let build = |out: &str| {
        let output = format!("oci:{}:x", s(&t.path().join(out)));
        ext_extend_env(&build_args(&from, &output, &df, &ctx, &cache), &[("EXT_EXTEND_NO_CACHE", "0")])
    };
    let before = reg.requests().len();
    let first = build("out1");
    let digest = ok(&first);
    let (_g, rootfs) = umoci_unpack(&t.path().join("out1"), "x");
    // make-run-image.sh copies $BUSYBOX into the image, with /bin/sh a symlink to it.
    let busybox = fs::read(std::env::var("BUSYBOX").unwrap_or_else(|_| "/bin/busybox".into())).unwrap();
    assert!(fs::read(rootfs.join("opt/bb/sh")).unwrap() == busybox, "/bin/sh followed to busybox itself");
    assert_eq!(fs::read_to_string(rootfs.join("opt/bb/motd")).unwrap(), "built by ext-extend's make-run-image.sh\n");
    assert!(!rootfs.join("bin").exists(), "only the copied files join the distroless base");
    let log = requests_since(&reg, before);
    assert!(
        log.iter().any(|(m, u, st)| m == "GET" && u.starts_with("/v2/test/busybox/blobs/") && *st == 200),
        "{log:#?}"
    );

    // Same inputs: a step cache hit, the same image.
    let second = build("out2");
    assert_eq!(ok(&second), digest);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("step cache hit"), "{stderr}");

    // The tag now names an image without /bin/sh: the key changed (a miss), and the error
    // names the source image.
    let other = t.path().join("other");
    make_run_image(&other, "latest", true);
    reg.push_layout(&other, "latest", "test/busybox:latest");
    let err = failed(&build("out3"), 2);
    assert!(err.contains(&format!("not found in image docker://{source}")), "{err}");
    assert!(!t.path().join("out3").exists(), "a failed build writes nothing");
}
