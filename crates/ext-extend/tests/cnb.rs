//! End-to-end CNB flow: `ext-extend generate` -> `extend --kind run` -> `export`, with the
//! fixture extensions in testdata/cnb/extensions (real `bin/generate` scripts), checked with
//! skopeo and umoci.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A CNB workspace: app, layers, platform dirs, group/analyzed files.
struct Cnb {
    _dir: tempfile::TempDir,
    root: PathBuf,
    app: PathBuf,
    layers: PathBuf,
    platform: PathBuf,
}

impl Cnb {
    fn new(run_image: &str, extensions: &[&str]) -> Cnb {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let (app, layers, platform) = (root.join("workspace"), root.join("layers"), root.join("platform"));
        write(&app.join("app-file"), "from the app dir\n");
        write(&app.join("src/main.sh"), "echo app\n");
        fs::create_dir_all(platform.join("env")).unwrap();
        let mut group = String::from("[[group]]\nid = \"example/bp\"\nversion = \"1.0.0\"\napi = \"0.10\"\n");
        for e in extensions {
            group.push_str(&format!("\n[[group-extensions]]\nid = \"{e}\"\nversion = \"0.1.0\"\napi = \"0.10\"\n"));
        }
        write(&layers.join("group.toml"), &group);
        write(
            &layers.join("analyzed.toml"),
            &format!("[run-image]\nimage = \"{run_image}\"\nreference = \"{run_image}\"\n"),
        );
        // Buildpack layers: one launch layer, one build-only layer, and one that claims to be
        // both launch and an extension layer (an extension layer is never exported).
        let bp = layers.join("example_bp");
        write(&bp.join("launchy/bin/hello"), "#!/bin/sh\necho hello from a launch layer\n");
        write(&bp.join("launchy.toml"), "[types]\nlaunch = true\n[metadata]\nversion = \"1.2.3\"\n");
        write(&bp.join("buildonly/tool"), "build only\n");
        write(&bp.join("buildonly.toml"), "[types]\nbuild = true\n");
        write(&bp.join("sneaky/secret"), "extension data\n");
        write(&bp.join("sneaky.toml"), "[types]\nlaunch = true\nextension = true\n");
        Cnb { _dir: dir, root, app, layers, platform }
    }

    fn dirs(&self) -> Vec<String> {
        vec!["--app".into(), s(&self.app), "--layers".into(), s(&self.layers), "--platform".into(), s(&self.platform)]
    }

    fn run(&self, phase: &str, extra: &[&str]) -> Output {
        let mut args: Vec<String> = vec![phase.into()];
        args.extend(self.dirs());
        if phase == "generate" {
            args.push("--extensions".into());
            args.push(s(&repo_root().join("testdata/cnb/extensions")));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Command::new(bin())
            .args(&args)
            .env("TMPDIR", &self.root)
            .env("EXT_EXTEND_CACHE_DIR", self.root.join("cache"))
            .env("EXT_EXTEND_NO_CACHE", "1")
            .output()
            .unwrap()
    }

    fn ok(&self, phase: &str, extra: &[&str]) -> String {
        let o = self.run(phase, extra);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{phase} failed ({:?}):\n{stderr}", o.status.code());
        stderr
    }

    fn analyzed(&self) -> String {
        fs::read_to_string(self.layers.join("analyzed.toml")).unwrap()
    }

    /// The single image under <extended>/run.
    fn extended_run(&self) -> PathBuf {
        let dirs: Vec<PathBuf> =
            fs::read_dir(self.layers.join("extended/run")).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }
}

fn blobs(layout: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| format!("sha256:{}", e.file_name().to_string_lossy()))
        .collect();
    v.sort();
    v
}

