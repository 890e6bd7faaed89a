//! The drop-in `extender` where platforms really run it: inside a container of the image
//! being extended, as root but unprivileged (pack: Docker's default capabilities and seccomp
//! profile, `no_new_privs`, no registry credentials), with the static binary installed as
//! `/cnb/lifecycle/extender`. The container is simulated by `common::container` (no Docker
//! here), which first proves that it refuses `unshare` and `mount`.
//!
//! Flows: the lifecycle's extender acceptance flow for `-kind run` (its run.Dockerfiles:
//! `apt-get install` against a stand-in apt-get, COPY from `context.run`/`context`, a RUN
//! writing only `/workspace`, `USER ${user_id}`) with the base image from
//! `<kaniko-dir>/cache/base` and a private registry we have no credentials for; a distroless
//! image with no CA bundle pulled over plain HTTP; `-kind build` going on to the build phase.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;

use common::container::Container;
use common::*;
use serde_json::Value;

/// A platform's view of one build: the image's root filesystem (the container's `/`) and the
/// host directories behind the `/layers`, `/workspace`, `/platform` and `/kaniko` volumes.
struct Platform {
    _dir: tempfile::TempDir,
    _bundle: tempfile::TempDir,
    rootfs: PathBuf,
    layers: PathBuf,
    workspace: PathBuf,
    kaniko: PathBuf,
    container: Container,
}

impl Platform {
    /// `layout:tag` unpacked by umoci as the container's filesystem, with ext-extend at
    /// `/cnb/lifecycle/extender`.
    fn new(layout: &Path, tag: &str) -> Platform {
        let dir = tempfile::tempdir().unwrap();
        let (bundle, rootfs) = umoci_unpack(layout, tag);
        let lifecycle = rootfs.join("cnb/lifecycle");
        fs::create_dir_all(&lifecycle).unwrap();
        fs::copy(bin(), lifecycle.join("extender")).unwrap();
        let (layers, workspace, platform, kaniko) = (
            dir.path().join("layers"),
            dir.path().join("workspace"),
            dir.path().join("platform"),
            dir.path().join("kaniko"),
        );
        let container = Container::new(&rootfs)
            .volume(&layers, "/layers")
            .volume(&workspace, "/workspace")
            .volume(&platform, "/platform")
            .volume(&kaniko, "/kaniko");
        Platform { _dir: dir, _bundle: bundle, rootfs, layers, workspace, kaniko, container }
    }

