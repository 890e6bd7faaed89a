//! End-to-end: the step cache. A hit reuses the layer byte for byte without running anything;
//! every key component, changed alone, makes the steps that read it miss (and says why) while
//! inputs outside the key do not; entries travel between cache dirs through a real registry;
//! TTL, size bound, `--no-cache` and `cache prune`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// A base image, a build context and a Dockerfile in a temp dir.
struct Fixture {
    t: tempfile::TempDir,
    base: PathBuf,
    ctx: PathBuf,
    builds: std::cell::Cell<usize>,
}

/// What one build did at each step the cache applies to, by instruction text.
struct Built {
    digest: String,
    out: PathBuf,
    log: String,
}

impl Built {
    /// The cache log line of the step whose instruction contains `instruction`.
    fn step(&self, instruction: &str) -> &str {
        self.log
            .lines()
            .find(|l| l.contains("step cache") && l.contains(instruction))
            .unwrap_or_else(|| panic!("no step cache line for `{instruction}` in:\n{}", self.log))
    }

    fn hit(&self, instruction: &str) -> bool {
        let line = self.step(instruction);
        assert!(line.contains("step cache hit") || line.contains("step cache miss"), "{line}");
        line.contains("step cache hit")
    }

    fn count(&self, what: &str) -> usize {
        self.log.matches(what).count()
    }
}

impl Fixture {
    fn new() -> Fixture {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        make_run_image(&base, "latest", false);
        let ctx = t.path().join("ctx");
        write(&ctx.join("src/a.txt"), "a\n");
        write(&ctx.join("src/b.txt"), "b\n");
        write(&ctx.join("other.txt"), "not copied\n");
        Fixture { t, base, ctx, builds: std::cell::Cell::new(0) }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.t.path().join(name)
    }

    /// Builds `dockerfile` with the step cache in `cache` (plus `args`, `env`).
    fn build_in(&self, cache: &Path, dockerfile: &str, args: &[&str], env: &[(&str, &str)]) -> Built {
        let o = self.try_build_in(cache, dockerfile, args, env);
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "build failed:\n{log}");
        let stdout = String::from_utf8(o.stdout).unwrap();
        let digest = stdout.lines().last().unwrap().to_string();
        let out = self.path(&format!("out-{}", self.builds.get()));
        Built { digest, out, log }
    }

    fn try_build_in(&self, cache: &Path, dockerfile: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = format!("oci:{}", s(&self.path(&format!("out-{}", self.builds.get() + 1))));
        self.try_build_to(cache, dockerfile, &out, args, env)
    }

    fn try_build_to(&self, cache: &Path, dockerfile: &str, out: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
        let n = self.builds.get() + 1;
        self.builds.set(n);
        let df = self.path(&format!("Dockerfile-{n}"));
        write(&df, dockerfile);
        let mut cmd = Command::new(bin());
        cmd.args(["build", "--from", &format!("oci:{}", s(&self.base)), "-f", &s(&df), "--context", &s(&self.ctx)])
            .args(["--output", out])
            .args(args)
            .env("EXT_EXTEND_CACHE_DIR", cache)
            .env_remove("EXT_EXTEND_NO_CACHE")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("CNB_REGISTRY_AUTH")
            .env("DOCKER_CONFIG", self.t.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn build(&self, dockerfile: &str, args: &[&str]) -> Built {
        self.build_in(&self.path("cache"), dockerfile, args, &[])
    }
}

/// Every file of an OCI layout with its bytes.
fn layout_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(dir)
        .into_iter()
        .filter(|(_, data)| !data.is_empty())
        .map(|(p, data)| (p.display().to_string(), data))
        .collect()
}

/// A RUN whose output differs every time it runs: a hit proves it did not run.
const STAMPED: &str = "FROM ${base_image}
USER root
COPY src/ /opt/src/
RUN head -c 16 /dev/urandom | od -An -tx1 > /opt/stamp && cat /opt/src/a.txt > /opt/copied
WORKDIR /opt/work
RUN true
ENV X=1
LABEL l=v
RUN echo \"$X\" > /opt/x
USER 1000
";

