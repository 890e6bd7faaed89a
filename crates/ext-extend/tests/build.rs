//! End-to-end: `ext-extend build` on a busybox run image built by the project's script,
//! results checked with umoci and skopeo.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use common::*;

#[test]
fn sample_extension_extends_the_run_image() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let sample = repo_root().join("testdata/sample");
    let out = t.path().join("out");
    let from = format!("oci:{}:latest", s(&base));
    let args = |out: &Path| {
        vec![
            "build".to_string(),
            "--from".into(),
            from.clone(),
            "-f".into(),
            s(&sample.join("run.Dockerfile")),
            "--context".into(),
            s(&sample.join("ext-layer")),
            "--output".into(),
            format!("oci:{}:extended", s(out)),
        ]
    };
    let a: Vec<String> = args(&out);
    let digest = build_ok(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // skopeo: the base layers are unchanged and in order, followed by the two COPY layers.
    let base_info = skopeo_inspect(&base, "latest", &[]);
    let info = skopeo_inspect(&out, "extended", &[]);
    assert_eq!(info["Digest"], digest.as_str());
    let base_layers = layer_digests(&base_info);
    let layers = layer_digests(&info);
    assert_eq!(base_layers.len(), 2);
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[..2], base_layers[..], "base layers carried over by digest");
    assert_eq!(info["Labels"]["io.buildpacks.rebasable"], "true");
    assert!(info["Env"].as_array().unwrap().iter().any(|e| e == "SAMPLE_HOME=/etc/sample"));
    let config = skopeo_inspect(&out, "extended", &["--config"]);
    assert_eq!(config["config"]["User"], "1000:1000");
    let history = config["history"].as_array().unwrap();
    let layered = history.iter().filter(|h| h.get("empty_layer").is_none()).count();
    assert_eq!(layered, config["rootfs"]["diff_ids"].as_array().unwrap().len(), "history matches diff_ids");

    // umoci: files, modes, owners; the base's deleted file stays deleted.
    let (_g, rootfs) = umoci_unpack(&out, "extended");
    let app = fs::metadata(rootfs.join("etc/sample/app.toml")).unwrap();
    assert_eq!((app.uid(), app.gid()), (1000, 1000));
    let hello = fs::metadata(rootfs.join("usr/local/bin/hello")).unwrap();
    assert_eq!((hello.uid(), hello.mode() & 0o7777), (0, 0o755));
    assert!(!rootfs.join("etc/obsolete.conf").exists(), "whiteout of the base still applies");
    assert!(rootfs.join("etc/motd").exists());
    assert_eq!(fs::metadata(rootfs.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    // The copied script runs inside the image.
    let run = Command::new("chroot").arg(&rootfs).arg("/usr/local/bin/hello").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim(), "hello from an extension layer");

    // Determinism: the same inputs into another layout give the same manifest digest.
    let out2 = t.path().join("out2");
    let a2: Vec<String> = args(&out2);
    assert_eq!(build_ok(&a2.iter().map(String::as_str).collect::<Vec<_>>()), digest);
}