#[test]
fn distroless_extension_layer_flow_through_a_registry() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("distroless");
    make_run_image(&run, "latest", true);
    let reg = Registry::start();
    reg.push_layout(&run, "latest", "cnb/distroless:latest");
    let run_digest = reg.inspect("cnb/distroless:latest", &[]).unwrap()["Digest"].as_str().unwrap().to_string();
    // As the lifecycle's analyzer writes it: a digest reference without a scheme.
    let run_ref = format!("{}@{run_digest}", reg.url("cnb/distroless").trim_start_matches("docker://"));
    let cnb = Cnb::new(&run_ref, &["tools"]);

    let stderr = cnb.ok("generate", &[]);
    assert!(stderr.contains("tools: prepared busybox"), "bin/generate output is streamed: {stderr}");
    let layer = cnb.layers.join("tools/extension");
    assert!(layer.join("bin/busybox").is_file(), "bin/generate wrote into CNB_EXT_LAYER_DIR");
    let meta = fs::read_to_string(cnb.layers.join("tools/extension.toml")).unwrap();
    assert!(meta.contains("extension = true") && meta.contains("launch = false"), "{meta}");
    assert!(cnb.layers.join("generated/tools/run.Dockerfile").is_file());
    assert!(cnb.analyzed().contains("extend = true"), "{}", cnb.analyzed());

    let out = cnb.ok("extend", &["--kind", "run"]);
    assert!(out.contains(&format!("context {}", s(&layer))), "the extension layer is the build context: {out}");
    let ext = cnb.extended_run();
    let ext_info = skopeo_inspect(&ext, "latest", &[]);
    let base_layers = layer_digests(&skopeo_inspect(&run, "latest", &[]));
    let ext_layers = layer_digests(&ext_info);
    assert_eq!(ext_layers.len(), base_layers.len() + 2, "two COPY layers");
    assert_eq!(ext_layers[..base_layers.len()], base_layers[..]);
    assert_eq!(ext_info["Labels"]["io.buildpacks.rebasable"], "false", "label unset -> not rebasable");
    // Sparse: the layout holds only manifest, config and the new layers.
    assert_eq!(blobs(&ext).len(), 2 + 2);
    for l in &ext_layers[..base_layers.len()] {
        assert!(!blobs(&ext).contains(l), "base layer {l} copied into <extended>/run");
    }

    cnb.ok("export", &["--output", &reg.url("cnb/app:latest")]);
    let info = reg.inspect("cnb/app:latest", &[]).unwrap();
    let layers = layer_digests(&info);
    assert_eq!(layers[..ext_layers.len()], ext_layers[..], "run image and extension layers reused by digest");
    assert_eq!(layers.len(), ext_layers.len() + 2, "plus one launch layer and the app layer");
    assert_eq!(info["Labels"]["io.buildpacks.rebasable"], "false");
    let cfg = reg.inspect("cnb/app:latest", &["--config"]).unwrap();
    assert_eq!(cfg["config"]["User"], "65532:65532", "user stays non-root");
    assert_eq!(cfg["config"]["WorkingDir"], s(&cnb.app));
    let metadata: serde_json::Value =
        serde_json::from_str(info["Labels"]["io.buildpacks.lifecycle.metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["buildpacks"][0]["layers"]["launchy"]["data"]["version"], "1.2.3");
    assert!(metadata["buildpacks"][0]["layers"].get("sneaky").is_none());
    assert_eq!(
        metadata["runImage"]["topLayer"],
        skopeo_inspect(&run, "latest", &["--config"])["rootfs"]["diff_ids"][1]
    );
    assert!(metadata["runImage"]["reference"].as_str().unwrap().ends_with(&run_digest));

    let pulled = t.path().join("pulled");
    reg.pull_layout("cnb/app:latest", &pulled, "app");
    let (_g, r) = umoci_unpack(&pulled, "app");
    assert!(r.join("usr/local/bin/busybox").is_file());
    assert!(fs::read_to_string(r.join("etc/app.conf")).unwrap().contains("tools extension"));
    let rel = |p: &Path| r.join(p.strip_prefix("/").unwrap());
    assert!(rel(&cnb.layers.join("example_bp/launchy/bin/hello")).is_file(), "launch layer exported");
    assert!(rel(&cnb.app.join("src/main.sh")).is_file(), "app layer exported");
    assert!(!rel(&cnb.layers.join("example_bp/buildonly")).exists(), "build-only layer not exported");
    assert!(!rel(&cnb.layers.join("example_bp/sneaky")).exists(), "a layer marked extension is never exported");
    assert!(!rel(&cnb.layers.join("tools")).exists(), "nothing from the extension layer dir");
    assert!(!rel(&cnb.layers.join("generated")).exists(), "nothing from <generated>");
    assert!(!r.join("bin/sh").exists(), "still distroless: no shell");
    // The busybox the extension shipped runs in the app image.
    let o = Command::new("chroot").arg(&r).args(["/usr/local/bin/busybox", "echo", "works"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "works");
}

#[test]
fn contexts_sessions_user_and_drop_in_extender() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let cnb =
        Cnb::new(&format!("oci:{}:latest", s(&run)), &["ctx-run", "ctx-shared", "app-context", "first", "second"]);
    cnb.ok("generate", &[]);
    for id in ["ctx-run", "ctx-shared", "app-context", "first", "second"] {
        assert!(cnb.layers.join(id).join("extension").is_dir(), "extension layer created for {id}");
    }
    assert!(cnb.layers.join("generated/ctx-run/context.run/run-file").is_file());

    // The drop-in: the binary started as `extender`, with the lifecycle's single-dash flags.
    let extender = t.path().join("extender");
    std::os::unix::fs::symlink(bin(), &extender).unwrap();
    let o = Command::new(&extender)
        .args([
            "-kind",
            "run",
            "-app",
            &s(&cnb.app),
            "-layers",
            &s(&cnb.layers),
            "-platform",
            &s(&cnb.platform),
            "-log-level",
            "info",
        ])
        .env("TMPDIR", &cnb.root)
        .env("EXT_EXTEND_CACHE_DIR", cnb.root.join("cache"))
        .env("EXT_EXTEND_NO_CACHE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "extender: {stderr}");
    assert_eq!(stderr.matches("unpacked ").count(), 1, "one rootfs for all Dockerfiles: {stderr}");

    let ext = cnb.extended_run();
    let cfg = skopeo_inspect(&ext, "latest", &["--config"]);
    assert_eq!(
        cfg["config"]["User"], "1000",
        "`USER ${{user_id}}` (1000 from the intermediate 1000:1000) restored a non-root user"
    );
    assert_eq!(cfg["config"]["Labels"]["io.buildpacks.rebasable"], "false", "not every Dockerfile said rebasable");
    // The lifecycle's `base_image` arg: `base@<digest>` of the image each Dockerfile applies to
    // (the original for the first, the intermediate after), given after extend-config's args.
    let run_digest = skopeo_inspect(&run, "latest", &[])["Digest"].as_str().unwrap().to_string();
    let label = |k: &str| cfg["config"]["Labels"][k].as_str().unwrap().to_string();
    assert_eq!(label("ctx-run.base_image"), format!("base@{run_digest}"), "the first Dockerfile");
    let (first, second) = (label("first.base_image"), label("second.base_image"));
    assert!(first.starts_with("base@sha256:") && second.starts_with("base@sha256:"), "{first} {second}");
    let original = format!("base@{run_digest}");
    let distinct: std::collections::BTreeSet<&str> = [&original, &first, &second].map(|s| s.as_str()).into();
    assert_eq!(distinct.len(), 3, "each Dockerfile applies to the previous one's result: {distinct:?}");
    let history = cfg["history"].as_array().unwrap();
    assert_eq!(history.len(), cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), "history matches diff_ids");
    let created_by: Vec<&str> = history.iter().filter_map(|h| h["created_by"].as_str()).collect();
    let expected = [
        "Layer: 'COPY run-file /run-file', Created by extension: ctx-run",
        "Layer: 'COPY shared-file /shared-file', Created by extension: ctx-shared",
        "Layer: 'COPY app-file /from-app', Created by extension: app-context",
        "Layer: 'RUN echo first > /first.txt', Created by extension: first",
    ];
    for e in expected {
        assert!(created_by.contains(&e), "missing history `{e}` in {created_by:#?}");
    }
    assert!(
        !created_by.iter().any(|c| c.contains("written-by-run")),
        "a RUN writing only <app> adds no layer: {created_by:#?}"
    );

    // umoci needs the base layers, which the sparse layout leaves out: unpack the full image
    // that `--output` writes instead.
    let full = t.path().join("full");
    let o = cnb.run("extend", &["--kind", "run", "--output", &format!("oci:{}:x", s(&full))]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_g2, r) = umoci_unpack(&full, "x");
    assert_eq!(fs::read_to_string(r.join("run-file")).unwrap(), "from context.run\n");
    assert_eq!(fs::read_to_string(r.join("shared-file")).unwrap(), "from shared context\n");
    assert_eq!(fs::read_to_string(r.join("from-app")).unwrap(), "from the app dir\n", "context falls back to <app>");
    assert_eq!(
        fs::read_to_string(r.join("second.txt")).unwrap(),
        "second saw: first\n",
        "extensions see each other's changes"
    );
    let app_in_image = r.join(cnb.app.strip_prefix("/").unwrap());
    assert!(!app_in_image.join("written-by-run").exists(), "RUN writes to <app> never reach a layer");
    assert_eq!(fs::metadata(r.join("second.txt")).unwrap().uid(), 0);
}

#[test]
fn root_user_at_the_end_fails() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["stays-root"]);
    cnb.ok("generate", &[]);
    let o = cnb.run("extend", &["--kind", "run"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(102), "{stderr}");
    assert!(stderr.contains("final user ID") && stderr.contains("root"), "{stderr}");
    assert!(
        !cnb.layers.join("extended/run").exists()
            || fs::read_dir(cnb.layers.join("extended/run")).unwrap().count() == 0
    );
}