#[test]
fn a_hit_is_byte_identical_to_the_miss_and_runs_nothing() {
    let f = Fixture::new();
    let first = f.build(STAMPED, &[]);
    assert_eq!(first.count("step cache miss"), 5, "COPY, 3 RUN, WORKDIR:\n{}", first.log);
    assert!(first.log.contains("unpacked "), "{}", first.log);

    let second = f.build(STAMPED, &[]);
    assert_eq!(second.count("step cache hit"), 5, "{}", second.log);
    assert_eq!(second.digest, first.digest, "a hit gives the image the miss gave:\n{}", second.log);
    assert_eq!(layout_files(&second.out), layout_files(&first.out), "byte for byte, history included");
    assert!(!second.log.contains("unpacked "), "no rootfs is made when every RUN hits:\n{}", second.log);
    assert!(!second.log.contains("sandbox+command"), "no command ran:\n{}", second.log);
    assert!(second.step("RUN true").contains("no layer"), "a RUN that changed nothing is cached too");

    // A step after the hits that misses: the rootfs is made only now, with the hits' layers.
    let longer = f.build(&format!("{STAMPED}USER root\nRUN cat /opt/stamp > /opt/stamp2\n"), &[]);
    assert_eq!((longer.count("step cache hit"), longer.count("step cache miss")), (5, 1), "{}", longer.log);
    assert_eq!(longer.count("unpacked "), 1, "{}", longer.log);
    let (_l, root) = umoci_unpack(&longer.out, "latest");
    let (_f, first_root) = umoci_unpack(&first.out, "latest");
    assert_eq!(fs::read(root.join("opt/stamp2")).unwrap(), fs::read(first_root.join("opt/stamp")).unwrap());

    // --no-cache runs everything (the stamp changes) and refreshes the entries.
    let fresh = f.build(STAMPED, &["--no-cache"]);
    assert_eq!(fresh.count("step cache miss (--no-cache"), 5, "{}", fresh.log);
    assert_ne!(fresh.digest, first.digest, "the RUN really ran again");
    let again = f.build(STAMPED, &[]);
    assert_eq!(again.count("step cache hit"), 5, "{}", again.log);
    assert_eq!(again.digest, fresh.digest, "the refreshed entries are used");

    // The image is what a build without any step cache makes, apart from the stamp: umoci
    // unpacks it, and the hit's RUN output is the miss's.
    let (_g, root) = umoci_unpack(&again.out, "latest");
    let (_h, root_fresh) = umoci_unpack(&fresh.out, "latest");
    for file in ["opt/stamp", "opt/copied", "opt/x", "opt/src/b.txt"] {
        assert_eq!(fs::read(root.join(file)).unwrap(), fs::read(root_fresh.join(file)).unwrap(), "{file}");
    }
    assert_eq!(fs::read_to_string(root.join("opt/x")).unwrap(), "1\n");
    assert!(root.join("opt/work").is_dir());
}

