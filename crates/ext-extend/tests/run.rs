//! End-to-end: RUN in the chroot sandbox, both snapshot differs, checked with umoci.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const MODES: [&str; 2] = ["overlay", "stat"];

fn build_with(tmp: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env("TMPDIR", tmp)
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        .env("EXT_EXTEND_NO_CACHE", "1")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

/// Layer tars (uncompressed listings) of the new layers of `layout:tag`.
fn new_layer_listings(layout: &Path, tag: &str, base_layers: usize) -> Vec<String> {
    let info = skopeo_inspect(layout, tag, &[]);
    layer_digests(&info)[base_layers..]
        .iter()
        .map(|d| {
            let blob = layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
            let out = Command::new("tar").arg("-tvzf").arg(&blob).output().unwrap();
            String::from_utf8(out.stdout).unwrap()
        })
        .collect()
}

const CHANGES: &str = r#"FROM ${base_image}
USER root
RUN echo new > /added.txt && echo changed >> /etc/os-release && rm /etc/motd && rm -r /home/cnb && mkdir /emptydir && ln -s /added.txt /symlink && ln /added.txt /hardlink
RUN chmod 0600 /etc/group && chown 1000:1000 /etc/passwd
RUN touch -d '2001-01-01 00:00' /bin/busybox
RUN mkdir -p /workspace && echo ignored > /workspace/file
RUN true
USER 1000
RUN echo mine > /tmp/mine && id -G > /tmp/groups
SHELL ["/bin/sh", "-ec"]
RUN echo "$-" > /tmp/flags
RUN ["/bin/sh", "-c", "echo exec-form > /tmp/exec"]
ARG GREETING=hi
ENV FROM_ENV=env-value
RUN echo "$GREETING $FROM_ENV ${UNDECLARED:-unset} $HOME" > /tmp/vars
WORKDIR /home/made/by/workdir
RUN pwd > /tmp/pwd
"#;

#[test]
fn run_changes_become_layers_in_both_snapshot_modes() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let df = t.path().join("run.Dockerfile");
    write(&df, CHANGES);
    let mut digests = Vec::new();
    for mode in MODES {
        let out = t.path().join(format!("out-{mode}"));
        let tmp = t.path().join(format!("tmp-{mode}"));
        fs::create_dir_all(&tmp).unwrap();
        let o = build_with(
            &tmp,
            &[
                "build",
                "--from",
                &format!("oci:{}", s(&base)),
                "-f",
                &s(&df),
                "--context",
                &s(t.path()),
                "--output",
                &format!("oci:{}", s(&out)),
                "--snapshot",
                mode,
                "--ignore-path",
                "/workspace",
                "--build-arg",
                "UNDECLARED=x",
            ],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{mode}: {stderr}");
        assert!(
            stderr.contains(if mode == "overlay" { "overlayfs snapshots" } else { "stat-index snapshots" }),
            "{stderr}"
        );
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "{mode}: scratch removed after success");
        digests.push(String::from_utf8(o.stdout).unwrap().trim().to_string());

        let (_g, r) = umoci_unpack(&out, "latest");
        let read = |p: &str| fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{mode} {p}: {e}"));
        let meta = |p: &str| fs::symlink_metadata(r.join(p)).unwrap_or_else(|e| panic!("{mode} {p}: {e}"));
        assert_eq!(read("added.txt"), "new\n");
        assert!(read("etc/os-release").ends_with("changed\n"), "modified file");
        assert!(!r.join("etc/motd").exists(), "{mode}: deleted file (whiteout)");
        assert!(!r.join("home/cnb").exists(), "{mode}: deleted directory (whiteout)");
        assert_eq!(fs::read_dir(r.join("emptydir")).unwrap().count(), 0);
        assert_eq!(fs::read_link(r.join("symlink")).unwrap().to_str(), Some("/added.txt"));
        assert_eq!(meta("hardlink").ino(), meta("added.txt").ino(), "{mode}: hard link kept");
        assert_eq!(meta("etc/group").mode() & 0o7777, 0o600, "chmod only");
        assert_eq!((meta("etc/passwd").uid(), meta("etc/passwd").gid()), (1000, 1000), "chown only");
        assert!(!r.join("workspace").exists(), "{mode}: ignored path never reaches a layer");
        assert_eq!((meta("tmp/mine").uid(), meta("tmp/mine").gid()), (1000, 1000), "USER 1000 owns what it creates");
        assert_eq!(read("tmp/groups").trim(), "1000 50", "primary and supplementary groups from the image");
        assert!(read("tmp/flags").contains('e'), "SHELL change applies");
        assert_eq!(read("tmp/exec"), "exec-form\n");
        assert_eq!(read("tmp/vars"), "hi env-value unset /home/cnb\n", "ARG and ENV visible, undeclared args not");
        assert_eq!(read("tmp/pwd"), "/home/made/by/workdir\n", "WORKDIR created and used");
        assert!(!r.join("proc/self").exists() && !r.join("dev/null").exists(), "sandbox mounts stay out");

        // One layer per changing RUN (the `true` and the ignored write add none), plus the
        // WORKDIR that creates its directory.
        let listings = new_layer_listings(&out, "latest", 2);
        assert_eq!(listings.len(), 9, "{mode}: {listings:#?}");
        assert!(listings[7].contains("home/made/by/workdir"), "WORKDIR layer: {}", listings[7]);
        assert!(listings[0].contains("etc/.wh.motd") && listings[0].contains("home/.wh.cnb"), "{}", listings[0]);
        assert!(listings[2].contains("bin/busybox"), "ctime/mtime change caught: {}", listings[2]);
        let cfg = skopeo_inspect(&out, "latest", &["--config"]);
        let history = cfg["history"].as_array().unwrap();
        let empty: Vec<&str> =
            history.iter().filter(|h| h["empty_layer"] == true).map(|h| h["created_by"].as_str().unwrap()).collect();
        assert!(empty.contains(&"RUN true") && empty.iter().any(|h| h.contains("/workspace")), "{empty:?}");
    }
    assert_eq!(digests[0], digests[1], "both differs produce the same image");
}

