//! The Docker/BuildKit conformance table (`testdata/conformance/`, README there): every case is
//! built with the real binary in both snapshot modes and on the live root, the three results
//! must have the same manifest digest, and the tree `umoci unpack` makes of the result must match the case's
//! `expected` manifest (what changed against the base image, entry by entry).
//!
//! `CONFORMANCE_CASE=name` runs one case; `CONFORMANCE_BLESS=1` rewrites the `expected` files
//! from the results (review the diff: the expected trees are BuildKit's behaviour, checked by
//! hand and against Buildah, never just whatever ext-extend does).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::container::Container;
use common::*;

const MODES: [&str; 2] = ["overlay", "stat"];
/// Layers of the test image (make-run-image.sh).
const BASE_LAYERS: usize = 2;

fn cases_dir() -> PathBuf {
    repo_root().join("testdata/conformance")
}

/// One entry of an unpacked tree, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Files: size and the first 16 hex digits of the content's sha256; symlinks: the target.
    detail: String,
    nlink: u64,
}

impl Entry {
    fn line(&self, path: &str) -> String {
        let mut l = format!("{path} {} {:04o} {}:{}", self.kind, self.mode, self.uid, self.gid);
        if !self.detail.is_empty() {
            l.push(' ');
            l.push_str(&self.detail);
        }
        if self.kind == "file" && self.nlink > 1 {
            l.push_str(&format!(" links={}", self.nlink));
        }
        l
    }
}

fn scan(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in fs::read_dir(&dir).unwrap() {
            let p = item.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            // A directory's link count only says how many subdirectories it has.
            let nlink = if ft.is_dir() { 0 } else { md.nlink() };
            let (kind, detail) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", String::new())
            } else if ft.is_symlink() {
                ("symlink", format!("-> {}", fs::read_link(&p).unwrap().display()))
            } else if ft.is_file() {
                let data = fs::read(&p).unwrap();
                let hex = ext_oci::Digest::of(&data).hex().to_string();
                ("file", format!("{} sha256:{}", data.len(), &hex[..16]))
            } else {
                ("other", String::new())
            };
            let rel = format!("/{}", p.strip_prefix(root).unwrap().display());
            out.insert(rel, Entry { kind, mode: md.mode() & 0o7777, uid: md.uid(), gid: md.gid(), detail, nlink });
        }
    }
    out
}

/// What `after` changed against `before`: new or different entries, and deletions.
fn manifest(before: &BTreeMap<String, Entry>, after: &BTreeMap<String, Entry>) -> String {
    let mut lines = Vec::new();
    let mut paths: Vec<&String> = after.keys().chain(before.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        match (before.get(p), after.get(p)) {
            (Some(b), Some(a)) if b == a => {}
            (_, Some(a)) => lines.push(a.line(p)),
            (Some(_), None) => lines.push(format!("{p} deleted")),
            (None, None) => unreachable!(),
        }
    }
    lines.join("\n") + "\n"
}

struct Base {
    layout: PathBuf,
    tree: BTreeMap<String, Entry>,
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.layout);
    }
}

