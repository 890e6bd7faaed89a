//! The RUN sandbox: a child process in new mount, PID, UTS and IPC namespaces (and a network
//! namespace for `--network=none`), with the image's root filesystem as its root.
//!
//! Process shape: we spawn a child whose pre-exec hook unshares the namespaces and forks once
//! more, so the command runs as PID 1 of the new PID namespace (when it exits, every process it
//! left behind dies with it). The middle process only waits and relays the exit status. Both
//! die with SIGKILL if their parent dies (`PR_SET_PDEATHSIG`, armed again in the command after
//! it changes its credentials, which clears it), and every mount (overlay, /proc, /dev,
//! resolv.conf, hosts) lives only in the child's private mount namespace, so nothing is left
//! mounted on the host whatever happens to ext-extend.
//!
//! Image content is untrusted, so the command gets what a default Docker container gets and no
//! more (as runc, crun and bubblewrap do it):
//! - the root filesystem is mounted `nosuid,nodev`: device nodes from layers stay in layers but
//!   cannot be opened, setuid/setgid bits and file capabilities grant nothing;
//! - `pivot_root` into it, with the old root unmounted: there is no host filesystem left in the
//!   namespace for a `chroot`/`fchdir` trick to climb back to;
//! - the capability bounding set is Docker's default set (no `CAP_SYS_ADMIN`, `CAP_SYS_MODULE`,
//!   `CAP_SYS_PTRACE`, `CAP_SYS_RAWIO`, ...) without `CAP_NET_RAW` on the host's network,
//!   ambient capabilities are cleared;
//! - `/proc` has runc's read-only ([`PROC_READ_ONLY`]) and masked ([`PROC_MASKED`]) paths, with
//!   or without a user namespace; `/sys` is not mounted;
//! - `no_new_privs` and a seccomp filter ([`crate::seccomp::SeccompProfile::docker_default`]:
//!   `mount`, `umount2`, `pivot_root`, `unshare`, `setns`, namespace flags to `clone`,
//!   `open_by_handle_at`, `kexec_*`, `bpf`, keyrings, modules, ... answer `EPERM`).
//! - where the kernel allows it, a user namespace over idmapped mounts ([`crate::userns`]):
//!   image root is then not host root at all.
//!
//! The setup is [`plan`]ned before `fork` as a list of [`crate::setup::Op`]s (C strings, the
//! mount option string, the seccomp programs), which the pre-exec hook carries out: between
//! `fork` and `exec` only async-signal-safe system calls are made, and the list itself is
//! unit-tested against a recorder.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::seccomp::SeccompProfile;
use crate::setup::{self, Op, ParentCheck};

/// Docker's default capabilities (moby `oci/caps/defaults.go`): the bounding set of a RUN.
pub const DEFAULT_CAPABILITIES: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// The overlay mount: lower layer directories (top first) plus the upper and work dirs, all
/// relative to `base`, which the child changes into so the option string stays short.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    pub base: PathBuf,
    /// Lower dirs relative to `base`, topmost first (overlayfs order).
    pub lowers: Vec<String>,
    pub upper: String,
    pub work: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// The host's network (package managers reach their mirrors).
    Host,
    /// A new network namespace with only a loopback interface (down).
    None,
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries; nothing is inherited from ext-extend's environment.
    pub env: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Absolute working directory inside the root; created (as root, 0755) if missing.
    pub workdir: String,
    pub network: Network,
    /// A script to place at [`SCRIPT_PATH`] (for `RUN <<EOF` with a `#!` line).
    pub script: Option<Vec<u8>>,
    /// A file (created or truncated) for the command's stdout and stderr, instead of our
    /// stderr (`-q`: the caller shows it only if the command fails).
    pub output: Option<PathBuf>,
    /// `RUN --mount`s: what appears where while the command runs (never in a layer).
    pub mounts: Vec<SandboxMount>,
}

