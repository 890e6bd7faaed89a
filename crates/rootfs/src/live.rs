//! The live-root executor: RUN applied in place to the filesystem ext-extend runs on.
//!
//! CNB platforms (pack, kpack, Tekton) start the extender inside a container *of the image
//! being extended*, as root but unprivileged: Docker's default capabilities and seccomp
//! profile refuse `unshare`, `mount`, `pivot_root` and `setns`, so no sandbox of our own can be
//! built there. The container's `/` already is the base image (plus the platform's volumes),
//! so, like the lifecycle's Kaniko, we change it in place:
//! - COPY/ADD layers are also unpacked onto `/` (with the same safe unpacker as the scratch
//!   rootfs), so later RUNs and the build phase see them;
//! - RUN is a plain child process with the Dockerfile's user, groups, environment and working
//!   directory: no namespaces, mounts or chroot (the container is the sandbox);
//! - changes are found with the stat-index differ over `/`, skipping every mount point (the
//!   platform's volumes, `/proc`, `/sys`, `/dev`, the files a runtime bind-mounts such as
//!   `/etc/resolv.conf`), `/var/run` like the lifecycle, and the paths the caller names
//!   (`<app>`, `<layers>`, `<platform>`, `<kaniko-dir>`, `/cnb`, our scratch and cache).
//!
//! The cost per RUN is one stat walk of the image after the command (the walk after one RUN
//! is the "before" of the next); no file contents are read except those of changed files.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::diff::{IgnoreSet, StatIndex};
use crate::error::RootfsError;
use crate::rootfs::RunOutcome;
use crate::run_root::RunRoot;
use crate::sandbox::{Network, RunSpec};
use crate::setup::{self, Op, ParentCheck};
use crate::unpack::{UnpackOptions, UnpackStats, WhiteoutMode, unpack_layer};

/// Paths of a container that never belong to the image: kernel filesystems, files container
/// runtimes bind-mount, and `/var/run` (the lifecycle ignores it: sockets are mounted there).
pub const CONTAINER_IGNORED: &[&str] =
    &["proc", "sys", "dev", "etc/resolv.conf", "etc/hosts", "etc/hostname", "var/run", ".dockerenv"];

/// Why we believe we run inside a container, or `None`.
pub fn container_evidence() -> Option<String> {
    container_evidence_in(Path::new("/"), std::env::var_os("container").is_some(), kubernetes_env())
}

fn kubernetes_env() -> bool {
    std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

fn container_evidence_in(root: &Path, container_env: bool, kubernetes: bool) -> Option<String> {
    for marker in [".dockerenv", "run/.containerenv"] {
        if root.join(marker).exists() {
            return Some(format!("/{marker} exists"));
        }
    }
    if container_env {
        return Some("the `container` environment variable is set".into());
    }
    if kubernetes {
        return Some("KUBERNETES_SERVICE_HOST is set (a Kubernetes pod)".into());
    }
    let cgroup = fs::read_to_string(root.join("proc/1/cgroup")).unwrap_or_default();
    for hint in ["docker", "kubepods", "containerd", "libpod", "lxc", "buildkit"] {
        if cgroup.contains(hint) {
            return Some(format!("/proc/1/cgroup mentions {hint}"));
        }
    }
    None
}

/// Mount points below `/` from a `mountinfo` text (field 5, octal escapes decoded), as image
/// paths without the leading `/`. The root mount itself is left out.
pub fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(|p| p.trim_start_matches('/').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container's own filesystem as the RUN root.
#[derive(Debug)]
pub struct LiveRoot {
    root: PathBuf,
    ignore: IgnoreSet,
    /// The stat index of the tree as it is now (after the last RUN), if still valid.
    index: Option<StatIndex>,
    /// Private directory for here-document scripts (must be in `ignore`).
    scratch: PathBuf,
    layers_added: usize,
    runs: usize,
}

impl LiveRoot {
    /// Uses `root` (`/` in production) as it is. `ignore` lists image paths whose changes
    /// never go into a layer, on top of [`CONTAINER_IGNORED`] and every mount point in
    /// `/proc/self/mountinfo`; `scratch` is a private directory for scripts, ignored too.
    pub fn open(root: &Path, ignore: &[String], scratch: &Path) -> Result<LiveRoot, RootfsError> {
        let mut set = IgnoreSet::new(ignore);
        for p in CONTAINER_IGNORED {
            set.add(p);
        }
        if root == Path::new("/") {
            let info = fs::read_to_string("/proc/self/mountinfo").map_err(RootfsError::io("/proc/self/mountinfo"))?;
            for p in mount_points(&info) {
                set.add(&p);
            }
        }
        let scratch_dir = scratch.join("live");
        fs::create_dir_all(&scratch_dir).map_err(RootfsError::io(&scratch_dir))?;
        // Scripts run as the image user: the directory must be reachable by anyone.
        for dir in [scratch, scratch_dir.as_path()] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).map_err(RootfsError::io(dir))?;
        }
        if let Some(rel) = in_root(root, scratch) {
            set.add(&rel);
        }
        Ok(LiveRoot {
            root: root.to_path_buf(),
            ignore: set,
            index: None,
            scratch: scratch_dir,
            layers_added: 0,
            runs: 0,
        })
    }

    pub fn ignored(&self) -> &IgnoreSet {
        &self.ignore
    }

    /// `mkdir -p` of the working directory. On `/` nothing is outside the root, so symlinks
    /// are followed as the command would; on any other root (tests), never out of it.
    fn make_workdir(&self, workdir: &str) -> Result<PathBuf, RootfsError> {
        let rel = Path::new(workdir.trim_start_matches('/'));
        if self.root == Path::new("/") {
            let dir = self.root.join(rel);
            fs::create_dir_all(&dir).map_err(RootfsError::io(&dir))?;
            return Ok(dir);
        }
        let walked = crate::safe_path::resolve_dir_rel(&self.root, rel, true, None)
            .map_err(|e| RootfsError::Unsupported(format!("WORKDIR {workdir}: {e}")))?;
        Ok(self.root.join(walked.rel))
    }

    fn index(&mut self) -> Result<StatIndex, RootfsError> {
        match self.index.take() {
            Some(i) => Ok(i),
            None => StatIndex::build(&self.root, &self.ignore).map_err(RootfsError::io(&self.root)),
        }
    }
}