/// The Dockerfile every variation below starts from (one change each).
const BASELINE: &str = "FROM ${base_image}
USER root
ARG V=1
COPY src/ /opt/src/
RUN echo \"$V\" > /opt/v
RUN [\"/bin/sh\", \"-c\", \"echo exec > /opt/e\"]
WORKDIR /opt/w
";

#[test]
fn each_key_component_changed_alone_is_a_miss_and_nothing_else_is() {
    let f = Fixture::new();
    let baseline = f.build(BASELINE, &[]);
    assert_eq!(baseline.count("step cache miss"), 4, "{}", baseline.log);
    let same = f.build(BASELINE, &[]);
    assert_eq!(same.count("step cache hit"), 4, "{}", same.log);
    let (copy, shell_run, exec_run, workdir) = ("src/ /opt/src/", "echo \"$V\"", "RUN [", "WORKDIR /opt/w");
    let with = |old: &str, new: &str| {
        assert!(BASELINE.contains(old));
        BASELINE.replacen(old, new, 1)
    };

    // Inputs outside the key: every step hits.
    fs::write(f.ctx.join("other.txt"), "changed, but no COPY reads it\n").unwrap();
    for (what, b) in [
        ("a context file COPY does not read", f.build(BASELINE, &[])),
        ("an undeclared build arg", f.build(BASELINE, &["--build-arg", "UNUSED=1"])),
        ("an undeclared proxy arg (as in Docker)", f.build(BASELINE, &["--build-arg", "HTTP_PROXY=http://proxy:3128"])),
        ("a LABEL before the RUN", f.build(&with("RUN echo", "LABEL a=b\nRUN echo"), &[])),
        ("the snapshot differ", f.build(BASELINE, &["--snapshot", "stat"])),
    ] {
        assert_eq!(b.count("step cache hit"), 4, "{what} must not change any key:\n{}", b.log);
        assert_eq!(b.digest.len(), 71);
    }

    // One component at a time: the step that reads it misses and says which component.
    let cases: Vec<(&str, Built, &str, &str)> = vec![
        ("instruction", f.build(&with("> /opt/v", ">> /opt/v"), &[]), shell_run, "the instruction"),
        ("declared build arg", f.build(BASELINE, &["--build-arg", "V=2"]), shell_run, "the build args in scope"),
        ("ENV", f.build(&with("RUN echo", "ENV E=1\nRUN echo"), &[]), shell_run, "ENV"),
        ("USER", f.build(&with("USER root", "USER 0"), &[]), shell_run, "USER"),
        ("WORKDIR", f.build(&with("RUN echo", "WORKDIR /tmp\nRUN echo"), &[]), shell_run, "WORKDIR"),
        ("SHELL", f.build(&with("RUN echo", "SHELL [\"/bin/sh\", \"-ec\"]\nRUN echo"), &[]), shell_run, "SHELL"),
        ("network", f.build(&with("RUN echo", "RUN --network=none echo"), &[]), shell_run, "--network"),
        ("ignored paths", f.build(BASELINE, &["--ignore-path", "/opt/ignored"]), shell_run, "the ignored paths"),
        ("compression", f.build(BASELINE, &["--compression-level", "6"]), copy, "the layer format"),
        ("WORKDIR's user", f.build(&with("WORKDIR /opt/w", "USER 1000\nWORKDIR /opt/w"), &[]), workdir, "USER"),
        ("COPY flags", f.build(&with("COPY src/", "COPY --chmod=0700 src/"), &[]), copy, "the instruction"),
    ];
    for (component, b, step, reason) in &cases {
        let line = b.step(step);
        assert!(line.contains("step cache miss") && line.contains(reason), "{component}: {line}\n{}", b.log);
    }
    // Steps before the change still hit.
    let (_, network, _, _) = &cases[6];
    assert!(network.hit(copy), "{}", network.log);
    // The exec form does not read SHELL: its RUN hits when SHELL changed but the shell-form
    // RUN before it made the same layer.
    let (_, shell, _, _) = &cases[5];
    assert!(shell.hit(exec_run), "{}", shell.log);
    // A changed layer changes the image every later step starts from.
    let (_, arg, _, _) = &cases[1];
    assert!(!arg.hit(workdir) && arg.step(workdir).contains("nothing cached on top of this image"), "{}", arg.log);

    // SOURCE_DATE_EPOCH changes the layers' times.
    let epoch = f.build_in(&f.path("cache"), BASELINE, &[], &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert!(epoch.step(copy).contains("the layer format"), "{}", epoch.log);

    // COPY sources: content and mode, each alone.
    fs::write(f.ctx.join("src/b.txt"), "B\n").unwrap();
    let content = f.build(BASELINE, &[]);
    assert!(content.step(copy).contains("the COPY/ADD source files"), "{}", content.log);
    fs::write(f.ctx.join("src/b.txt"), "b\n").unwrap();
    let restored = f.build(BASELINE, &[]);
    assert_eq!(restored.count("step cache hit"), 4, "the same content again hits:\n{}", restored.log);
    assert_eq!(restored.digest, baseline.digest);
    fs::set_permissions(f.ctx.join("src/a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let mode = f.build(BASELINE, &[]);
    assert!(mode.step(copy).contains("the COPY/ADD source files"), "{}", mode.log);
    fs::set_permissions(f.ctx.join("src/a.txt"), fs::Permissions::from_mode(0o644)).unwrap();
    write(&f.ctx.join("src/new.txt"), "a new file in a copied directory\n");
    let added = f.build(BASELINE, &[]);
    assert!(added.step(copy).contains("the COPY/ADD source files"), "{}", added.log);
    fs::remove_file(f.ctx.join("src/new.txt")).unwrap();

    // A hit after a miss made the rootfs goes onto that rootfs: the RUN after it reads it.
    let rootfs_first =
        f.build(&format!("{}RUN cat /opt/e /opt/v > /opt/ev\n", with("RUN echo", "RUN --network=none echo")), &[]);
    assert!(rootfs_first.hit(exec_run) && !rootfs_first.hit("/opt/ev"), "{}", rootfs_first.log);
    let (_g, root) = umoci_unpack(&rootfs_first.out, "latest");
    assert_eq!(fs::read_to_string(root.join("opt/ev")).unwrap(), "exec\n1\n");

    // Another base image: nothing continues from it.
    let other = f.path("other-base");
    let o = Command::new("cp").arg("-a").arg(&f.base).arg(&other).output().unwrap();
    assert!(o.status.success());
    append_raw_layer(&other, "latest", &raw_tar(&[RawEntry::File("extra.txt", b"x")]));
    let cache = f.path("cache");
    let mut cmd = Command::new(bin());
    let df = f.path("Dockerfile-other");
    write(&df, BASELINE);
    let o = cmd
        .args(["build", "--from", &format!("oci:{}", s(&other)), "-f", &s(&df), "--context", &s(&f.ctx)])
        .args(["--output", &format!("oci:{}", s(&f.path("out-other")))])
        .env("EXT_EXTEND_CACHE_DIR", &cache)
        .env_remove("EXT_EXTEND_NO_CACHE")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert_eq!(log.matches("nothing cached on top of this image").count(), 4, "{log}");
}

#[test]
fn entries_travel_between_cache_dirs_through_a_registry() {
    let f = Fixture::new();
    let reg = Registry::start();
    let repo = reg.url("cache/steps");
    let builder_a = f.build_in(&f.path("cache-a"), STAMPED, &["--cache-repo", &repo], &[]);
    assert_eq!(builder_a.count("step cache miss"), 5, "{}", builder_a.log);
    let tags: Vec<String> = reg
        .requests()
        .into_iter()
        .filter(|(m, uri, st)| m == "PUT" && uri.contains("/v2/cache/steps/manifests/") && *st == 201)
        .map(|(_, uri, _)| uri.rsplit('/').next().unwrap().to_string())
        .collect();
    assert_eq!(tags.len(), 5, "one entry per step, tagged by key: {tags:?}");
    assert!(tags.iter().all(|t| t.len() == 64), "{tags:?}");
    // An ordinary OCI artifact: skopeo reads it.
    let raw = reg.inspect(&format!("cache/steps:{}", tags[0]), &["--raw"]).unwrap();
    assert_eq!(raw["artifactType"], "application/vnd.ext-extend.step-cache.v1");

    // Another machine: its own, empty cache dir, the same repository.
    let builder_b = f.build_in(&f.path("cache-b"), STAMPED, &["--cache-repo", &repo], &[]);
    assert_eq!(
        builder_b.count("step cache hit (registry "),
        5,
        "every step from the registry, nothing ran:\n{}",
        builder_b.log
    );
    assert!(!builder_b.log.contains("sandbox+command") && !builder_b.log.contains("unpacked "), "{}", builder_b.log);
    assert_eq!(builder_b.digest, builder_a.digest, "byte-identical to the builder that ran the steps");
    assert_eq!(layout_files(&builder_b.out), layout_files(&builder_a.out));
    // ... and kept locally: next time without the registry.
    let local = f.build_in(&f.path("cache-b"), STAMPED, &[], &[]);
    assert_eq!(local.count("step cache hit (local"), 5, "{}", local.log);
    assert_eq!(local.digest, builder_a.digest);

    // Pushed to another repository of the registry, the layers from the cache are mounted, not
    // uploaded again.
    let before = reg.requests().len();
    let o = f.try_build_to(&f.path("cache-d"), STAMPED, &reg.url("apps/app:v1"), &["--cache-repo", &repo], &[]);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert_eq!(log.matches("step cache hit (registry ").count(), 5, "{log}");
    let requests = &reg.requests()[before..];
    let mounted: Vec<&String> = requests
        .iter()
        .filter(|(m, uri, st)| {
            m == "POST" && uri.contains("/v2/apps/app/blobs/uploads/?") && uri.contains("from=cache") && *st == 201
        })
        .map(|(_, uri, _)| uri)
        .collect();
    let new_layers: Vec<String> =
        layer_digests(&skopeo_inspect(&builder_a.out, "latest", &[]))[2..].iter().map(|d| d.to_string()).collect();
    assert_eq!(new_layers.len(), 4, "COPY, two RUNs and WORKDIR made layers");
    for d in &new_layers {
        let hex = d.trim_start_matches("sha256:");
        assert!(mounted.iter().any(|uri| uri.contains(hex)), "{d} mounted: {requests:?}");
        let uploaded =
            requests.iter().any(|(m, uri, _)| m == "PUT" && uri.contains("/v2/apps/app/blobs/") && uri.contains(hex));
        assert!(!uploaded, "{d} was uploaded: {requests:?}");
    }

    // Another artifact under an entry's tag (here: the base image) is a miss for that step
    // only; the registry stays in use for the others.
    reg.push_layout(&f.base, "latest", &format!("cache/steps:{}", tags[0]));
    let overwritten = f.build_in(&f.path("cache-e"), STAMPED, &["--cache-repo", &repo], &[]);
    assert_eq!(overwritten.count("is unusable"), 1, "{}", overwritten.log);
    assert_eq!(overwritten.count("step cache hit (registry "), 4, "{}", overwritten.log);
    assert_eq!(overwritten.digest, builder_a.digest, "the COPY ran again and made the same layer");

    // A registry that is down never fails a build: one warning, then the steps run.
    let down = format!("docker://127.0.0.1:{}/cache/steps", free_port());
    let b = f.build_in(
        &f.path("cache-c"),
        "FROM ${base_image}\nUSER root\nRUN echo hi > /hi\n",
        &["--cache-repo", &down],
        &[],
    );
    assert_eq!(b.count("unusable for this build"), 1, "{}", b.log);
    assert_eq!(b.count("step cache miss"), 1, "{}", b.log);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn ttl_size_bound_prune_and_bad_flags() {
    let f = Fixture::new();
    let cache = f.path("cache");
    let df = "FROM ${base_image}\nCOPY src/a.txt /a.txt\nWORKDIR /opt/w\n";
    f.build(df, &[]);
    // Entries older than the TTL are not used (a Go duration, as the lifecycle passes it).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let expired = f.build(df, &["--cache-ttl", "0h0m0s"]);
    assert_eq!(expired.count("expired"), 2, "{}", expired.log);
    let env_ttl = f.build_in(&cache, df, &[], &[("EXT_EXTEND_CACHE_TTL", "336h0m0s")]);
    assert_eq!(env_ttl.count("step cache hit"), 2, "{}", env_ttl.log);

    // `cache prune` keeps what is within the TTL and the size bound, then removes everything.
    let prune = |args: &[&str]| {
        let o = Command::new(bin())
            .args(["cache", "prune", "--cache-dir", &s(&cache)])
            .args(args)
            .env_remove("EXT_EXTEND_CACHE_TTL")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    assert!(prune(&[]).contains("removed 0 entries"), "within the TTL");
    let out = prune(&["--all"]);
    assert!(out.contains("removed 2 entries") && out.contains("kept 0 entries"), "{out}");
    assert_eq!(f.build(df, &[]).count("nothing cached on top of this image"), 2);

    // The size bound is enforced after each build: a 1-byte bound keeps nothing.
    let bounded = f.build(df, &["--cache-max-size", "1"]);
    assert!(bounded.log.contains("over its size bound"), "{}", bounded.log);
    assert_eq!(f.build(df, &[]).count("step cache miss"), 2, "the bound emptied the store");

    for (flag, value, message) in [
        ("--cache-ttl", "2 weeks", "expected a Go duration"),
        ("--cache-max-size", "lots", "expected bytes"),
        ("--cache-repo", "oci:/tmp/x", "expected docker://HOST[:PORT]/REPO"),
    ] {
        let o = f.try_build_in(&cache, df, &[flag, value], &[]);
        let log = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {log}");
        assert!(log.contains(message), "{log}");
    }
}

/// The cache format is tied to the bytes steps write (issue 18): a hit returns the layer an
/// earlier binary wrote for the same key, so whenever COPY, ADD or RUN start writing other
/// bytes for the same inputs, `FORMAT_VERSION` must be bumped or old entries keep giving the
/// old bytes. This pins the digests of a few such layers to the version: when it fails, bump
/// `ext_stepcache::key::FORMAT_VERSION` and record the new digests (the failure prints them)
/// in testdata/step-cache-golden.json.
#[test]
fn layer_bytes_are_pinned_to_the_cache_format_version() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    write(&ctx.join("a.txt"), "golden a\n");
    write(&ctx.join("dir/b.txt"), "golden b\n");
    // Modes set, not left to the umask: the digests must not depend on the machine.
    for (path, mode) in [("a.txt", 0o644), ("dir", 0o755), ("dir/b.txt", 0o600)] {
        fs::set_permissions(ctx.join(path), fs::Permissions::from_mode(mode)).unwrap();
    }
    std::os::unix::fs::symlink("b.txt", ctx.join("dir/link")).unwrap();
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [("arch/one", &b"1\n"[..]), ("arch/two", &b"22\n"[..])] {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(1_500_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        archive.append(&h, data).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &archive.into_inner().unwrap()).unwrap();
    fs::write(ctx.join("arch.tar.gz"), gz.finish().unwrap()).unwrap();
    let df = ctx.join("Dockerfile");
    write(
        &df,
        "FROM ${base_image}\n\
         COPY a.txt /golden/\n\
         COPY --chmod=0751 --chown=1:2 dir /golden/dir/\n\
         ADD arch.tar.gz /golden/add/\n\
         USER root\n\
         RUN mkdir -p /golden/run && echo golden > /golden/run/f && chmod 600 /golden/run/f && ln -s f /golden/run/l\n",
    );
    let out = t.path().join("out");
    let o = Command::new(bin())
        .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&df), "--context", &s(&ctx)])
        .args(["--output", &format!("oci:{}", s(&out))])
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        .env("EXT_EXTEND_NO_CACHE", "1")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let layers = layer_digests(&skopeo_inspect(&out, "latest", &[]));
    let steps = ["COPY a.txt", "COPY --chmod --chown dir", "ADD arch.tar.gz", "RUN"];
    let new = &layers[layers.len() - steps.len()..];
    let actual: BTreeMap<&str, &str> = steps.iter().copied().zip(new.iter().map(String::as_str)).collect();
    let golden_path = repo_root().join("testdata/step-cache-golden.json");
    let golden: serde_json::Value = serde_json::from_slice(&fs::read(&golden_path).unwrap()).unwrap();
    let printed = serde_json::to_string_pretty(
        &serde_json::json!({"format_version": ext_stepcache::key::FORMAT_VERSION, "layers": actual}),
    )
    .unwrap();
    assert_eq!(
        golden["format_version"],
        ext_stepcache::key::FORMAT_VERSION,
        "FORMAT_VERSION changed: record the digests for it in {}:\n{printed}",
        golden_path.display()
    );
    for (step, digest) in &actual {
        assert_eq!(
            golden["layers"][step].as_str(),
            Some(*digest),
            "the `{step}` layer's bytes changed for the same inputs: bump FORMAT_VERSION (crates/stepcache/src/key.rs) and record in {}:\n{printed}",
            golden_path.display()
        );
    }
}