#[test]
fn failing_run_leaves_output_untouched() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let out = t.path().join("out");
    let ok = t.path().join("ok.Dockerfile");
    write(&ok, "FROM ${base_image}\nUSER root\nRUN echo first > /f\n");
    let from = format!("oci:{}", s(&base));
    build_ok(&["build", "--from", &from, "-f", &s(&ok), "--output", &format!("oci:{}", s(&out))]);
    let before = snapshot(&out);
    let tmp = t.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();

    let bad = t.path().join("bad.Dockerfile");
    write(&bad, "FROM ${base_image}\nUSER root\nRUN echo partial > /partial\nRUN echo doomed > /x && exit 3\n");
    let o = build_with(&tmp, &["build", "--from", &from, "-f", &s(&bad), "--output", &format!("oci:{}", s(&out))]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.Dockerfile:4") && stderr.contains("exit code 3"), "{stderr}");
    assert_eq!(snapshot(&out), before, "output untouched");
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "scratch removed after failure");
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ext-extend-staging"))
        .collect();
    assert!(leftovers.is_empty(), "staging removed");

    // A shell-less (distroless) image: a clear error, not a mystery.
    let distroless = t.path().join("distroless");
    make_run_image(&distroless, "latest", true);
    let shell = t.path().join("shell.Dockerfile");
    write(&shell, "FROM ${base_image}\nRUN echo hi\n");
    let err = build_err(&strs(&oci_build(&distroless, &shell, None, &t.path().join("o2"))), 2);
    assert!(err.contains("shell.Dockerfile:2") && err.contains("`/bin/sh` is not in the image"), "{err}");
}