#[test]
fn run_image_switch_ignores_earlier_dockerfiles() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let other = t.path().join("other");
    make_run_image(&other, "v2", false);
    let other_ref = format!("oci:{}:v2", s(&other));
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["first", "switcher"]);
    write(&cnb.platform.join("env/OTHER_RUN_IMAGE"), &other_ref);
    write(&cnb.root.join("run.toml"), &format!("[[images]]\nimage = \"oci:{}:latest\"\n", s(&run)));
    let stderr = cnb.ok("generate", &["--run", &s(&cnb.root.join("run.toml"))]);
    assert!(stderr.contains("not found in run metadata"), "warns about an unlisted run image: {stderr}");
    assert!(cnb.layers.join("generated/first/run.Dockerfile.ignore").is_file(), "earlier run.Dockerfile ignored");
    assert!(!cnb.layers.join("generated/first/run.Dockerfile").exists());
    let analyzed = cnb.analyzed();
    assert!(analyzed.contains(&format!("image = \"{other_ref}\"")) && !analyzed.contains("reference"), "{analyzed}");
    assert!(analyzed.contains("extend = true"));

    cnb.ok("extend", &["--kind", "run"]);
    let ext = cnb.extended_run();
    let cfg = skopeo_inspect(&ext, "latest", &["--config"]);
    assert_eq!(
        cfg["config"]["Labels"]["io.buildpacks.rebasable"], "true",
        "the only applied Dockerfile said rebasable"
    );
    let created_by: Vec<String> =
        cfg["history"].as_array().unwrap().iter().filter_map(|h| h["created_by"].as_str().map(String::from)).collect();
    assert!(created_by.iter().any(|c| c.contains("switched") && c.ends_with("switcher")));
    assert!(!created_by.iter().any(|c| c.contains("first")), "the ignored Dockerfile was not applied");

    let app_image = t.path().join("app");
    cnb.ok("export", &["--output", &format!("oci:{}", s(&app_image))]);
    let info = skopeo_inspect(&app_image, "latest", &[]);
    assert_eq!(info["Labels"]["io.buildpacks.rebasable"], "true");
    let (_g, r) = umoci_unpack(&app_image, "latest");
    assert_eq!(fs::read_to_string(r.join("switched.txt")).unwrap(), "switched\n");
}