/// One `RUN --mount` as the sandbox makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxMount {
    /// Absolute path in the image; missing directories (or, for a file source, the file) are
    /// made for the run and taken away after it.
    pub target: String,
    pub source: MountSource,
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A host directory bound at the target (a cache directory, a copy of context files).
    Dir(PathBuf),
    /// A host file or socket bound at the target (a secret, the SSH agent).
    File(PathBuf),
    /// A fresh tmpfs (`size` bytes at most).
    Tmpfs { size: Option<u64> },
}

impl MountSource {
    pub fn is_file(&self) -> bool {
        matches!(self, MountSource::File(_))
    }
}

/// Where a RUN's stdout and stderr go: the spec's output file, else our own stderr.
pub(crate) fn command_output(spec: &RunSpec) -> io::Result<std::os::fd::OwnedFd> {
    match &spec.output {
        Some(path) => Ok(std::fs::File::create(path)?.into()),
        None => std::os::fd::AsFd::as_fd(&io::stderr()).try_clone_to_owned(),
    }
}

/// Where a here-document script is placed inside the sandbox (on the /dev tmpfs, so it never
/// reaches a layer).
pub const SCRIPT_PATH: &str = "/dev/.ext-extend-run-script";

/// The filesystem side of a sandbox.
#[derive(Debug, Clone)]
pub struct SandboxFs {
    /// Directory that becomes `/`: the overlay mount point, or a plain directory.
    pub root: PathBuf,
    /// Mount an overlay on `root` first (otherwise `root` is used as it is).
    pub overlay: Option<OverlaySpec>,
    /// Files bind-mounted over `/etc/resolv.conf` and `/etc/hosts` (copies, so writes inside the
    /// sandbox never reach the host's files). The mount points must exist in the root.
    pub resolv_conf: Option<PathBuf>,
    pub hosts: Option<PathBuf>,
    /// Run in this user namespace, over idmapped mounts (see [`crate::userns`]), with the
    /// mount points for them under this (empty) directory.
    pub user_namespace: Option<(std::sync::Arc<crate::userns::UserNamespace>, PathBuf)>,
    /// The spec's mounts with their targets resolved in the root (relative, real directories
    /// only: the image's symlinks already followed inside it), mount points in place.
    pub mounts: Vec<(PathBuf, SandboxMount)>,
}

/// `/proc` paths a RUN may read but not write (runc's and Docker's defaults): a root without a
/// user namespace could otherwise set `kernel/core_pattern` (a host program run as root at the
/// next crash) or any other sysctl, or trigger `sysrq`.
pub const PROC_READ_ONLY: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];
/// `/proc` paths a RUN sees empty (Docker's default masked paths, `asound` included, which
/// runc's spec only makes read-only): kernel memory, keys, timers and hardware details.
pub const PROC_MASKED: &[&str] = &[
    "acpi",
    "asound",
    "interrupts",
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "scsi",
];

/// `CAP_NET_RAW`: kept only in a network namespace of the RUN's own.
const CAP_NET_RAW: u32 = 13;

/// Runs `spec` in a sandbox on `fs`. The command's stdout and stderr both go to our stderr
/// (stdout is reserved for results). Returns the command's exit status (128+N if killed by N).
pub fn run(fs: &SandboxFs, spec: &RunSpec) -> io::Result<ExitStatus> {
    let ops = plan(fs, spec)?;
    let mut cmd = Command::new(&spec.argv[0]);
    cmd.args(&spec.argv[1..]).env_clear();
    for kv in &spec.env {
        match kv.split_once('=') {
            Some((k, v)) => cmd.env(k, v),
            None => cmd.env(kv, ""),
        };
    }
    let out = command_output(spec)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::from(out.try_clone()?)).stderr(Stdio::from(out));
    // SAFETY: the hook only makes async-signal-safe system calls on the ops prepared above.
    unsafe {
        cmd.pre_exec(move || setup::execute(&ops, &mut setup::Kernel));
    }
    let mut child = cmd.spawn()?;
    let _guard = ext_oci::cleanup::register_process(child.id());
    child.wait()
}