#[test]
fn dockerfiles_in_one_session_share_one_rootfs() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let a_ctx = t.path().join("a");
    write(&a_ctx.join("tool.sh"), "#!/bin/sh\necho tool-ran\n");
    let b_ctx = t.path().join("b");
    fs::create_dir_all(&b_ctx).unwrap();
    let a = t.path().join("a.Dockerfile");
    write(
        &a,
        "FROM ${base_image}\nUSER root\nRUN echo from-a > /a.txt\nCOPY --chmod=0755 tool.sh /usr/local/bin/tool\n",
    );
    let b = t.path().join("b.Dockerfile");
    write(&b, "FROM ${base_image}\nRUN test \"$(cat /a.txt)\" = from-a && tool > /b.txt\nUSER 1000\n");
    let out = t.path().join("out");
    for mode in MODES {
        let o = Command::new(bin())
            .args([
                "build",
                "--from",
                &format!("oci:{}", s(&base)),
                "-f",
                &s(&a),
                "--context",
                &s(&a_ctx),
                "-f",
                &s(&b),
                "--context",
                &s(&b_ctx),
                "--output",
                &format!("oci:{}:{mode}", s(&out)),
                "--snapshot",
                mode,
            ])
            .env("EXT_EXTEND_CACHE_DIR", test_cache())
            .env("EXT_EXTEND_NO_CACHE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{stderr}");
        assert_eq!(stderr.matches("unpacked ").count(), 1, "{mode}: the rootfs is unpacked once:\n{stderr}");
        let (_g, r) = umoci_unpack(&out, mode);
        assert_eq!(fs::read_to_string(r.join("b.txt")).unwrap(), "tool-ran\n", "b sees a's RUN and COPY");
    }
}

#[test]
fn hostile_base_layers_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let sentinel = t.path().join("sentinel");
    fs::create_dir_all(&sentinel).unwrap();
    write(&sentinel.join("keep"), "original\n");
    let escape = format!("../../../../../../../../..{}", sentinel.display());
    // `None`: accepted, because symlinks in a layer resolve inside the image root as in a
    // chroot (containerd and umoci do the same); the file lands inside the root.
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        ("dotdot", raw_tar(&[RawEntry::File(&format!("{escape}/pwned"), b"x")]), Some("`..`")),
        ("abs-symlink", raw_tar(&[RawEntry::Symlink("evil", &s(&sentinel)), RawEntry::File("evil/pwned", b"x")]), None),
        ("hardlink-abs", raw_tar(&[RawEntry::Hardlink("pw", "/etc/passwd")]), Some("hard-link target")),
        ("hardlink-dotdot", raw_tar(&[RawEntry::Hardlink("pw", &format!("{escape}/keep"))]), Some("hard-link target")),
        (
            "relative-symlink-up",
            raw_tar(&[RawEntry::Symlink("up", "../../../../../../../../.."), RawEntry::File("up/pwned", b"x")]),
            None,
        ),
    ];
    let df = t.path().join("run.Dockerfile");
    write(&df, "FROM ${base_image}\nRUN true\n");
    let passwd_links = fs::metadata("/etc/passwd").unwrap().nlink();
    for (name, tar, needle) in cases {
        for mode in MODES {
            let base = t.path().join(format!("base-{name}-{mode}"));
            make_run_image(&base, "latest", false);
            let digest = append_raw_layer(&base, "latest", &tar);
            let tmp = t.path().join(format!("tmp-{name}-{mode}"));
            fs::create_dir_all(&tmp).unwrap();
            let o = build_with(
                &tmp,
                &[
                    "build",
                    "--from",
                    &format!("oci:{}", s(&base)),
                    "-f",
                    &s(&df),
                    "--output",
                    &format!("oci:{}", s(&t.path().join("out"))),
                    "--snapshot",
                    mode,
                    // A fresh cache: every layer is unpacked, in parallel with overlayfs.
                    "--cache-dir",
                    &s(&t.path().join(format!("cache-{name}-{mode}"))),
                ],
            );
            let stderr = String::from_utf8_lossy(&o.stderr);
            match needle {
                Some(needle) => {
                    assert!(!o.status.success(), "{name}/{mode}: hostile layer accepted");
                    let cached = t
                        .path()
                        .join(format!("cache-{name}-{mode}/unpacked"))
                        .join(digest.trim_start_matches("sha256:"));
                    assert!(!cached.exists(), "{name}/{mode}: a rejected layer was cached");
                    assert!(stderr.contains(&digest) && stderr.contains(needle), "{name}/{mode}: {stderr}");
                }
                None => {
                    assert!(o.status.success(), "{name}/{mode}: {stderr}");
                    let _ = fs::remove_dir_all(t.path().join("out"));
                }
            }
            assert_eq!(fs::read_dir(&sentinel).unwrap().count(), 1, "{name}/{mode}: something was written outside");
            assert_eq!(fs::read_to_string(sentinel.join("keep")).unwrap(), "original\n");
            assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "{name}/{mode}: scratch cleaned");
            assert!(!t.path().join("out").exists());
        }
    }
    assert_eq!(fs::metadata("/etc/passwd").unwrap().nlink(), passwd_links, "no hard link to the host's /etc/passwd");
}