#[test]
fn generate_failures_use_lifecycle_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["tools", "fails"]);
    let o = cnb.run("generate", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(91), "{stderr}");
    assert!(stderr.contains("extension fails: bin/generate failed with exit code 7"), "{stderr}");
    assert!(stderr.contains("fails: something went wrong"), "the extension's stderr is streamed");

    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["both-contexts"]);
    let o = cnb.run("generate", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(92), "{stderr}");
    assert!(stderr.contains("together with a shared context"), "{stderr}");

    // A stale extension layer from an earlier build is emptied before bin/generate runs.
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["app-context"]);
    write(&cnb.layers.join("app-context/extension/stale"), "old");
    cnb.ok("generate", &[]);
    assert!(!cnb.layers.join("app-context/extension/stale").exists());
}

#[test]
fn build_image_extension() {
    let t = tempfile::tempdir().unwrap();
    let build = t.path().join("build-image");
    make_run_image(&build, "latest", false);
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let build_ref = format!("oci:{}:latest", s(&build));
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["build-tools"]);
    cnb.ok("generate", &["--build-image", &build_ref]);
    let analyzed = cnb.analyzed();
    assert!(analyzed.contains("[build-image]") && analyzed.contains(&build_ref), "{analyzed}");
    assert!(cnb.layers.join("generated/build-tools/build.Dockerfile").is_file());

    let out = cnb.ok("extend", &["--kind", "build"]);
    assert!(out.contains("extending build image"), "{out}");
    let dirs: Vec<PathBuf> =
        fs::read_dir(cnb.layers.join("extended/build")).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    // A full layout (base layers included): umoci can unpack it on its own.
    let (_g, r) = umoci_unpack(&dirs[0], "latest");
    assert_eq!(fs::read_to_string(r.join("opt/tool/VERSION")).unwrap(), "tool 1.2.3\n", "extend-config build arg used");
    let cfg = skopeo_inspect(&dirs[0], "latest", &["--config"]);
    assert_eq!(cfg["config"]["User"], "1000:1000", "user restored from user_id/group_id");
    assert!(cfg["config"]["Labels"].get("io.buildpacks.rebasable").is_none(), "rebasable is a run-image label");

    let bad = Cnb::new(&format!("oci:{}:latest", s(&run)), &["bad-build"]);
    let o = bad.run("generate", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(92), "{stderr}");
    assert!(stderr.contains("ARG base_image"), "{stderr}");
}