fn cstr(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

/// The capabilities a RUN keeps: Docker's default set, without `CAP_NET_RAW` on the host's
/// network (raw and packet sockets there would let the command sniff and forge the host's
/// traffic; Docker keeps it because its containers have a network namespace of their own).
pub fn kept_capabilities(network: Network) -> Vec<u32> {
    DEFAULT_CAPABILITIES.iter().copied().filter(|&c| network == Network::None || c != CAP_NET_RAW).collect()
}

/// The setup of a RUN's process, in order (see [`crate::setup`]). Creates the (empty) mount
/// points of idmapped mounts; everything else happens in the child.
pub fn plan(fs: &SandboxFs, spec: &RunSpec) -> io::Result<Vec<Op>> {
    if spec.argv.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
    }
    let mut ns_flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if spec.network == Network::None {
        ns_flags |= libc::CLONE_NEWNET;
    }
    let confined = libc::MS_NOSUID | libc::MS_NODEV;
    let userns = fs.user_namespace.as_ref().map(|(ns, _)| ns.raw_fd());
    let mut ops = vec![Op::DieWithParent, Op::Unshare(ns_flags), Op::PrivateMounts, Op::ForkRelay, Op::DieWithParent];
    // Now PID 1 of the new PID namespace. With a user namespace, every directory the root is
    // made of is seen through an idmapped mount of it (mount points created here).
    let mut idmap = |src: &Path, name: &str| -> io::Result<PathBuf> {
        let (ns, dir) = fs.user_namespace.as_ref().expect("only with a user namespace");
        let dst = dir.join(name);
        std::fs::create_dir_all(&dst)?;
        ops.push(Op::MountIdmapped { source: cpath(src)?, target: cpath(&dst)?, userns: ns.raw_fd() });
        Ok(dst)
    };
    let rel = |base: &Path, p: &Path| -> String { p.strip_prefix(base).unwrap_or(p).to_string_lossy().into_owned() };
    let mut root = fs.root.clone();
    let mut root_mount = Vec::new();
    match &fs.overlay {
        Some(o) => {
            let (lowers, upper, work) = if userns.is_some() {
                let mut lowers = Vec::new();
                for (i, l) in o.lowers.iter().enumerate() {
                    lowers.push(rel(&o.base, &idmap(&o.base.join(l), &i.to_string())?));
                }
                // The upper and work dirs must be on one mount: their common parent's.
                let (upper, work) = (o.base.join(&o.upper), o.base.join(&o.work));
                let parent = upper.parent().filter(|p| Some(*p) == work.parent()).ok_or_else(|| {
                    io::Error::other("the overlay's upper and work dirs must share a parent directory")
                })?;
                let mapped = idmap(parent, "uw")?;
                let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                (lowers, rel(&o.base, &mapped.join(name(&upper))), rel(&o.base, &mapped.join(name(&work))))
            } else {
                (o.lowers.clone(), o.upper.clone(), o.work.clone())
            };
            let data =
                format!("lowerdir={},upperdir={upper},workdir={work}{}", lowers.join(":"), overlay_extra_options());
            if data.len() >= 4000 {
                return Err(io::Error::other(format!(
                    "too many layers for one overlay mount ({} lower directories)",
                    o.lowers.len()
                )));
            }
            // The option string names the layers relative to the base dir, to stay short.
            root_mount.push(Op::Chdir(cpath(&o.base)?));
            let (source, target, fstype, data) = (cstr("overlay")?, cpath(&root)?, cstr("overlay")?, cstr(data)?);
            root_mount.push(if userns.is_some() {
                // Over idmapped layers, overlayfs creates files with its mounter's ids.
                Op::MountAsNamespaceRoot { source, target, fstype, flags: confined, data }
            } else {
                Op::Mount { source, target, fstype, flags: confined, data: Some(data) }
            });
        }
        // The idmapped mount is the root's own mount, `nosuid,nodev` already.
        None if userns.is_some() => root = idmap(&fs.root, "root")?,
        // A mount of its own, for the flags and for pivot_root.
        None => root_mount.push(Op::Bind { source: cpath(&root)?, target: cpath(&root)?, flags: confined }),
    }
    ops.extend(root_mount);
    let r = |sub: &str| cpath(&root.join(sub));
    let proc_flags = confined | libc::MS_NOEXEC;
    ops.push(Op::Mount {
        source: cstr("proc")?,
        target: r("proc")?,
        fstype: cstr("proc")?,
        flags: proc_flags,
        data: None,
    });
    ops.push(Op::Mount {
        source: cstr("tmpfs")?,
        target: r("dev")?,
        fstype: cstr("tmpfs")?,
        flags: libc::MS_NOSUID,
        data: Some(cstr("mode=755,size=65536k")?),
    });
    for (n, maj, min) in
        [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
    {
        ops.push(Op::Mknod {
            path: r(&format!("dev/{n}"))?,
            mode: libc::S_IFCHR | 0o666,
            dev: libc::makedev(maj, min),
        });
    }
    for d in ["dev/pts", "dev/shm"] {
        ops.push(Op::Mkdir { path: r(d)?, mode: 0o755, exist_ok: false });
    }
    for (n, t) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        ops.push(Op::Symlink { target: cstr(t)?, link: r(&format!("dev/{n}"))? });
    }
    for p in PROC_READ_ONLY {
        ops.push(Op::ReadOnly { path: r(&format!("proc/{p}"))?, flags: proc_flags });
    }
    for p in PROC_MASKED {
        ops.push(Op::Mask { path: r(&format!("proc/{p}"))?, null: r("dev/null")? });
    }
    for (src, dst) in [(&fs.resolv_conf, "etc/resolv.conf"), (&fs.hosts, "etc/hosts")] {
        if let Some(src) = src {
            ops.push(Op::Bind { source: cpath(src)?, target: r(dst)?, flags: confined });
        }
    }
    // RUN --mounts last before pivot_root: their targets consist of real directories of the
    // root (resolved by the caller), so nothing outside it can be reached through them.
    for (rel, m) in &fs.mounts {
        let target = cpath(&root.join(rel))?;
        let ro = if m.readonly { libc::MS_RDONLY } else { 0 };
        match (&m.source, userns) {
            (MountSource::Dir(p) | MountSource::File(p), None) => {
                ops.push(Op::Bind { source: cpath(p)?, target, flags: confined | ro })
            }
            (MountSource::Dir(p) | MountSource::File(p), Some(ns)) => {
                // Seen through the namespace's idmapping, as the layers are (nosuid,nodev).
                ops.push(Op::MountIdmapped { source: cpath(p)?, target: target.clone(), userns: ns });
                if m.readonly {
                    ops.push(Op::ReadOnly { path: target, flags: confined });
                }
            }
            (MountSource::Tmpfs { size }, _) => {
                let mut data = String::from("mode=1777");
                if let Some(size) = size {
                    data.push_str(&format!(",size={size}"));
                }
                if userns.is_some() {
                    // Owned by the namespace's root, as an image root's tmpfs would be.
                    let id = crate::userns::HOST_BASE;
                    data.push_str(&format!(",uid={id},gid={id}"));
                }
                ops.push(Op::Mount {
                    source: cstr("tmpfs")?,
                    target,
                    fstype: cstr("tmpfs")?,
                    flags: confined | ro,
                    data: Some(cstr(data)?),
                });
            }
        }
    }
    if let Some(s) = &spec.script {
        ops.push(Op::WriteFile { path: r(SCRIPT_PATH.trim_start_matches('/'))?, content: s.clone(), mode: 0o755 });
    }
    ops.push(Op::PivotRoot(cpath(&root)?));
    ops.push(Op::SetHostname(b"ext-extend"));
    if let Some(fd) = userns {
        // From here on, image root is the namespace's root, nobody on the host. The mount
        // namespace stays owned by the host's: nothing can be mounted or unmounted in it.
        ops.push(Op::EnterUserNamespace(fd));
    }
    let mut acc = String::new();
    for c in spec.workdir.split('/').filter(|c| !c.is_empty()) {
        acc.push('/');
        acc.push_str(c);
        ops.push(Op::Mkdir { path: cstr(&acc)?, mode: 0o755, exist_ok: true });
    }
    let last_cap: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(63);
    let kept = kept_capabilities(spec.network);
    // Needs CAP_SETPCAP, so before the user changes.
    ops.push(Op::DropBoundingCaps((0..=last_cap).filter(|c| !kept.contains(c)).map(libc::c_ulong::from).collect()));
    ops.push(Op::ClearAmbientCaps);
    ops.push(Op::SetGroups(spec.groups.clone()));
    ops.push(Op::SetGid(spec.gid));
    ops.push(Op::SetUid(spec.uid));
    // Changing credentials cleared the parent-death signal: arm it again, then make sure the
    // relaying parent did not die before that (the signal would then never come).
    ops.push(Op::DieWithParent);
    ops.push(Op::CheckParentAlive(ParentCheck::RelayPipe));
    ops.push(Op::Chdir(cstr(if spec.workdir.is_empty() { "/" } else { &spec.workdir })?));
    // Last: it sets no_new_privs and refuses what the steps above needed.
    ops.push(Op::Seccomp(SeccompProfile::docker_default()));
    Ok(ops)
}