/// A context with every kind of source the COPY/ADD cases need.
fn copy_context(dir: &Path) {
    write(&dir.join("file.txt"), "file\n");
    write(&dir.join("b.txt"), "b\n");
    write(&dir.join("dir/a.txt"), "a\n");
    write(&dir.join("dir/sub/c.txt"), "c\n");
    write(&dir.join("dir/x.log"), "log\n");
    symlink("a.txt", dir.join("dir/link")).unwrap();
    fs::hard_link(dir.join("dir/a.txt"), dir.join("dir/hard")).unwrap();
    fs::set_permissions(dir.join("dir/sub/c.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    write(&dir.join("ignored/secret"), "nope\n");
    write(&dir.join(".dockerignore"), "ignored\n");
    // Archives, built with the system tar.
    let src = dir.join("../archive-src");
    write(&src.join("pkg/README"), "readme\n");
    let tar = |args: &[&str]| {
        let st = Command::new("tar").args(args).current_dir(&src).status().unwrap();
        assert!(st.success());
    };
    tar(&["-czf", &s(&dir.join("pkg.tar.gz")), "pkg"]);
    tar(&["-cf", &s(&dir.join("plain.tar")), "pkg"]);
}

const COPY_CASES: &str = r#"FROM ${base_image}
COPY file.txt /dst/
COPY file.txt /asfile
COPY file.txt /etc
COPY dir /contents/
COPY dir/*.txt /glob/
WORKDIR /app
COPY file.txt rel/
COPY file.txt b.txt /multi/
COPY --chown=cnb:staff file.txt /own/
COPY --chown=1234 file.txt /own2/
COPY --chmod=0700 file.txt /mode/
ADD pkg.tar.gz /extracted/
ADD plain.tar /extracted-plain/
COPY pkg.tar.gz /not-extracted/
COPY <<EOF /etc/heredoc.conf
key=value
EOF
COPY . /all/
COPY file.txt /deep/new/dir/
COPY file.txt /tmp/
COPY file.txt .
"#;

#[test]
fn copy_and_add_follow_docker_semantics() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    copy_context(&ctx);
    let df = t.path().join("copy.Dockerfile");
    write(&df, COPY_CASES);
    let out = t.path().join("out");
    build_ok(&strs(&oci_build(&base, &df, Some(&ctx), &out)));
    let (_g, r) = umoci_unpack(&out, "latest");
    let read = |p: &str| fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));

    assert_eq!(read("dst/file.txt"), "file\n", "trailing slash: copy into the directory");
    assert!(meta("asfile").is_file(), "no trailing slash, no such dir: the file itself");
    assert_eq!(read("etc/file.txt"), "file\n", "existing directory: copy into it");
    assert_eq!(read("contents/a.txt"), "a\n", "a directory source copies its contents");
    assert_eq!(read("contents/sub/c.txt"), "c\n");
    assert!(!r.join("contents/dir").exists(), "not the directory itself");
    assert_eq!(meta("contents/sub/c.txt").mode() & 0o7777, 0o640, "modes preserved");
    assert_eq!(fs::read_link(r.join("contents/link")).unwrap().to_str(), Some("a.txt"), "symlinks stay links");
    assert_eq!(meta("contents/hard").ino(), meta("contents/a.txt").ino(), "hard links stay hard links");
    assert_eq!(read("glob/a.txt"), "a\n");
    assert!(!r.join("glob/x.log").exists() && !r.join("glob/c.txt").exists(), "`*` stays in one component");
    assert_eq!(read("app/rel/file.txt"), "file\n", "relative to WORKDIR");
    assert_eq!(read("multi/file.txt") + &read("multi/b.txt"), "file\nb\n");
    assert_eq!(
        (meta("own/file.txt").uid(), meta("own/file.txt").gid()),
        (1000, 50),
        "names from the image's passwd/group"
    );
    assert_eq!((meta("own2/file.txt").uid(), meta("own2/file.txt").gid()), (1234, 1234), "uid alone: gid = uid");
    assert_eq!((meta("dst/file.txt").uid(), meta("dst/file.txt").gid()), (0, 0), "default owner is root");
    assert_eq!(meta("mode/file.txt").mode() & 0o7777, 0o700);
    assert_eq!(read("extracted/pkg/README"), "readme\n", "ADD extracts tar.gz");
    assert_eq!(read("extracted-plain/pkg/README"), "readme\n", "ADD extracts tar");
    assert!(meta("not-extracted/pkg.tar.gz").is_file(), "COPY never extracts");
    assert_eq!(read("etc/heredoc.conf"), "key=value\n");
    assert!(r.join("all/file.txt").exists() && !r.join("all/ignored").exists(), ".dockerignore honoured");
    assert_eq!(read("deep/new/dir/file.txt"), "file\n");
    assert_eq!(meta("deep/new").mode() & 0o7777, 0o755, "missing parents are created 0755");
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777, "an existing parent keeps its mode");
    assert_eq!(read("tmp/file.txt"), "file\n");
    assert_eq!(read("app/file.txt"), "file\n", "`.` is the WORKDIR");
    let cfg = skopeo_inspect(&out, "latest", &["--config"]);
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    // Each COPY/ADD is exactly one new layer, and so is the WORKDIR that creates /app.
    let copies = COPY_CASES.lines().filter(|l| l.starts_with("COPY") || l.starts_with("ADD")).count();
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2 + copies + 1);
}

#[test]
fn bad_input_fails_clearly_and_leaves_the_output_alone() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("file.txt"), "x\n");
    symlink("../../etc/passwd", ctx.join("escape")).unwrap();
    let from = format!("oci:{}:latest", s(&base));
    // An existing output with a previous image (and a second tag) must survive every failure.
    let out = t.path().join("out");
    let ok_df = t.path().join("ok.Dockerfile");
    write(&ok_df, "FROM ${base_image}\nCOPY file.txt /f\n");
    build_ok(&[
        "build",
        "--from",
        &from,
        "-f",
        &s(&ok_df),
        "--context",
        &s(&ctx),
        "--output",
        &format!("oci:{}:v1", s(&out)),
    ]);
    build_ok(&[
        "build",
        "--from",
        &from,
        "-f",
        &s(&ok_df),
        "--context",
        &s(&ctx),
        "--output",
        &format!("oci:{}:v2", s(&out)),
    ]);
    let before = snapshot(&out);

    let cases: &[(&str, &str, &str)] = &[
        ("syntax.Dockerfile", "FROM ${base_image}\nBOGUS x\n", "syntax.Dockerfile:2"),
        (
            "missing-src.Dockerfile",
            "FROM ${base_image}\nCOPY nope /x\n",
            "missing-src.Dockerfile:2: COPY source `nope` not found",
        ),
        ("escape.Dockerfile", "FROM ${base_image}\nCOPY ../outside /x\n", "outside the build context"),
        ("symlink.Dockerfile", "FROM ${base_image}\nCOPY escape /x\n", "points outside the build context"),
        ("multi.Dockerfile", "FROM ${base_image}\nRUN true\nFROM x\n", "multi.Dockerfile:3"),
        (
            "chown.Dockerfile",
            "FROM ${base_image}\nCOPY --chown=nobody file.txt /x\n",
            "user `nobody` is not in the image's /etc/passwd",
        ),
        (
            "git.Dockerfile",
            "FROM ${base_image}\nADD https://example.com/o/r.git /x\n",
            "git.Dockerfile:2: ADD of a git repository (https://example.com/o/r.git) is not supported",
        ),
        (
            "copy-from.Dockerfile",
            "FROM ${base_image}\nCOPY file.txt /f\nCOPY --from=oci:/nonexistent/layout:v1 /bin/busybox /bb\n",
            "copy-from.Dockerfile:3: COPY --from=oci:/nonexistent/layout:v1: ",
        ),
        (
            "copy-from-bad.Dockerfile",
            "FROM ${base_image}\nCOPY --from=Busybox /a /b\n",
            "copy-from-bad.Dockerfile:2: COPY --from: ",
        ),
        (
            "check-error.Dockerfile",
            "# check=error=true\nFROM ${base_image}\nCOPY file.txt /f\nMAINTAINER me\n",
            "lint violation found for rules: MaintainerDeprecated",
        ),
        (
            "check-bad.Dockerfile",
            "# check=skip=all;bogus=1\nFROM ${base_image}\n",
            "check-bad.Dockerfile:1: failed to parse check options: invalid check option \"bogus\"",
        ),
        (
            "copy-from-stage.Dockerfile",
            "FROM ${base_image} AS final\nCOPY --from=final /x /y\n",
            "copy-from-stage.Dockerfile:2: `COPY --from=final` names a build stage",
        ),
    ];
    for (name, text, needle) in cases {
        let df = t.path().join(name);
        write(&df, text);
        let err = build_err(
            &[
                "build",
                "--from",
                &from,
                "-f",
                &s(&df),
                "--context",
                &s(&ctx),
                "--output",
                &format!("oci:{}:v1", s(&out)),
            ],
            2,
        );
        assert!(err.contains(needle), "{name}: stderr lacks `{needle}`:\n{err}");
        assert_eq!(snapshot(&out), before, "{name}: output changed");
    }

    let missing = build_err(
        &["build", "--from", &from, "-f", "/nonexistent/Dockerfile", "--output", &format!("oci:{}", s(&out))],
        2,
    );
    assert!(missing.contains("/nonexistent/Dockerfile"), "{missing}");
    let no_tag = build_err(
        &[
            "build",
            "--from",
            &format!("oci:{}:nosuchtag", s(&base)),
            "-f",
            &s(&ok_df),
            "--context",
            &s(&ctx),
            "--output",
            &format!("oci:{}", s(&out)),
        ],
        2,
    );
    assert!(no_tag.contains("no image tagged `nosuchtag`") && no_tag.contains("latest"), "{no_tag}");
    let not_layout = build_err(&strs(&oci_build(&ctx, &ok_df, Some(&ctx), &out)), 2);
    assert!(not_layout.contains("not an OCI image layout"), "{not_layout}");
    assert_eq!(snapshot(&out), before);

    // The v1 and v2 tags both still resolve.
    assert!(skopeo_inspect(&out, "v1", &[])["Layers"].is_array());
    assert!(skopeo_inspect(&out, "v2", &[])["Layers"].is_array());
}

#[test]
fn damaged_base_layouts_are_reported_by_digest() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("file.txt"), "x\n");
    let df = t.path().join("Dockerfile");
    write(&df, "FROM ${base_image}\nCOPY file.txt /f\n");
    let info = skopeo_inspect(&base, "latest", &[]);
    let first = layer_digests(&info)[0].clone();
    let blob = base.join("blobs/sha256").join(first.trim_start_matches("sha256:"));
    let out = t.path().join("out");
    // A cache of its own: with a warm header-index cache the COPY would not read the base
    // layers at all (base layers pass through by digest, never re-hashed), so nothing would be
    // there to notice the damage.
    let cache = t.path().join("cache");
    let run = |code| {
        build_err(
            &[
                "build",
                "--from",
                &format!("oci:{}", s(&base)),
                "-f",
                &s(&df),
                "--context",
                &s(&ctx),
                "--output",
                &format!("oci:{}", s(&out)),
                "--cache-dir",
                &s(&cache),
            ],
            code,
        )
    };

    // A tampered layer: its digest no longer matches.
    let original = fs::read(&blob).unwrap();
    let mut tampered = original.clone();
    let last = tampered.len() - 20;
    tampered[last] ^= 0xff;
    fs::write(&blob, &tampered).unwrap();
    let err = run(1);
    assert!(err.contains(&first) && err.contains("corrupt"), "{err}");
    assert!(!out.exists(), "no output after a failure");

    // A missing blob.
    fs::remove_file(&blob).unwrap();
    let err = run(1);
    assert!(err.contains(&first) && err.contains("missing"), "{err}");
    fs::write(&blob, &original).unwrap();

    // A malformed index.json.
    let index = base.join("index.json");
    let good = fs::read(&index).unwrap();
    fs::write(&index, b"{not json").unwrap();
    let err = run(1);
    assert!(err.contains("index.json"), "{err}");
    fs::write(&index, good).unwrap();
    assert!(!out.exists());
    // And with everything restored it works (and warms the cache).
    build_ok(&[
        "build",
        "--from",
        &format!("oci:{}", s(&base)),
        "-f",
        &s(&df),
        "--context",
        &s(&ctx),
        "--output",
        &format!("oci:{}", s(&out)),
        "--cache-dir",
        &s(&cache),
    ]);

    // With a warm cache the layers are not read, but a truncated base blob is still caught
    // by its size before it is linked into an output.
    fs::write(&blob, &original[..original.len() / 2]).unwrap();
    fs::remove_dir_all(&out).unwrap();
    let err = run(1);
    assert!(err.contains(&first) && err.contains("descriptor says"), "{err}");
    assert!(!out.exists(), "no output after a failure");
}

#[test]
fn config_instructions_and_json_output() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let df = t.path().join("config.Dockerfile");
    write(
        &df,
        "FROM ${base_image}\nENV A=1 B=\"two words\"\nLABEL com.example.x=y\nEXPOSE 8080\nVOLUME /data\nSTOPSIGNAL SIGINT\nHEALTHCHECK --interval=30s CMD wget -q localhost\nSHELL [\"/bin/ash\", \"-c\"]\nCMD run-app --flag\nWORKDIR /srv\nWORKDIR sub\nUSER cnb\n",
    );
    let out = t.path().join("out");
    let o = ext_extend(&[
        "build",
        "--from",
        &format!("oci:{}", s(&base)),
        "-f",
        &s(&df),
        "--context",
        &s(t.path()),
        "--output",
        &format!("oci:{}", s(&out)),
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    for (line, what) in [(4, "EXPOSE"), (5, "VOLUME"), (6, "STOPSIGNAL"), (7, "HEALTHCHECK"), (9, "CMD")] {
        assert!(
            stderr.contains(&format!("config.Dockerfile:{line}: {what} is not one of")),
            "warning for {what}: {stderr}"
        );
    }
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let info = skopeo_inspect(&out, "latest", &[]);
    assert_eq!(json["manifest_digest"], info["Digest"]);
    // Config-only instructions add no layer; WORKDIR creates its directory in a layer of its
    // own (BuildKit), one for /srv and one for /srv/sub.
    let layers = json["layers"].as_array().unwrap();
    assert_eq!(layers.iter().map(|l| l["new"].as_bool().unwrap()).collect::<Vec<_>>(), [false, false, true, true]);
    let c = &skopeo_inspect(&out, "latest", &["--config"])["config"];
    assert_eq!(c["Env"], serde_json::json!(["PATH=/usr/local/bin:/usr/bin:/bin", "A=1", "B=two words"]));
    assert_eq!(c["Labels"]["com.example.x"], "y");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["StopSignal"], "SIGINT");
    assert_eq!(c["Cmd"], serde_json::json!(["/bin/ash", "-c", "run-app --flag"]), "shell form uses the current SHELL");
    assert_eq!(c["WorkingDir"], "/srv/sub");
    assert_eq!(c["User"], "cnb");
    let raw = fs::read_to_string(
        out.join("blobs/sha256").join(info["Digest"].as_str().unwrap().trim_start_matches("sha256:")),
    )
    .unwrap();
    assert!(raw.contains("application/vnd.oci.image.manifest.v1+json"));
    // The config blob keeps Docker fields oci-spec does not model.
    let cfg_digest =
        serde_json::from_str::<serde_json::Value>(&raw).unwrap()["config"]["digest"].as_str().unwrap().to_string();
    let cfg: serde_json::Value = serde_json::from_slice(
        &fs::read(out.join("blobs/sha256").join(cfg_digest.trim_start_matches("sha256:"))).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["config"]["Healthcheck"]["Test"], serde_json::json!(["CMD-SHELL", "wget -q localhost"]));
    assert_eq!(cfg["config"]["Healthcheck"]["Interval"], 30_000_000_000u64);
    assert_eq!(cfg["config"]["Shell"], serde_json::json!(["/bin/ash", "-c"]));
}

/// `SOURCE_DATE_EPOCH` is one rule for every entry of every new layer: times newer than the
/// epoch are clamped to it, older ones kept, and entries the build makes itself (missing
/// parents, here-documents, WORKDIR directories, whiteouts, RUN output) get the epoch, never
/// 1970.
#[test]
fn source_date_epoch_clamps_every_entry() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("new.txt"), "new\n");
    write(&ctx.join("old.txt"), "old\n");
    let touched = Command::new("touch").args(["-d", "2001-02-03 04:05:06 UTC"]).arg(ctx.join("old.txt")).status();
    assert!(touched.unwrap().success());
    let df = t.path().join("Dockerfile");
    write(
        &df,
        "FROM ${base_image}\nCOPY new.txt old.txt /deep/new/dir/\nCOPY <<EOF /etc/inline\nhi\nEOF\nUSER root\nWORKDIR /made/by/workdir\nRUN rm /etc/motd && echo x > /tmp/run\n",
    );
    let out = t.path().join("out");
    let o = ext_extend_env(
        &strs(&oci_build(&base, &df, Some(&ctx), &out)),
        &[("SOURCE_DATE_EPOCH", "1700000000"), ("EXT_EXTEND_CACHE_DIR", &s(&test_cache()))],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let layers = layer_digests(&skopeo_inspect(&out, "latest", &[]));
    let mut seen = 0;
    for digest in &layers[2..] {
        let blob = out.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let list =
            Command::new("tar").args(["--numeric-owner", "--full-time", "-tvzf"]).arg(&blob).env("TZ", "UTC").output();
        let list = String::from_utf8(list.unwrap().stdout).unwrap();
        for line in list.lines() {
            let time = line.split_whitespace().skip(3).take(2).collect::<Vec<_>>().join(" ");
            let want = if line.ends_with("/old.txt") { "2001-02-03 04:05:06" } else { "2023-11-14 22:13:20" };
            assert_eq!(time, want, "{line}");
            seen += 1;
        }
    }
    assert!(seen >= 12, "{seen} entries checked");
}

/// Flags a new user gets wrong are refused or warned about, and every error is one line that
/// names its cause once.
#[test]
fn new_user_mistakes_get_clear_answers() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let df = t.path().join("bad.Dockerfile");
    write(&df, "FROM ${base_image}\nARG USED\nENV A=${B\n");
    let from = format!("oci:{}", s(&base));
    let out = format!("oci:{}", s(&t.path().join("out")));
    let common = ["build", "--from", &from, "-f", &s(&df), "--context", &s(t.path()), "--output", &out];
    let with = |extra: &[&str]| -> Vec<String> { common.iter().chain(extra).map(|a| a.to_string()).collect() };
    let run = |a: Vec<String>, code| build_err(&a.iter().map(String::as_str).collect::<Vec<_>>(), code);

    let e = run(with(&["--build-arg", ""]), 2);
    assert!(e.contains("--build-arg with an empty name"), "{e}");
    let e = run([vec!["--log-level".to_string(), "bogus".into()], with(&[])].concat(), 2);
    assert!(e.contains("invalid value 'bogus'"), "{e}");

    let e = run(with(&["--build-arg", "USED=1", "--build-arg", "TYPO=1", "--build-arg", "HTTP_PROXY=x"]), 2);
    assert!(e.contains("build args not consumed by any ARG: TYPO\n"), "only TYPO is unused: {e}");
    let last = e.lines().last().unwrap();
    assert_eq!(last.matches("missing '}'").count(), 1, "one cause, once: {last}");

    let e = run(
        vec![
            "build".into(),
            "--from".into(),
            from.clone(),
            "-f".into(),
            "nope.Dockerfile".into(),
            "--output".into(),
            out.clone(),
        ],
        2,
    );
    let last = e.lines().last().unwrap();
    assert_eq!(last.matches("No such file or directory").count(), 1, "{last}");
}

/// Every option of every command has a description, help examples are not wrapped mid-command
/// on an 80-column terminal, and `extender -version` answers like the lifecycle's phases.
#[test]
fn help_describes_every_option_and_extender_knows_its_version() {
    for cmd in ["build", "generate", "extend", "export"] {
        let o = Command::new(bin()).args([cmd, "--help"]).env("COLUMNS", "80").output().unwrap();
        let help = String::from_utf8(o.stdout).unwrap();
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let is_option = line.starts_with("  -") || line.starts_with("      --");
            if is_option && !line.contains("--help") {
                let described = line.trim_start().contains("  ")
                    || lines.get(i + 1).is_some_and(|n| n.starts_with("          ") && !n.trim().is_empty());
                assert!(described, "{cmd}: `{line}` has no description:\n{help}");
            }
        }
        assert!(!help.contains("--platform <PLATFORM>"), "{cmd}: --platform is the platform dir in the phases");
    }
    let o = Command::new(bin()).arg("--help").env("COLUMNS", "80").output().unwrap();
    let help = String::from_utf8(o.stdout).unwrap();
    for l in help.lines().skip_while(|l| !l.starts_with("Examples:")).skip(1).take_while(|l| !l.is_empty()) {
        assert!(l.len() <= 80 && (l.ends_with('\\') || l.starts_with("      -")), "example line `{l}`");
    }
    let t = tempfile::tempdir().unwrap();
    let extender = t.path().join("extender");
    std::os::unix::fs::symlink(bin(), &extender).unwrap();
    let o = Command::new(&extender).arg("-version").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap().trim(), env!("CARGO_PKG_VERSION"));
}

/// `COPY --from` unpacks only what it reads of the source image; a hard link it reads whose
/// target lies outside that part brings its target along (a second, wider unpack), so the
/// copy has the content. The source is an image ext-extend made, whose layer holds
/// `/opt/a/big` and `/opt/b/link` as one inode (COPY keeps hard links within a source).
#[test]
fn copy_from_brings_hard_link_targets_along() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("tree/a/big"), "the one inode\n");
    fs::create_dir_all(ctx.join("tree/b")).unwrap();
    fs::hard_link(ctx.join("tree/a/big"), ctx.join("tree/b/link")).unwrap();
    let df = t.path().join("source.Dockerfile");
    write(&df, "FROM ${base_image}\nCOPY tree/ /opt/\n");
    let source = t.path().join("source");
    let from = format!("oci:{}:latest", s(&base));
    build_ok(&[
        "build",
        "--from",
        &from,
        "-f",
        &s(&df),
        "--context",
        &s(&ctx),
        "--output",
        &format!("oci:{}:s", s(&source)),
    ]);

    let df = t.path().join("copy.Dockerfile");
    write(&df, &format!("FROM ${{base_image}}\nCOPY --from=oci:{}:s --chown=1000 /opt/b/ /copied/\n", s(&source)));
    let out = t.path().join("out");
    build_ok(&[
        "build",
        "--from",
        &from,
        "-f",
        &s(&df),
        "--context",
        &s(&ctx),
        "--output",
        &format!("oci:{}:x", s(&out)),
    ]);
    let (_g, rootfs) = umoci_unpack(&out, "x");
    let link = rootfs.join("copied/link");
    assert_eq!(fs::read_to_string(&link).unwrap(), "the one inode\n");
    let md = fs::metadata(&link).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1000), "--chown=1000 takes the user's primary group");
    assert!(!rootfs.join("copied/big").exists() && !rootfs.join("opt").exists(), "only /opt/b/ is copied");
}