#[test]
fn sigterm_mid_run_cleans_up_everything() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let out = t.path().join("out");
    let df = t.path().join("slow.Dockerfile");
    // A distinctive duration so the process can be found (and must be gone afterwards).
    write(&df, "FROM ${base_image}\nUSER root\nRUN echo started > /started && sleep 47.25\n");
    let tmp = t.path().join("tmp");
    fs::create_dir_all(&tmp).unwrap();
    // A stale scratch dir of a run killed outright (its lock file held by nobody) is removed.
    let stale = tmp.join("ext-extend-stale");
    write(&stale.join("rootfs/junk"), "x");
    write(&tmp.join("ext-extend-stale.lock"), "");
    let mut child = Command::new(bin())
        .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&df), "--output", &format!("oci:{}", s(&out))])
        .env("TMPDIR", &tmp)
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        .env("EXT_EXTEND_NO_CACHE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sleep_running() {
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!stale.exists(), "stale scratch dir removed");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    let deadline = Instant::now() + Duration::from_secs(5);
    while sleep_running() {
        assert!(Instant::now() < deadline, "the RUN's process survived");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0, "scratch removed");
    assert!(!out.exists(), "no output");
    let staging: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ext-extend"))
        .collect();
    assert!(staging.is_empty(), "staging removed");
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&s(&tmp)), "nothing left mounted");
}

fn sleep_running() -> bool {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("47.25")))
}

#[test]
fn base_layers_are_unpacked_once_per_machine() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let df = t.path().join("run.Dockerfile");
    write(&df, "FROM ${base_image}\nUSER root\nRUN echo x > /x && rm /etc/motd\n");
    let cache = t.path().join("cache");
    let mut digests = Vec::new();
    for (i, expect) in ["0 from the unpacked-layer cache", "2 from the unpacked-layer cache"].iter().enumerate() {
        let out = t.path().join(format!("out{i}"));
        let o = Command::new(bin())
            .args([
                "build",
                "--from",
                &format!("oci:{}", s(&base)),
                "-f",
                &s(&df),
                "--output",
                &format!("oci:{}", s(&out)),
            ])
            .args(["--cache-dir", &s(&cache), "--snapshot", "overlay"])
            .env("EXT_EXTEND_NO_CACHE", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success() && stderr.contains(expect), "build {i}: {stderr}");
        digests.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
        let (_g, r) = umoci_unpack(&out, "latest");
        assert!(r.join("x").exists() && !r.join("etc/motd").exists());
    }
    assert_eq!(digests[0], digests[1]);
    // The cached layers were never written through: the first layer still has /etc/motd's
    // deletion only as an upper-layer whiteout, and the file itself is intact in the cache.
    let cached: Vec<_> =
        fs::read_dir(cache.join("unpacked")).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert_eq!(cached.len(), 2);
    assert!(cached.iter().any(|e| e.path().join("etc/motd").is_file()));
}