/// Options that keep the upper directory a plain, self-contained diff: no metadata-only
/// copy-up (file data would stay in a lower layer) and no redirects for renamed directories.
pub(crate) fn overlay_extra_options() -> &'static str {
    static OPTS: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    OPTS.get_or_init(|| {
        let supports = |name: &str| Path::new("/sys/module/overlay/parameters").join(name).exists();
        match (supports("redirect_dir"), supports("metacopy")) {
            (true, true) => ",redirect_dir=off,metacopy=off",
            (true, false) => ",redirect_dir=off",
            (false, true) => ",metacopy=off",
            (false, false) => "",
        }
    })
}

/// Whether an overlay mount works here (root, kernel support, a scratch filesystem that can
/// hold an upper dir): tried once in a throwaway mount namespace.
pub fn overlay_supported(scratch: &Path) -> bool {
    let probe = scratch.join(".overlay-probe");
    let dirs = ["l", "u", "w", "m"].map(|d| probe.join(d));
    if dirs.iter().any(|d| std::fs::create_dir_all(d).is_err()) {
        return false;
    }
    let result = (|| -> io::Result<()> {
        let data = cstr(format!("lowerdir=l,upperdir=u,workdir=w{}", overlay_extra_options()))?;
        setup::try_in_child(&[
            Op::Unshare(libc::CLONE_NEWNS),
            Op::PrivateMounts,
            Op::Chdir(cpath(&probe)?),
            Op::Mount {
                source: cstr("overlay")?,
                target: cpath(&dirs[3])?,
                fstype: cstr("overlay")?,
                flags: 0,
                data: Some(data),
            },
        ])
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::setup::{Recorder, execute};

    fn spec(network: Network) -> RunSpec {
        RunSpec {
            argv: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec![],
            uid: 1000,
            gid: 1000,
            groups: vec![1000, 27],
            workdir: "/work/dir".into(),
            network,
            script: Some(b"#!/bin/sh\n".to_vec()),
            output: None,
            mounts: Vec::new(),
        }
    }

    /// The calls a plan makes, with `/proc` as a kernel of today has it.
    fn record(fs: &SandboxFs, spec: &RunSpec, root: &Path) -> Vec<String> {
        let ops = plan(fs, spec).unwrap();
        let p = |n: &str| root.join("proc").join(n).to_string_lossy().into_owned();
        let mut rec = Recorder {
            dirs: ["sys", "fs", "bus", "irq", "acpi", "scsi", "asound"].map(p).to_vec(),
            files: ["sysrq-trigger", "kcore", "keys", "timer_list", "sched_debug", "interrupts"].map(p).to_vec(),
            ..Default::default()
        };
        execute(&ops, &mut rec).unwrap();
        rec.calls
    }

    fn position(calls: &[String], prefix: &str) -> usize {
        calls.iter().position(|c| c.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {calls:#?}"))
    }

    /// Checks what every plan must do, whatever the root is made of.
    fn check_invariants(calls: &[String], root: &Path, network: Network) {
        let r = root.display().to_string();
        let pivot = position(calls, "pivot_root");
        // Namespaces and a private mount tree before any mount; the fork into PID 1 before
        // the mounts, so /proc is the new PID namespace's.
        assert!(position(calls, "unshare") < position(calls, "mount none / - rec,private"));
        let fork = position(calls, "fork");
        for (i, c) in calls.iter().enumerate() {
            if c.starts_with("mount") && !c.starts_with("mount none / ") {
                assert!(i > fork && i < pivot, "mount outside the window: {c}");
                let bind_only = c.ends_with(" - bind");
                // The /dev tmpfs holds the devices, and so is a /dev/null bound over a masked file.
                let dev = c.starts_with(&format!("mount tmpfs {r}/dev "))
                    || calls[i - 1].starts_with(&format!("mount {r}/dev/null "));
                if !bind_only {
                    assert!(c.contains("nosuid"), "{c}");
                    assert!(dev || c.contains("nodev"), "{c}");
                }
            }
        }
        // Every bind is made safe by the remount right after it.
        for (i, c) in calls.iter().enumerate().filter(|(_, c)| c.ends_with(" - bind")) {
            let target = c.split(' ').nth(2).unwrap();
            assert!(calls[i + 1].starts_with(&format!("mount none {target} - ")), "{c} then {}", calls[i + 1]);
            assert!(calls[i + 1].contains("remount,bind") && calls[i + 1].contains("nosuid"), "{}", calls[i + 1]);
        }
        // /proc: mounted noexec, then sysctls and sysrq read-only, kernel memory and keys masked.
        let proc = position(calls, &format!("mount proc {r}/proc proc nosuid,nodev,noexec"));
        for p in ["sys", "sysrq-trigger", "fs", "bus", "irq"] {
            let i = position(calls, &format!("mount none {r}/proc/{p} - ro,nosuid,nodev,noexec,remount,bind"));
            assert!(proc < i && i < pivot);
        }
        for p in ["kcore", "keys", "timer_list", "sched_debug", "interrupts"] {
            let i = position(calls, &format!("mount {r}/dev/null {r}/proc/{p} - bind"));
            assert!(position(calls, &format!("mknod {r}/dev/null")) < i, "/dev/null exists before it is used");
        }
        for p in ["acpi", "scsi", "asound"] {
            position(calls, &format!("mount tmpfs {r}/proc/{p} tmpfs ro,nosuid,nodev,noexec"));
        }
        assert!(!calls.iter().any(|c| c.contains("/sys ") && c.starts_with("mount") && !c.contains("/proc/sys")));
        // pivot_root leaves nothing of the old root.
        assert_eq!(calls[pivot + 1], "umount .");
        // Capabilities go while we are still root; then groups, gid, uid in that order; the
        // death signal is armed again after the uid changed; seccomp is the very last step.
        let drops: Vec<u32> =
            calls.iter().filter_map(|c| c.strip_prefix("capbset_drop ").map(|n| n.parse().unwrap())).collect();
        assert!(drops.contains(&21) && drops.contains(&16) && drops.contains(&19), "SYS_ADMIN, SYS_MODULE, SYS_PTRACE");
        assert_eq!(drops.contains(&13), network == Network::Host, "CAP_NET_RAW only in a network namespace of its own");
        for c in DEFAULT_CAPABILITIES.iter().filter(|&&c| c != 13) {
            assert!(!drops.contains(c), "kept: {c}");
        }
        let last_drop = calls.iter().rposition(|c| c.starts_with("capbset_drop")).unwrap();
        let (groups, gid, uid) =
            (position(calls, "setgroups [1000, 27]"), position(calls, "setgid 1000"), position(calls, "setuid 1000"));
        assert!(pivot < last_drop && last_drop < groups && groups < gid && gid < uid);
        let rearm = calls.iter().rposition(|c| c == "pdeathsig 9").unwrap();
        assert!(uid < rearm && rearm < position(calls, "parent_alive RelayPipe"));
        assert_eq!(calls.last().map(String::as_str), Some("seccomp"));
        assert_eq!(calls[calls.len() - 2], "chdir /work/dir");
    }

    #[test]
    fn the_overlay_sandbox_is_set_up_in_a_safe_order() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let fs = SandboxFs {
            root: root.clone(),
            overlay: Some(OverlaySpec {
                base: t.path().to_path_buf(),
                lowers: vec!["l/1".into(), "l/0".into()],
                upper: "r/uw/u".into(),
                work: "r/uw/w".into(),
            }),
            resolv_conf: Some(t.path().join("resolv.conf")),
            hosts: None,
            user_namespace: None,
            mounts: Vec::new(),
        };
        for network in [Network::Host, Network::None] {
            let calls = record(&fs, &spec(network), &root);
            check_invariants(&calls, &root, network);
            let overlay = position(&calls, "mount overlay");
            assert!(calls[overlay].ends_with(&format!(
                "overlay nosuid,nodev lowerdir=l/1:l/0,upperdir=r/uw/u,workdir=r/uw/w{}",
                overlay_extra_options()
            )));
            assert_eq!(calls[overlay - 1], format!("chdir {}", t.path().display()));
            assert!(overlay < position(&calls, "mount proc"));
            let unshare = if network == Network::None { "unshare 0x6c020000" } else { "unshare 0x2c020000" };
            position(&calls, unshare);
            assert!(!calls.iter().any(|c| c.starts_with("setns")), "no user namespace asked for");
            position(&calls, &format!("write {}/dev/.ext-extend-run-script 755", root.display()));
        }
    }

    #[test]
    fn with_a_user_namespace_every_layer_is_idmapped_and_the_namespace_entered_after_pivot_root() {
        let t = tempfile::tempdir().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let ns = std::sync::Arc::new(crate::userns::UserNamespace::stand_in(null.into()));
        let idmapped = t.path().join("i");
        // The flat root (stat snapshots): the idmapped mount is the root.
        let fs = SandboxFs {
            root: t.path().join("rootfs"),
            overlay: None,
            resolv_conf: None,
            hosts: None,
            user_namespace: Some((ns.clone(), idmapped.clone())),
            mounts: Vec::new(),
        };
        let root = idmapped.join("root");
        let calls = record(&fs, &spec(Network::Host), &root);
        check_invariants(&calls, &root, Network::Host);
        let i = position(
            &calls,
            &format!("mount_idmapped {} {} nosuid,nodev", t.path().join("rootfs").display(), root.display()),
        );
        assert!(i > position(&calls, "fork"));
        let enter = position(&calls, "setns user");
        assert_eq!(calls[enter + 1], "setresid 0:0");
        assert!(position(&calls, "pivot_root") < enter && enter < position(&calls, "capbset_drop"));
        // The overlay: each lower and the upper/work parent idmapped, the overlay mounted with
        // the namespace root's fs ids.
        let fs = SandboxFs {
            root: t.path().join("merged"),
            overlay: Some(OverlaySpec {
                base: t.path().to_path_buf(),
                lowers: vec!["l/1".into(), "l/0".into()],
                upper: "r/uw/u".into(),
                work: "r/uw/w".into(),
            }),
            resolv_conf: None,
            hosts: None,
            user_namespace: Some((ns, idmapped.clone())),
            mounts: Vec::new(),
        };
        let root = t.path().join("merged");
        let calls = record(&fs, &spec(Network::Host), &root);
        check_invariants(&calls, &root, Network::Host);
        assert_eq!(calls.iter().filter(|c| c.starts_with("mount_idmapped")).count(), 3);
        let fsids = position(&calls, "fsids namespace-root");
        assert!(calls[fsids + 1].contains("lowerdir=i/0:i/1,upperdir=i/uw/u,workdir=i/uw/w"), "{}", calls[fsids + 1]);
    }
}