/// `path` relative to `root`, if it is inside it.
fn in_root(root: &Path, path: &Path) -> Option<String> {
    let abs = if path.is_absolute() { path.to_path_buf() } else { std::env::current_dir().ok()?.join(path) };
    abs.strip_prefix(root).ok().map(|r| r.to_string_lossy().into_owned())
}

impl RunRoot for LiveRoot {
    fn add_layer(&mut self, tar: &mut dyn Read, name: &str) -> Result<UnpackStats, RootfsError> {
        self.layers_added += 1;
        // The index no longer describes the tree; the next RUN walks it again.
        self.index = None;
        let opts = UnpackOptions { whiteouts: WhiteoutMode::Apply, layer_name: name.to_string(), filter: None };
        let stats = unpack_layer(&self.root, &mut *tar, &opts).map_err(Box::new)?;
        io::copy(tar, &mut io::sink()).map_err(|e| RootfsError::Io { path: PathBuf::from(name), source: e })?;
        Ok(stats)
    }

    fn read_file(&self, rel: &str) -> Option<Vec<u8>> {
        let p = crate::resolve_in_root(&self.root, Path::new(rel)).ok()?;
        fs::read(p).ok()
    }

    fn run(&mut self, spec: &RunSpec) -> Result<RunOutcome, RootfsError> {
        self.runs += 1;
        let spawn_err = |source| RootfsError::Spawn { program: spec.argv[0].clone(), source };
        if let Some(m) = spec.mounts.first() {
            // No mount(2) in a default container; faking a mount by moving files in and out of
            // the image would put them at risk if the run were killed midway.
            return Err(RootfsError::MountTarget {
                target: m.target.clone(),
                message: "RUN --mount needs the sandbox executor; the live root (the container's own `/`, \
                          where a default container cannot mount anything) cannot make it"
                    .into(),
            });
        }
        if spec.network == Network::None {
            // Without a network namespace of our own, the container's network is all there is.
            tracing::warn!(
                "RUN --network=none: the live root has no network namespace of its own; the command shares the container's network"
            );
        }
        let before = self.index()?;
        let mut argv = spec.argv.clone();
        let mut script_file = None;
        if let Some(body) = &spec.script {
            let path = self.scratch.join(format!("run-script-{}", self.runs));
            fs::write(&path, body).map_err(RootfsError::io(&path))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(RootfsError::io(&path))?;
            argv = vec![path.display().to_string()];
            script_file = Some(path);
        }
        let workdir = self.make_workdir(&spec.workdir)?;
        let started = Instant::now();
        let status = spawn_as(&argv, spec, &workdir).map_err(spawn_err)?;
        let command_time = started.elapsed();
        if let Some(p) = script_file {
            let _ = fs::remove_file(p);
        }
        if !status.success() {
            return Ok(RunOutcome { status, snapshot: None, command_time, diff_time: Duration::ZERO });
        }
        let started = Instant::now();
        let after = StatIndex::build(&self.root, &self.ignore).map_err(RootfsError::io(&self.root))?;
        let snapshot = before.diff(&after, &self.root);
        self.index = Some(after);
        Ok(RunOutcome { status, snapshot: Some(snapshot), command_time, diff_time: started.elapsed() })
    }