    /// `/cnb/lifecycle/extender ARGS` in the container, with the platform's environment.
    fn extender(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.container.command("/cnb/lifecycle/extender");
        cmd.args(args).env("CNB_PLATFORM_API", "0.13").env("HOME", "/root");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    /// Saves the image's manifest and config (no layers) as the lifecycle's restorer does,
    /// in `<kaniko-dir>/cache/base/<manifest digest>/`; `with_layers` adds the layer blobs.
    fn save_base(&self, layout: &Path, tag: &str, with_layers: bool) -> String {
        let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone();
        let digest = desc["digest"].as_str().unwrap().to_string();
        let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
        let manifest: Value = serde_json::from_slice(&fs::read(blob(&digest)).unwrap()).unwrap();
        let config = manifest["config"]["digest"].as_str().unwrap();
        let dest = self.kaniko.join("cache/base").join(&digest);
        fs::create_dir_all(dest.join("blobs/sha256")).unwrap();
        let mut blobs = vec![digest.as_str(), config];
        if with_layers {
            blobs.extend(manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()));
        }
        for d in blobs {
            fs::copy(blob(d), dest.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).unwrap();
        }
        fs::write(dest.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": desc["mediaType"], "digest": digest, "size": desc["size"]}]});
        fs::write(dest.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        digest
    }

    /// The single image under `<layers>/extended/run`, named after its digest.
    fn extended_run(&self) -> PathBuf {
        let dirs: Vec<PathBuf> =
            fs::read_dir(self.layers.join("extended/run")).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs[0].clone()
    }
}

/// The lifecycle's acceptance-test extensions (`acceptance/testdata/extender`): `curl` with a
/// `context.run` folder, `tree` with a shared `context` folder.
fn generated_like_the_lifecycle_acceptance_test(layers: &Path) {
    write(
        &layers.join("group.toml"),
        "[[group]]\nid = \"samples/hello-extensions\"\nversion = \"0.0.1\"\napi = \"0.9\"\n\n\
         [[group-extensions]]\nid = \"curl\"\nversion = \"0.0.1\"\napi = \"0.9\"\n\n\
         [[group-extensions]]\nid = \"tree\"\nversion = \"0.0.1\"\napi = \"0.9\"\n",
    );
    let g = layers.join("generated");
    write(
        &g.join("curl/run.Dockerfile"),
        "ARG base_image\nFROM ${base_image}\n\nUSER root\nRUN apt-get update && apt-get install -y curl\n\
         COPY run-file /\n\nARG build_id=0\nRUN echo ${build_id}\n\n\
         # This should not create a layer as the path should be ignored\n\
         RUN echo \"some-content\" > /workspace/some-file\n\nARG user_id\nUSER ${user_id}\n",
    );
    write(&g.join("curl/context.run/run-file"), "from the curl extension's context.run\n");
    write(
        &g.join("tree/run.Dockerfile"),
        "ARG base_image\nFROM ${base_image}\n\nUSER root\nRUN apt-get update && apt-get install -y tree\n\
         COPY shared-file /shared-run\n\nENV CNB_STACK_ID=stack-id-from-ext-tree\n\n\
         ARG build_id=0\nRUN echo ${build_id}\n\nLABEL io.buildpacks.rebasable=true\n\n\
         ARG user_id\nUSER ${user_id}\n",
    );
    write(&g.join("tree/context/shared-file"), "from the tree extension's shared context\n");
    write(
        &g.join("curl/build.Dockerfile"),
        "ARG base_image\nFROM ${base_image}\n\nUSER root\nRUN apt-get update && apt-get install -y curl\n\
         COPY build-file /\n\nARG build_id=0\nRUN echo ${build_id}\n",
    );
    write(&g.join("curl/context.build/build-file"), "from the curl extension's context.build\n");
    write(
        &g.join("tree/build.Dockerfile"),
        "ARG base_image\nFROM ${base_image}\n\nUSER root\nRUN apt-get update && apt-get install -y tree\n\
         COPY shared-file /shared-build\n\nENV CNB_STACK_ID=stack-id-from-ext-tree\n\n\
         ARG build_id=0\nRUN echo ${build_id}\n",
    );
}

fn file_names_in_layer(layout: &Path, digest: &str) -> Vec<String> {
    let f = fs::File::open(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    a.entries().unwrap().map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn the_harness_refuses_unshare_so_the_namespace_sandbox_cannot_run_there() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_image(&run, "latest", "--fake-apt");
    let p = Platform::new(&run, "latest");
    p.container.self_check();
    // What ext-extend did before the live root, and still does with --live-root=off.
    let digest = p.save_base(&run, "latest", true);
    write(&p.layers.join("group.toml"), "[[group-extensions]]\nid = \"x\"\nversion = \"1\"\napi = \"0.9\"\n");
    write(&p.layers.join("generated/x/run.Dockerfile"), "FROM ${base_image}\nRUN echo hi > /hi\nUSER 1000\n");
    write(&p.layers.join("analyzed.toml"), &format!("[run-image]\nreference = \"registry.invalid/run@{digest}\"\n"));
    let o = p.extender(&["-kind", "run", "-live-root=off"], &[]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Operation not permitted"), "{}", stderr(&o));
}

#[test]
fn kind_run_lifecycle_flow_in_an_unprivileged_container_with_a_private_registry() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_image(&run, "latest", "--fake-apt");
    // A private registry; the extender is given no credentials for it (pack gives none).
    let reg = Registry::start_with_auth("builder", "s3cret");
    reg.push_layout(&run, "latest", "private/run:latest");
    let p = Platform::new(&run, "latest");
    let digest = p.save_base(&run, "latest", false);
    let reference = format!("{}/private/run@{digest}", reg.addr);
    write(&p.layers.join("analyzed.toml"), &format!("[run-image]\nreference = \"{reference}\"\nextend = true\n"));
    generated_like_the_lifecycle_acceptance_test(&p.layers);

    let pushed = reg.requests().len();
    let o = p.extender(&["-kind", "run", "-log-level", "debug"], &[]);
    let log = stderr(&o);
    assert!(o.status.success(), "extender failed:\n{log}");
    assert!(log.contains("live root"), "the live root was chosen by itself: {log}");
    assert!(log.contains("/kaniko/cache/base"), "base from the restorer's cache: {log}");
    assert_eq!(reg.requests().len(), pushed, "no registry access: {:?}", &reg.requests()[pushed..]);

    // <extended>/run/sha256:<hex>/, as the lifecycle names it.
    let ext = p.extended_run();
    let name = ext.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("sha256:") && name.len() == 71, "{name}");
    let cfg = skopeo_inspect(&ext, "latest", &["--config"]);
    let manifest = skopeo_inspect(&ext, "latest", &["--raw"]);
    assert_eq!(format!("sha256:{}", manifest_hex(&ext)), name, "named after the manifest digest");
    assert_eq!(cfg["config"]["User"], "1000", "USER ${{user_id}} restored the user");
    assert_eq!(cfg["config"]["Labels"]["io.buildpacks.rebasable"], "false", "curl did not say rebasable");
    let env: Vec<&str> = cfg["config"]["Env"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(env.contains(&"CNB_STACK_ID=stack-id-from-ext-tree"), "{env:?}");

    // New layers: apt-get curl, COPY run-file, apt-get tree, COPY shared-file. `RUN echo
    // ${build_id}` and the RUN writing only /workspace add none.
    let layers: Vec<String> =
        manifest["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap().to_string()).collect();
    let base_layers = skopeo_inspect(&run, "latest", &[])["Layers"].as_array().unwrap().len();
    let new: Vec<Vec<String>> = layers[base_layers..].iter().map(|d| file_names_in_layer(&ext, d)).collect();
    assert_eq!(new.len(), 4, "{new:#?}");
    assert!(new[0].iter().any(|f| f.ends_with("usr/bin/curl")), "{:?}", new[0]);
    assert_eq!(new[1], vec!["run-file"]);
    assert!(new[2].iter().any(|f| f.ends_with("usr/bin/tree")), "{:?}", new[2]);
    assert_eq!(new[3], vec!["shared-run"]);
    let all: Vec<&String> = new.iter().flatten().collect();
    for ignored in ["workspace", "layers", "kaniko", "cnb", "proc", "dev", "etc/resolv.conf", "etc/hosts", ".dockerenv"]
    {
        assert!(!all.iter().any(|f| f.trim_start_matches("./").starts_with(ignored)), "{ignored} in a layer: {all:?}");
    }
    // The layers are in the sparse layout (the exporter reads them); base layers are not.
    for d in &layers[base_layers..] {
        assert!(ext.join("blobs/sha256").join(d.trim_start_matches("sha256:")).is_file());
    }
    // The live root is the container's filesystem: changed in place, and the RUN wrote the
    // workspace volume.
    assert!(p.rootfs.join("usr/bin/curl").is_file() && p.rootfs.join("run-file").is_file());
    assert_eq!(fs::read_to_string(p.workspace.join("some-file")).unwrap(), "some-content\n");

    // The exporter (on the platform's side, with credentials) makes the app image.
    let app_image = t.path().join("app");
    let auth = format!(r#"{{"{}": "Basic {}"}}"#, reg.addr, base64(b"builder:s3cret", false));
    let out = ext_extend_env(
        &[
            "export",
            "--layers",
            &s(&p.layers),
            "--app",
            &s(&p.workspace),
            "--output",
            &format!("oci:{}:app", s(&app_image)),
        ],
        &[("CNB_REGISTRY_AUTH", &auth)],
    );
    assert!(out.status.success(), "export: {}", String::from_utf8_lossy(&out.stderr));
    let (_g, r) = umoci_unpack(&app_image, "app");
    assert_eq!(fs::read_to_string(r.join("usr/bin/curl")).unwrap(), "#!/bin/sh\necho \"curl (fake) 1.0\"\n");
    assert!(r.join("run-file").is_file() && r.join("shared-run").is_file() && r.join("bin/busybox").is_file());
}

fn manifest_hex(layout: &Path) -> String {
    let index: Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string()
}

#[test]
fn distroless_without_a_ca_bundle_pulls_over_plain_http_and_copies() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("distroless");
    make_image(&run, "latest", "--distroless");
    let reg = Registry::start();
    reg.push_layout(&run, "latest", "distroless/run:latest");
    let digest = reg.inspect("distroless/run:latest", &[]).unwrap()["Digest"].as_str().unwrap().to_string();
    let p = Platform::new(&run, "latest");
    // No CA bundle at all (the test image ships a placeholder file: remove it).
    let _ = fs::remove_dir_all(p.rootfs.join("etc/ssl"));
    write(
        &p.layers.join("analyzed.toml"),
        &format!("[run-image]\nreference = \"{}/distroless/run@{digest}\"\nextend = true\n", reg.addr),
    );
    write(&p.layers.join("group.toml"), "[[group-extensions]]\nid = \"static\"\nversion = \"1\"\napi = \"0.9\"\n");
    write(
        &p.layers.join("generated/static/run.Dockerfile"),
        "ARG base_image\nFROM ${base_image}\nCOPY --chown=65532:65532 app.bin /opt/app/\nARG user_id\nUSER ${user_id}\n",
    );
    write(&p.layers.join("generated/static/context.run/app.bin"), "an app prepared at generate time\n");
    let o = p.extender(&["-kind", "run"], &[]);
    assert!(o.status.success(), "extender failed:\n{}", stderr(&o));
    let ext = p.extended_run();
    let cfg = skopeo_inspect(&ext, "latest", &["--config"]);
    assert_eq!(cfg["config"]["User"], "65532");
    let md = fs::metadata(p.rootfs.join("opt/app/app.bin")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65532, 65532), "COPY applied to the live root with its owner");
    assert!(reg.requests().iter().any(|(m, uri, st)| m == "GET" && uri.contains("/manifests/") && *st == 200));
}

#[test]
fn kind_build_goes_on_to_the_build_phase_as_the_build_user() {
    let t = tempfile::tempdir().unwrap();
    let build = t.path().join("build");
    make_image(&build, "latest", "--fake-apt");
    let p = Platform::new(&build, "latest");
    let digest = p.save_base(&build, "latest", false);
    write(
        &p.layers.join("analyzed.toml"),
        &format!("[build-image]\nreference = \"registry.invalid/build@{digest}\"\n"),
    );
    generated_like_the_lifecycle_acceptance_test(&p.layers);
    // A buildpack, and a stand-in for the lifecycle's builder (a Go binary we cannot build
    // here) that records how it was started and runs the buildpack.
    let bp = p.rootfs.join("cnb/buildpacks/samples_hello-extensions/0.0.1");
    write(
        &bp.join("bin/build"),
        "#!/bin/sh\necho \"Hello Extensions buildpack\"\ncurl --version\n\
         echo \"CNB_STACK_ID for buildpack: ${CNB_STACK_ID}\"\necho \"HOME for buildpack: ${HOME}\"\n\
         mkdir -p /layers/samples_hello-extensions/tool && echo built > /layers/samples_hello-extensions/tool/out\n",
    );
    fs::set_permissions(bp.join("bin/build"), fs::Permissions::from_mode(0o755)).unwrap();
    let builder = p.rootfs.join("cnb/lifecycle/builder");
    write(
        &builder,
        "#!/bin/sh\n{ echo \"uid=$(id -u) gid=$(id -g) groups=$(id -G)\"; echo \"argv=$*\"; env | sort; } > /layers/builder-record\n\
         exec /cnb/buildpacks/samples_hello-extensions/0.0.1/bin/build > /layers/build-output 2>&1\n",
    );
    fs::set_permissions(&builder, fs::Permissions::from_mode(0o755)).unwrap();
    let o = p.extender(&["-kind", "build", "-log-level", "info"], &[("CNB_USER_ID", "1000"), ("CNB_GROUP_ID", "1000")]);
    assert!(o.status.success(), "extender failed:\n{}", stderr(&o));

    let record = fs::read_to_string(p.layers.join("builder-record")).unwrap();
    assert!(record.contains("uid=1000 gid=1000 groups=1000\n"), "dropped to the build user: {record}");
    for flag in [
        "-app /workspace",
        "-layers /layers",
        "-platform /platform",
        "-group /layers/group.toml",
        "-analyzed /layers/analyzed.toml",
    ] {
        assert!(record.contains(flag), "builder argv lacks {flag}: {record}");
    }
    assert!(record.contains("\nHOME=/home/cnb\n"), "the build user's HOME: {record}");
    assert!(record.contains("\nCNB_STACK_ID=stack-id-from-ext-tree\n"), "the extended image's Env: {record}");
    let output = fs::read_to_string(p.layers.join("build-output")).unwrap();
    assert!(output.contains("curl (fake) 1.0"), "the buildpack sees what build.Dockerfile installed: {output}");
    assert!(output.contains("HOME for buildpack: /home/cnb"), "{output}");
    assert_eq!(fs::read_to_string(p.layers.join("samples_hello-extensions/tool/out")).unwrap(), "built\n");
    assert_eq!(fs::metadata(&p.layers).unwrap().uid(), 1000, "<layers> handed to the build user");
    assert!(p.rootfs.join("build-file").is_file() && p.rootfs.join("shared-build").is_file());
}

#[test]
fn live_root_is_refused_where_nothing_says_container_unless_forced() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_image(&run, "latest", "--fake-apt");
    let (_bundle, rootfs) = umoci_unpack(&run, "latest");
    fs::copy(bin(), rootfs.join("ext-extend")).unwrap();
    // The base for `--from`: a layout inside the root, as a user on a host would have one.
    let out = std::process::Command::new("cp").arg("-a").arg(&run).arg(rootfs.join("base")).output().unwrap();
    assert!(out.status.success());
    write(
        &rootfs.join("Dockerfile"),
        "FROM ${base_image}\nUSER root\nRUN apt-get install -y jq\nRUN apt-get install -y yq\nUSER 1000\n",
    );
    // Also without /dev: RUN must not need /dev/null from the root (it once failed as if
    // `/bin/sh` were missing).
    let host = Container::new(&rootfs).without_container_marker().without_dev();
    let build = |mode: &str| {
        host.command("/ext-extend")
            .args([
                "build",
                "--from",
                "oci:/base:latest",
                "-f",
                "/Dockerfile",
                "--context",
                "/tmp",
                "--output",
                "oci:/out",
            ])
            .arg(mode)
            .output()
            .unwrap()
    };
    let o = build("--live-root");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("refusing to change this machine's own root filesystem"), "{}", stderr(&o));
    assert!(!rootfs.join("usr/bin/jq").exists(), "nothing changed");
    let o = build("--live-root=force");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(rootfs.join("usr/bin/jq").is_file(), "applied in place");
    let inspect = skopeo_inspect(&rootfs.join("out"), "latest", &[]);
    let layers = layer_digests(&inspect);
    assert_eq!(layers.len(), 4, "the base's 2 layers + one per RUN");
    // Only what the second RUN changed: not the output's staging blobs (also under `/`).
    let names = file_names_in_layer(&rootfs.join("out"), &layers[3]);
    assert_eq!(names, vec!["usr", "usr/bin", "usr/bin/yq"], "{names:?}");
}

/// `-q` keeps RUN output off the terminal in the extend phase too, unless the command fails.
#[test]
fn quiet_extender_shows_run_output_only_when_a_command_fails() {
    let t = tempfile::tempdir().unwrap();
    let run = t.path().join("run");
    make_image(&run, "latest", "--fake-apt");
    for (body, ok) in [("echo chatty-output", true), ("echo chatty-output && false", false)] {
        let p = Platform::new(&run, "latest");
        let digest = p.save_base(&run, "latest", false);
        write(
            &p.layers.join("analyzed.toml"),
            &format!("[run-image]\nreference = \"registry.invalid/run@{digest}\"\n"),
        );
        write(&p.layers.join("group.toml"), "[[group-extensions]]\nid = \"q\"\nversion = \"1\"\napi = \"0.9\"\n");
        write(&p.layers.join("generated/q/run.Dockerfile"), &format!("FROM ${{base_image}}\nRUN {body}\nUSER 1000\n"));
        let o = p.extender(&["-kind", "run", "-q"], &[]);
        assert_eq!(o.status.success(), ok, "{}", stderr(&o));
        assert_eq!(stderr(&o).contains("chatty-output"), !ok, "{body}: {}", stderr(&o));
    }
}
