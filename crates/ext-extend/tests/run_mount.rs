//! End-to-end: `RUN --mount` (cache, bind, tmpfs, secret) in the sandbox with both snapshot
//! differs: what is mounted is usable while the command runs and never reaches a layer, the
//! image's tree is as before around the targets, and both differs give the same image.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

const SECRET: &str = "s3cr3t-value-that-must-not-leak";

const MOUNTS: &str = r#"FROM ${base_image}
USER root
RUN --mount=type=cache,target=/root/.cache/tool,id=tool sh -c 'echo run >> /root/.cache/tool/count && wc -l < /root/.cache/tool/count > /cache-lines'
RUN --mount=type=bind,source=src,target=/mnt/src cat /mnt/src/hello.txt > /bound && test ! -e /mnt/src/ignored.txt && ! touch /mnt/src/new 2>/dev/null
RUN --mount=type=bind,source=src,target=/mnt/rw,rw sh -c 'echo x > /mnt/rw/written && cat /mnt/rw/written > /rw-seen'
RUN --mount=type=tmpfs,target=tmp/scratch sh -c 'echo t > /tmp/scratch/f && grep -q " /tmp/scratch tmpfs" /proc/mounts && echo ok > /tmpfs-ok'
RUN --mount=type=secret,id=token sh -c 'wc -c < /run/secrets/token > /secret-bytes && stat -c %a /run/secrets/token > /secret-mode'
RUN --mount=type=secret,id=token,env=TOKEN,target=/etc/token,mode=0440 sh -c 'echo ${#TOKEN} > /secret-len && stat -c %a /etc/token > /secret-file-mode'
RUN --mount=type=secret,id=absent sh -c 'test ! -e /run/secrets/absent && echo skipped > /absent'
"#;

fn build(tmp: &Path, cache: &Path, args: &[&str]) -> std::process::Output {
    fs::create_dir_all(tmp).unwrap();
    Command::new(bin())
        .args(args)
        .env("TMPDIR", tmp)
        .env("EXT_EXTEND_CACHE_DIR", cache)
        .env("EXT_EXTEND_NO_CACHE", "1")
        .env("TOKEN_SOURCE", SECRET)
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap()
}

fn layer_bytes(layout: &Path, tag: &str) -> Vec<(String, Vec<u8>, String)> {
    let info = skopeo_inspect(layout, tag, &[]);
    layer_digests(&info)
        .iter()
        .map(|d| {
            let blob = layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
            let raw = Command::new("gzip").arg("-dc").arg(&blob).output().unwrap().stdout;
            let list = Command::new("tar").arg("-tzf").arg(&blob).output().unwrap().stdout;
            (d.clone(), raw, String::from_utf8(list).unwrap())
        })
        .collect()
}

#[test]
fn run_mounts_are_there_while_the_command_runs_and_in_no_layer() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("src/hello.txt"), "hi\n");
    write(&ctx.join("src/ignored.txt"), "never\n");
    write(&ctx.join(".dockerignore"), "src/ignored.txt\n");
    let df = t.path().join("run.Dockerfile");
    write(&df, MOUNTS);
    let base_layers = layer_digests(&skopeo_inspect(&base, "latest", &[])).len();
    let mut digests = Vec::new();
    for mode in ["overlay", "stat"] {
        let out = t.path().join(format!("out-{mode}"));
        let cache = t.path().join(format!("cache-{mode}"));
        let args = [
            "build",
            "--from",
            &format!("oci:{}", s(&base)),
            "-f",
            &s(&df),
            "--context",
            &s(&ctx),
            "--output",
            &format!("oci:{}", s(&out)),
            "--snapshot",
            mode,
            "--secret",
            "id=token,env=TOKEN_SOURCE",
        ];
        let o = build(&t.path().join(format!("tmp-{mode}")), &cache, &args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{mode}: {stderr}");
        assert!(!stderr.contains(SECRET), "{mode}: the secret is in the log");
        digests.push(String::from_utf8(o.stdout).unwrap().trim().to_string());

        let (_g, r) = umoci_unpack(&out, "latest");
        let read = |p: &str| fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{mode} {p}: {e}"));
        assert_eq!(read("cache-lines").trim(), "1");
        assert_eq!(read("bound"), "hi\n", "bind source from the context, .dockerignore applied, read-only");
        assert_eq!(read("rw-seen"), "x\n");
        assert!(!ctx.join("src/written").exists(), "{mode}: rw writes are discarded, the context is untouched");
        assert_eq!(read("tmpfs-ok"), "ok\n");
        assert_eq!(read("secret-mode").trim(), "400");
        assert_eq!(read("secret-bytes").trim(), SECRET.len().to_string());
        assert_eq!(read("secret-len").trim(), SECRET.len().to_string());
        assert_eq!(read("secret-file-mode").trim(), "440");
        assert_eq!(read("absent"), "skipped\n", "an optional secret nobody gave is not mounted");
        for gone in ["root/.cache", "mnt", "run/secrets", "tmp/scratch", "etc/token"] {
            assert!(!r.join(gone).exists(), "{mode}: mount point /{gone} reached the image");
        }
        let layers = layer_bytes(&out, "latest");
        for (digest, raw, list) in &layers[base_layers..] {
            assert!(!raw.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()), "{mode}: secret in layer {digest}");
            for bad in ["root/", "mnt", "run/", "scratch", "etc/token", "count"] {
                assert!(!list.lines().any(|l| l.trim_start_matches("./").starts_with(bad)), "{mode}: {bad} in {list}");
            }
        }

        // The cache directory outlives the build: the next build's RUN sees what this one left.
        let again = t.path().join(format!("again-{mode}"));
        let mut args2 = args.to_vec();
        let out_ref = format!("oci:{}", s(&again));
        args2[8] = &out_ref;
        let o = build(&t.path().join(format!("tmp2-{mode}")), &cache, &args2);
        assert!(o.status.success(), "{mode}: {}", String::from_utf8_lossy(&o.stderr));
        let (_g2, r2) = umoci_unpack(&again, "latest");
        assert_eq!(fs::read_to_string(r2.join("cache-lines")).unwrap().trim(), "2", "{mode}: cache kept");
    }
    assert_eq!(digests[0], digests[1], "both differs make the same image");
}