    fn layers_added(&self) -> usize {
        self.layers_added
    }

    fn snapshot_kind(&self) -> &'static str {
        "live root, stat-index snapshots"
    }

    fn finish(self: Box<Self>) {
        // The root is the container's own filesystem: it stays as the Dockerfiles left it
        // (the build phase runs on it next). Only our script directory goes.
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

/// Runs `argv` as a plain child process with the spec's credentials, environment and working
/// directory; stdout and stderr go to our stderr. Credentials change only when they differ
/// from ours, so a non-root extender can still RUN as its own user.
fn spawn_as(argv: &[String], spec: &RunSpec, workdir: &Path) -> io::Result<std::process::ExitStatus> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]).env_clear().current_dir(workdir).process_group(0);
    for kv in &spec.env {
        match kv.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(kv, ""),
        };
    }
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let change_ids = spec.uid != euid || spec.gid != egid || euid == 0;
    let (uid, gid, groups) = (spec.uid, spec.gid, spec.groups.clone());
    let out = crate::sandbox::command_output(spec)?;
    // stdin is a pipe closed at once (EOF), not /dev/null: a container's /dev is the runtime's,
    // and a root without one must not make RUN fail as if the program were missing.
    cmd.stdin(Stdio::piped()).stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
    // SAFETY (parent side): getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // A credential change clears PR_SET_PDEATHSIG, so the death signal is armed after it, then
    // we check that the parent did not die before it was armed.
    let mut ops = Vec::new();
    if change_ids {
        ops.extend([Op::SetGroups(groups), Op::SetGid(gid), Op::SetUid(uid)]);
    }
    ops.extend([Op::DieWithParent, Op::CheckParentAlive(ParentCheck::Pid(parent))]);
    // SAFETY: the hook makes async-signal-safe system calls only, on ops prepared before fork.
    unsafe {
        cmd.pre_exec(move || setup::execute(&ops, &mut setup::Kernel));
    }
    let mut child = cmd.spawn()?;
    drop(child.stdin.take());
    // The command leads its own process group: an interrupt kills everything it started.
    let _guard = ext_oci::cleanup::register_process_group(child.id());
    child.wait()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_and_escapes() {
        let info = "22 1 0:21 / / rw,relatime - overlay overlay rw\n\
                    23 22 0:22 / /proc rw - proc proc rw\n\
                    30 22 8:1 /vols/ws /workspace rw - ext4 /dev/sda1 rw\n\
                    31 22 8:1 /x /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
                    32 22 8:1 /y /with\\040space rw - ext4 /dev/sda1 rw\n";
        assert_eq!(mount_points(info), vec!["proc", "workspace", "etc/resolv.conf", "with space"]);
    }

    #[test]
    fn container_markers() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(container_evidence_in(d.path(), false, false), None);
        assert!(container_evidence_in(d.path(), true, false).is_some());
        assert!(container_evidence_in(d.path(), false, true).is_some());
        fs::create_dir_all(d.path().join("proc/1")).unwrap();
        fs::write(d.path().join("proc/1/cgroup"), "0::/\n").unwrap();
        assert_eq!(container_evidence_in(d.path(), false, false), None, "cgroup v2 on a host says nothing");
        fs::write(d.path().join("proc/1/cgroup"), "12:memory:/docker/0123abc\n").unwrap();
        assert!(container_evidence_in(d.path(), false, false).unwrap().contains("docker"));
        fs::write(d.path().join(".dockerenv"), "").unwrap();
        assert_eq!(container_evidence_in(d.path(), false, false).as_deref(), Some("/.dockerenv exists"));
    }
}