fn base(name: &str) -> Base {
    // Lower case: Buildah takes the layout's path as an image name.
    let layout = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("conformance-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&layout);
    make_run_image(&layout, "latest", false);
    let (_guard, rootfs) = umoci_unpack(&layout, "latest");
    let tree = scan(&rootfs);
    Base { layout, tree }
}

/// `umoci unpack` of `layout:latest`; Err(stderr) when umoci refuses the image.
fn unpack(layout: &Path) -> Result<(tempfile::TempDir, PathBuf), String> {
    require("umoci");
    let d = tempfile::tempdir().unwrap();
    let bundle = d.path().join("bundle");
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:latest", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok((d, bundle.join("rootfs")))
}

/// A copy of the case's context (git keeps neither hard links nor modes), then its setup.sh.
fn prepare_context(case: &Path, into: &Path) -> PathBuf {
    let ctx = into.join("context");
    fs::create_dir_all(&ctx).unwrap();
    if case.join("context").is_dir() {
        let ok = Command::new("cp").arg("-a").arg(case.join("context/.")).arg(&ctx).status().unwrap();
        assert!(ok.success());
    }
    if case.join("setup.sh").is_file() {
        let out = Command::new("sh").arg(case.join("setup.sh")).current_dir(&ctx).output().unwrap();
        assert!(out.status.success(), "{}: setup.sh failed: {}", case.display(), String::from_utf8_lossy(&out.stderr));
    }
    ctx
}

fn lines_of(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')).map(String::from).collect())
        .unwrap_or_default()
}

enum Outcome {
    Built { digest: String, layout: PathBuf },
    Failed { code: Option<i32>, stderr: String },
}

fn build(base: &Base, case: &Path, ctx: &Path, work: &Path, mode: &str) -> Outcome {
    let out = work.join(format!("out-{mode}"));
    let tmp = work.join(format!("tmp-{mode}"));
    fs::create_dir_all(&tmp).unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("build")
        .arg("--from")
        .arg(format!("oci:{}", s(&base.layout)))
        .arg("-f")
        .arg(case.join("Dockerfile"))
        .arg("--context")
        .arg(ctx)
        .arg("--output")
        .arg(format!("oci:{}", s(&out)))
        .arg("--snapshot")
        .arg(mode)
        .args(lines_of(&case.join("args")))
        .env("TMPDIR", &tmp)
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        .env("EXT_EXTEND_NO_CACHE", "1")
        .env_remove("SOURCE_DATE_EPOCH");
    run_build(cmd, case, out)
}

/// Runs a build of `case` (its `env` file added) that writes `layout`.
fn run_build(mut cmd: Command, case: &Path, layout: PathBuf) -> Outcome {
    for kv in lines_of(&case.join("env")) {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    if !o.status.success() {
        return Outcome::Failed { code: o.status.code(), stderr: String::from_utf8_lossy(&o.stderr).into_owned() };
    }
    let stdout = String::from_utf8(o.stdout).unwrap();
    Outcome::Built { digest: stdout.lines().last().unwrap_or("").to_string(), layout }
}

/// How the drop-in extender runs the case: inside a container of the base image (the
/// harness in tests/common/container.rs: pack's capabilities, seccomp and no_new_privs), with
/// `--live-root`, applying the Dockerfile to the container's own `/`. The base layout, the
/// context, the case and the output directory are volumes (mount points, which the live
/// differ leaves out of every layer).
fn build_live(base: &Base, case: &Path, ctx: &Path, work: &Path) -> Outcome {
    let (_bundle, rootfs) = umoci_unpack(&base.layout, "latest");
    fs::copy(bin(), rootfs.join("ext-extend")).unwrap();
    let out = work.join("out-live");
    let container = Container::new(&rootfs)
        .volume(&base.layout, "/base")
        .volume(ctx, "/ctx")
        .volume(case, "/case")
        .volume(&out, "/out");
    let mut cmd = container.command("/ext-extend");
    cmd.args(["build", "--live-root", "--from", "oci:/base:latest", "-f", "/case/Dockerfile", "--context", "/ctx"])
        .args(["--output", "oci:/out/layout"])
        .args(lines_of(&case.join("args")))
        .env("EXT_EXTEND_NO_CACHE", "1");
    run_build(cmd, case, out.join("layout"))
}

/// The tree `outcome` gives as the case's `expected` file writes it (or the error it ended
/// with); None, with a problem recorded, when there is nothing to compare.
fn observed(base: &Base, name: &str, outcome: &Outcome, expected: &str, problems: &mut Vec<String>) -> Option<String> {
    match outcome {
        Outcome::Built { layout, .. } => match unpack(layout) {
            Ok((_guard, rootfs)) => Some(manifest(&base.tree, &scan(&rootfs))),
            Err(e) => {
                problems.push(format!("{name}: umoci cannot unpack the result: {e}"));
                None
            }
        },
        Outcome::Failed { stderr, .. } => {
            let want = expected.lines().next().unwrap_or("").strip_prefix("error: ").unwrap_or("").to_string();
            Some(if !want.is_empty() && stderr.contains(&want) {
                expected.to_string()
            } else {
                format!("error: {}\n", stderr.lines().last().unwrap_or("").trim())
            })
        }
    }
}

/// Runs one case; returns its problems (empty when it passes).
fn run_case(base: &Base, case: &Path, bless: bool) -> Vec<String> {
    let name = case.file_name().unwrap().to_string_lossy().into_owned();
    let work = tempfile::tempdir().unwrap();
    let ctx = prepare_context(case, work.path());
    let expected_path = case.join("expected");
    let expected = fs::read_to_string(&expected_path).unwrap_or_default();
    let mut problems = Vec::new();
    let outcomes: Vec<Outcome> = MODES.iter().map(|m| build(base, case, &ctx, work.path(), m)).collect();
    let live = build_live(base, case, &ctx, work.path());
    match (&outcomes[0], &live) {
        (Outcome::Built { digest: a, .. }, Outcome::Built { digest: c, .. }) if a != c => {
            problems.push(format!("{name}: the live root gives another image than the overlay snapshot: {c} vs {a}"));
        }
        (Outcome::Built { .. }, Outcome::Failed { stderr, .. }) => {
            problems.push(format!("{name}: only the live root failed:\n{stderr}"));
        }
        (Outcome::Failed { .. }, Outcome::Built { .. }) => problems.push(format!("{name}: only the live root built")),
        _ => {}
    }
    // The live root's own tree is checked too (the digests could agree on a wrong image).
    if let Some(actual) = observed(base, &name, &live, &expected, &mut problems)
        && actual != expected
        && !bless
    {
        problems.push(format!("{name} (live root): tree differs:\n--- expected\n{expected}+++ actual\n{actual}"));
    }

    let actual = match (&outcomes[0], &outcomes[1]) {
        (Outcome::Built { digest: a, layout }, Outcome::Built { digest: b, .. }) => {
            if a != b {
                problems.push(format!("{name}: overlay and stat snapshots differ: {a} vs {b}"));
            }
            if let Some(want) = lines_of(&case.join("layers")).first() {
                let got = skopeo_inspect(layout, "latest", &[])["Layers"].as_array().unwrap().len() - BASE_LAYERS;
                if want.parse::<usize>().unwrap() != got {
                    problems.push(format!("{name}: {got} new layers, expected {want}"));
                }
            }
            match observed(base, &name, &outcomes[0], &expected, &mut problems) {
                Some(tree) => tree,
                None => return problems,
            }
        }
        (Outcome::Failed { code, .. }, Outcome::Failed { code: code2, .. }) => {
            if code != code2 {
                problems.push(format!("{name}: exit codes differ between modes: {code:?} vs {code2:?}"));
            }
            observed(base, &name, &outcomes[0], &expected, &mut problems).expect("a failure is always observed")
        }
        (a, b) => {
            for (mode, o) in MODES.iter().zip([a, b]) {
                if let Outcome::Failed { stderr, .. } = o {
                    problems.push(format!("{name}: only --snapshot {mode} failed:\n{stderr}"));
                }
            }
            return problems;
        }
    };
    if std::env::var("CONFORMANCE_BUILDAH").is_ok() {
        let theirs = buildah(base, case, &ctx, work.path());
        if theirs != actual {
            eprintln!("{name}: Buildah differs:\n--- ext-extend\n{actual}+++ buildah\n{theirs}");
        }
    }
    if actual != expected {
        if bless {
            fs::write(&expected_path, &actual).unwrap();
        } else {
            problems.push(format!(
                "{name}: tree differs from {}:\n--- expected\n{expected}+++ actual\n{actual}",
                expected_path.display()
            ));
        }
    }
    problems
}

/// The case built by Buildah (an independent builder), as a manifest or `error: ...`; only with
/// `CONFORMANCE_BUILDAH=1`, to find where we and Buildah disagree (README lists the known
/// Buildah deviations from BuildKit).
fn buildah(base: &Base, case: &Path, ctx: &Path, work: &Path) -> String {
    require("buildah");
    let store = work.join("buildah");
    let global = |c: &mut Command| {
        c.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"));
    };
    let mut bud = Command::new("buildah");
    global(&mut bud);
    bud.args(["bud", "--isolation", "chroot", "-q", "-t", "conformance"])
        .arg("--build-arg")
        .arg(format!("base_image=oci:{}:latest", s(&base.layout)))
        .arg("-f")
        .arg(case.join("Dockerfile"))
        .arg(ctx);
    for a in lines_of(&case.join("args")) {
        bud.arg(a);
    }
    for kv in lines_of(&case.join("env")) {
        let (k, v) = kv.split_once('=').unwrap();
        bud.env(k, v);
    }
    let o = bud.output().unwrap();
    if !o.status.success() {
        return format!("error: {}\n", String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").trim());
    }
    let out = work.join("out-buildah");
    let mut push = Command::new("buildah");
    global(&mut push);
    let o = push.args(["push", "-q", "conformance"]).arg(format!("oci:{}:latest", s(&out))).output().unwrap();
    assert!(o.status.success(), "buildah push: {}", String::from_utf8_lossy(&o.stderr));
    // Buildah's RUN leaves its mount points in the image; they say nothing about the case.
    const MOUNT_POINTS: &[&str] =
        &["/dev ", "/proc ", "/sys ", "/run ", "/etc/hostname ", "/etc/hosts ", "/etc/resolv.conf "];
    let r = match unpack(&out) {
        Ok((_guard, rootfs)) => manifest(&base.tree, &scan(&rootfs))
            .lines()
            .filter(|l| !MOUNT_POINTS.iter().any(|m| l.starts_with(m)))
            .map(|l| format!("{l}\n"))
            .collect(),
        Err(e) => format!("error: umoci: {e}\n"),
    };
    let _ = Command::new("buildah")
        .args(["--storage-driver", "vfs", "--root"])
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["rmi", "-a", "-f"])
        .output();
    r
}

fn cases() -> Vec<PathBuf> {
    let only = std::env::var("CONFORMANCE_CASE").ok();
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .filter(|p| only.as_deref().is_none_or(|o| p.file_name().unwrap() == o))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no conformance cases found in {}", cases_dir().display());
    cases
}

/// Buildah, an independent builder, gives the expected tree of every case where it agrees
/// with BuildKit (a case's `buildah-differs` file says why it does not).
#[test]
fn buildah_builds_the_same_trees() {
    let cases: Vec<PathBuf> = cases().into_iter().filter(|c| !c.join("buildah-differs").exists()).collect();
    let base = base("buildah");
    let mut problems = Vec::new();
    for case in &cases {
        let work = tempfile::tempdir().unwrap();
        let ctx = prepare_context(case, work.path());
        let expected = fs::read_to_string(case.join("expected")).unwrap_or_default();
        let theirs = buildah(&base, case, &ctx, work.path());
        let agrees = if expected.starts_with("error: ") { theirs.starts_with("error: ") } else { theirs == expected };
        if !agrees {
            let name = case.file_name().unwrap().to_string_lossy();
            problems.push(format!("{name}: Buildah built\n{theirs}expected\n{expected}"));
        }
    }
    assert!(problems.is_empty(), "{} of {} cases differ:\n\n{}", problems.len(), cases.len(), problems.join("\n"));
}

/// Every case in every executor: the overlay and stat snapshots of the scratch rootfs, and the
/// live root (the drop-in extender with `--live-root`, inside an unprivileged container of the
/// base image, as platforms run it). All three must give the same image digest, and the tree
/// the case expects.
#[test]
fn conformance_table_in_every_executor() {
    let bless = std::env::var("CONFORMANCE_BLESS").is_ok();
    let cases = cases();
    let base = base("base");
    let problems: Vec<String> = cases.iter().flat_map(|c| run_case(&base, c, bless)).collect();
    assert!(problems.is_empty(), "{} of {} cases failed:\n\n{}", problems.len(), cases.len(), problems.join("\n\n"));
}