#[test]
fn run_mount_errors_name_the_line() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let cases = [
        ("RUN --mount=type=secret,id=npm,required cat /run/secrets/npm", "the secret `npm` is required but not given"),
        ("RUN --mount=type=bind,source=nope,target=/x true", "source `nope` is not in the build context"),
        ("RUN --mount=type=bind,source=../up,target=/x true", "outside the build context"),
        ("RUN --mount=type=cache,target=/etc/passwd/x true", "not a directory"),
        ("RUN --mount=type=volume,target=/x true", "unknown mount type `volume`"),
        ("RUN --mount=type=cache,from=builder,target=/x true", "from="),
    ];
    for (line, needle) in cases {
        let df = t.path().join("Dockerfile");
        write(&df, &format!("FROM ${{base_image}}\nUSER root\n{line}\n"));
        let out = t.path().join("out");
        let o = build(
            &t.path().join("tmp"),
            &test_cache(),
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
            ],
        );
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{line}: {stderr}");
        assert!(stderr.contains(needle) && stderr.contains("Dockerfile:3"), "{line}: {stderr}");
        assert!(!out.exists(), "{line}: no output on failure");
    }
}

#[test]
fn a_bind_mounts_content_is_part_of_the_step_key_and_a_caches_is_not() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("src/hello.txt"), "hi\n");
    let df = t.path().join("Dockerfile");
    write(
        &df,
        "FROM ${base_image}\nUSER root\nRUN --mount=type=bind,source=src,target=/s cp /s/hello.txt /copied\nRUN --mount=type=cache,target=/c sh -c 'date >> /c/log; echo done > /done'\n",
    );
    let cache = t.path().join("cache");
    let run = |n: usize| {
        let out = t.path().join(format!("out{n}"));
        let o = Command::new(bin())
            .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&df), "--context", &s(&ctx)])
            .args(["--output", &format!("oci:{}", s(&out))])
            .env("TMPDIR", t.path())
            .env("EXT_EXTEND_CACHE_DIR", &cache)
            .env_remove("EXT_EXTEND_NO_CACHE")
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        let (_g, r) = umoci_unpack(&out, "latest");
        (stderr, fs::read_to_string(r.join("copied")).unwrap())
    };
    let (first, copied) = run(1);
    assert_eq!(copied, "hi\n");
    assert_eq!(first.matches("step cache miss").count(), 2, "{first}");
    let (second, _) = run(2);
    assert_eq!(second.matches("step cache hit").count(), 2, "the cache mount's content is not in the key: {second}");
    write(&ctx.join("src/hello.txt"), "changed\n");
    let (third, copied) = run(3);
    assert_eq!(copied, "changed\n");
    let miss = third.lines().find(|l| l.contains("step cache miss")).unwrap_or_else(|| panic!("{third}"));
    assert!(miss.contains("Dockerfile:3") && miss.contains("mounts"), "{miss}");
}