/// A base layer without entries for the directories it writes into (ext-extend's own COPY
/// layers leave existing parents out) must not hide their metadata from a RUN, whether the
/// layer was just unpacked into the unpacked-layer cache or is found there.
#[test]
fn implicit_parent_dirs_of_base_layers_keep_the_lower_metadata() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    write(&t.path().join("ctx/x.txt"), "x");
    write(&t.path().join("copy.Dockerfile"), "FROM ${base_image}\nCOPY x.txt /tmp/\n");
    let copied = t.path().join("copied");
    build_ok(&strs(&oci_build(&base, &t.path().join("copy.Dockerfile"), Some(&t.path().join("ctx")), &copied)));
    write(&t.path().join("run.Dockerfile"), "FROM ${base_image}\nUSER cnb\nRUN touch /tmp/by-cnb\n");
    let cache = t.path().join("cache");
    let mut digests = Vec::new();
    for i in 0..2 {
        let out = t.path().join(format!("out{i}"));
        let o = Command::new(bin())
            .args(["build", "--from", &format!("oci:{}", s(&copied)), "-f", &s(&t.path().join("run.Dockerfile"))])
            .args(["--output", &format!("oci:{}", s(&out)), "--snapshot", "overlay"])
            .args(["--cache-dir", &s(&cache)])
            .env("EXT_EXTEND_NO_CACHE", "1")
            .output()
            .unwrap();
        assert!(o.status.success(), "build {i}: {}", String::from_utf8_lossy(&o.stderr));
        digests.push(String::from_utf8_lossy(&o.stdout).trim().to_string());
        let (_g, r) = umoci_unpack(&out, "latest");
        let tmp = fs::metadata(r.join("tmp")).unwrap();
        assert_eq!(tmp.mode() & 0o7777, 0o1777, "build {i}: /tmp keeps its mode");
        assert_eq!(fs::metadata(r.join("tmp/by-cnb")).unwrap().uid(), 1000);
    }
    assert_eq!(digests[0], digests[1]);
}

/// As a non-root user, a Dockerfile with RUN fails with one line saying RUN needs root
/// (instead of the unpacker's `chown ... Operation not permitted`), and exit code 2.
#[test]
fn run_as_non_root_says_it_needs_root() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let df = t.path().join("run.Dockerfile");
    write(&df, "FROM ${base_image}\nRUN true\n");
    for p in [t.path(), &base] {
        // nobody must be able to read the inputs and write the output next to them.
        Command::new("chmod").arg("-R").arg("a+rwX").arg(p).status().unwrap();
    }
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin())
        .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&df), "--context", &s(t.path())])
        .args(["--output", &format!("oci:{}", s(&t.path().join("out")))])
        .env("TMPDIR", t.path())
        .env("EXT_EXTEND_CACHE_DIR", t.path().join("cache"))
        .env("EXT_EXTEND_NO_CACHE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.contains("run.Dockerfile:2: RUN needs root") && last.contains("--live-root"), "{stderr}");
}

/// Steps log in Dockerfile order: a COPY's line comes before the RUN after it.
#[test]
fn log_follows_the_dockerfile_order() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    write(&t.path().join("ctx/x"), "x");
    let df = t.path().join("order.Dockerfile");
    write(&df, "FROM ${base_image}\nCOPY x /x\nUSER root\nRUN echo hi > /y\nCOPY x /z\n");
    let o = build_with(t.path(), &strs(&oci_build(&base, &df, Some(&t.path().join("ctx")), &t.path().join("out"))));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let at = |needle: &str| stderr.find(needle).unwrap_or_else(|| panic!("no `{needle}` in {stderr}"));
    assert!(at("order.Dockerfile:2 COPY x /x") < at("order.Dockerfile:4 RUN echo hi"), "{stderr}");
    assert!(at("order.Dockerfile:4 RUN echo hi") < at("order.Dockerfile:5 COPY x /z"), "{stderr}");
}

/// With `-q`, a RUN's output stays off the terminal, unless the command fails: then it is
/// what the user needs to see.
#[test]
fn quiet_keeps_run_output_unless_the_command_fails() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    for (body, ok) in [("echo chatty-output && true", true), ("echo chatty-output && false", false)] {
        let df = t.path().join("q.Dockerfile");
        write(&df, &format!("FROM ${{base_image}}\nRUN {body}\n"));
        let o = build_with(
            t.path(),
            &[
                "-q",
                "build",
                "--from",
                &format!("oci:{}", s(&base)),
                "-f",
                &s(&df),
                "--output",
                &format!("oci:{}", s(&t.path().join("out"))),
            ],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.success(), ok, "{stderr}");
        assert_eq!(stderr.contains("chatty-output"), !ok, "{body}: {stderr}");
        assert!(!stderr.contains("INFO"), "{stderr}");
    }
}