#[test]
fn zstd_extension_layers_keep_their_media_type_through_export() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_run_image(&run, "latest", false);
    let cnb = Cnb::new(&format!("oci:{}:latest", s(&run)), &["first"]);
    cnb.ok("generate", &[]);
    cnb.ok("extend", &["--kind", "run", "--compression", "zstd"]);
    let app_image = t.path().join("app");
    cnb.ok("export", &["--output", &format!("oci:{}", s(&app_image))]);
    let base_layers = skopeo_inspect(&run, "latest", &["--raw"])["layers"].as_array().unwrap().len();
    let manifest = skopeo_inspect(&app_image, "latest", &["--raw"]);
    let types: Vec<&str> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["mediaType"].as_str().unwrap()).collect();
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    // Base layers (gzip), the extension's RUN layers (zstd), then the buildpack layers.
    assert!(types[..base_layers].iter().all(|t| *t != zstd), "{types:?}");
    assert!(types[base_layers] == zstd, "the extension layer is labelled zstd: {types:?}");
    // Each blob is what its media type says.
    for l in manifest["layers"].as_array().unwrap() {
        let blob = app_image.join("blobs/sha256").join(l["digest"].as_str().unwrap().trim_start_matches("sha256:"));
        let head = fs::read(blob).unwrap();
        assert_eq!(head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]), l["mediaType"] == zstd, "{l}");
    }
}
