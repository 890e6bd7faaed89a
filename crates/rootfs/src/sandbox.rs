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
//!   `CAP_SYS_PTRACE`, `CAP_SYS_RAWIO`, ...), ambient capabilities are cleared;
//! - `no_new_privs` and a seccomp filter ([`crate::seccomp::SeccompProfile::docker_default`]:
//!   `mount`, `umount2`, `pivot_root`, `unshare`, `setns`, namespace flags to `clone`,
//!   `open_by_handle_at`, `kexec_*`, `bpf`, keyrings, modules, ... answer `EPERM`).
//! - where the kernel allows it, a user namespace over idmapped mounts ([`crate::userns`]):
//!   image root is then not host root at all.
//!
//! Everything the pre-exec hook needs is prepared before `fork` (C strings, the mount option
//! string, the seccomp programs): between `fork` and `exec` only async-signal-safe system calls
//! are made.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use crate::seccomp::SeccompProfile;

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
}

/// Runs `spec` in a sandbox on `fs`. The command's stdout and stderr both go to our stderr
/// (stdout is reserved for results). Returns the command's exit status (128+N if killed by N).
pub fn run(fs: &SandboxFs, spec: &RunSpec) -> io::Result<ExitStatus> {
    let prepared = Prepared::new(fs, spec)?;
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
    // SAFETY: the hook only makes async-signal-safe system calls on data prepared above.
    unsafe {
        cmd.pre_exec(move || prepared.enter());
    }
    let mut child = cmd.spawn()?;
    let _guard = ext_oci::cleanup::register_process(child.id());
    child.wait()
}

/// C strings and flags for the pre-exec hook, built before fork.
struct Prepared {
    ns_flags: libc::c_int,
    overlay: Option<(CString, CString)>, // (base dir, mount data)
    /// The user namespace to enter, and the idmapped mounts (source, mount point) to make.
    userns: Option<libc::c_int>,
    idmaps: Vec<(CString, CString)>,
    root: CString,
    proc_dir: CString,
    dev_dir: CString,
    devices: Vec<(CString, libc::mode_t, libc::dev_t)>,
    dev_links: Vec<(CString, CString)>,
    dev_dirs: Vec<CString>,
    binds: Vec<(CString, CString)>,
    workdir_parts: Vec<CString>,
    workdir: CString,
    hostname: &'static [u8],
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    script: Option<(CString, Vec<u8>)>,
    /// Capabilities to drop from the bounding set (all but [`DEFAULT_CAPABILITIES`]).
    drop_caps: Vec<libc::c_ulong>,
    seccomp: SeccompProfile,
}

fn cstr(p: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(p.as_ref()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cpath(p: &Path) -> io::Result<CString> {
    cstr(p.as_os_str().as_bytes())
}

impl Prepared {
    fn new(fs: &SandboxFs, spec: &RunSpec) -> io::Result<Prepared> {
        if spec.argv.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        }
        let mut ns_flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if spec.network == Network::None {
            ns_flags |= libc::CLONE_NEWNET;
        }
        // With a user namespace, every directory the root is made of is seen through an idmapped
        // mount of it (mount points created here, before fork).
        let mut idmaps = Vec::new();
        let mut idmap = |src: &Path, name: &str| -> io::Result<PathBuf> {
            let (_, dir) = fs.user_namespace.as_ref().expect("only with a user namespace");
            let dst = dir.join(name);
            std::fs::create_dir_all(&dst)?;
            idmaps.push((cpath(src)?, cpath(&dst)?));
            Ok(dst)
        };
        let rel =
            |base: &Path, p: &Path| -> String { p.strip_prefix(base).unwrap_or(p).to_string_lossy().into_owned() };
        let mut root = fs.root.clone();
        let overlay = match &fs.overlay {
            Some(o) => {
                let (lowers, upper, work) = if fs.user_namespace.is_some() {
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
                Some((cpath(&o.base)?, cstr(data)?))
            }
            None => {
                if fs.user_namespace.is_some() {
                    root = idmap(&fs.root, "root")?;
                }
                None
            }
        };
        let r = |sub: &str| cpath(&root.join(sub));
        let devices =
            [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)]
                .iter()
                .map(|(n, maj, min)| Ok((r(&format!("dev/{n}"))?, libc::S_IFCHR | 0o666, libc::makedev(*maj, *min))))
                .collect::<io::Result<Vec<_>>>()?;
        let dev_links = [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
        ]
        .iter()
        .map(|(n, t)| Ok((cstr(*t)?, r(&format!("dev/{n}"))?)))
        .collect::<io::Result<Vec<_>>>()?;
        let dev_dirs = vec![r("dev/pts")?, r("dev/shm")?];
        let mut binds = Vec::new();
        if let Some(p) = &fs.resolv_conf {
            binds.push((cpath(p)?, r("etc/resolv.conf")?));
        }
        if let Some(p) = &fs.hosts {
            binds.push((cpath(p)?, r("etc/hosts")?));
        }
        let mut workdir_parts = Vec::new();
        let mut acc = String::new();
        for c in spec.workdir.split('/').filter(|c| !c.is_empty()) {
            acc.push('/');
            acc.push_str(c);
            workdir_parts.push(cstr(&acc)?);
        }
        let script = match &spec.script {
            Some(s) => Some((r(SCRIPT_PATH.trim_start_matches('/'))?, s.clone())),
            None => None,
        };
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(63);
        let drop_caps = (0..=last_cap).filter(|c| !DEFAULT_CAPABILITIES.contains(c)).map(libc::c_ulong::from).collect();
        let seccomp = SeccompProfile::docker_default();
        Ok(Prepared {
            ns_flags,
            overlay,
            userns: fs.user_namespace.as_ref().map(|(ns, _)| ns.raw_fd()),
            idmaps,
            root: cpath(&root)?,
            proc_dir: r("proc")?,
            dev_dir: r("dev")?,
            devices,
            dev_links,
            dev_dirs,
            binds,
            workdir_parts,
            workdir: cstr(if spec.workdir.is_empty() { "/" } else { &spec.workdir })?,
            hostname: b"ext-extend",
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
            script,
            drop_caps,
            seccomp,
        })
    }

    /// Runs in the forked child before exec.
    fn enter(&self) -> io::Result<()> {
        // SAFETY (whole function): raw system calls on prepared, NUL-terminated data.
        unsafe {
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            check(libc::unshare(self.ns_flags))?;
            // Nothing we mount may propagate back to the host.
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            // The command learns that the middle process died through this pipe: the middle
            // holds the write end until it exits.
            let mut alive = [0 as libc::c_int; 2];
            check(libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC))?;
            let pid = check(libc::fork())?;
            if pid > 0 {
                libc::close(alive[0]);
                relay_exit(pid, alive[1]);
            }
            libc::close(alive[1]);
            // Now PID 1 of the new PID namespace.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            let confined = libc::MS_NOSUID | libc::MS_NODEV;
            if let Some(userns) = self.userns {
                for (src, dst) in &self.idmaps {
                    crate::userns::mount_idmapped(src, dst, userns)?;
                }
            }
            match &self.overlay {
                Some((base, data)) => {
                    check(libc::chdir(base.as_ptr()))?;
                    let mount_overlay = || mount(c"overlay", &self.root, c"overlay", confined, data.as_ptr().cast());
                    if self.userns.is_some() {
                        // Over idmapped layers, overlayfs creates files with its mounter's ids.
                        crate::userns::as_namespace_root(mount_overlay)?;
                    } else {
                        mount_overlay()?;
                    }
                }
                // The idmapped mount is the root's own mount, `nosuid,nodev` already.
                None if self.userns.is_some() => {}
                None => {
                    // A mount of its own, for the flags and for pivot_root.
                    mount_bind(&self.root, &self.root)?;
                    mount(c"none", &self.root, c"", libc::MS_REMOUNT | libc::MS_BIND | confined, std::ptr::null())?;
                }
            }
            mount(
                c"proc",
                &self.proc_dir,
                c"proc",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            )?;
            mount(c"tmpfs", &self.dev_dir, c"tmpfs", libc::MS_NOSUID, c"mode=755,size=65536k".as_ptr().cast())?;
            for (path, mode, dev) in &self.devices {
                check(libc::mknod(path.as_ptr(), *mode, *dev))?;
                check(libc::chmod(path.as_ptr(), 0o666))?;
            }
            for dir in &self.dev_dirs {
                check(libc::mkdir(dir.as_ptr(), 0o755))?;
            }
            for (target, link) in &self.dev_links {
                check(libc::symlink(target.as_ptr(), link.as_ptr()))?;
            }
            for (src, dst) in &self.binds {
                mount_bind(src, dst)?;
                mount(c"none", dst, c"", libc::MS_REMOUNT | libc::MS_BIND | confined, std::ptr::null())?;
            }
            if let Some((path, content)) = &self.script {
                let fd = check(libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                    0o755,
                ))?;
                let mut written = 0;
                while written < content.len() {
                    let n = libc::write(fd, content[written..].as_ptr().cast(), content.len() - written);
                    if n < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    written += n as usize;
                }
                libc::close(fd);
            }
            // pivot_root(".", "."): the old root ends up stacked on the new one and is
            // unmounted at once, so nothing of the host's filesystem stays reachable.
            check(libc::chdir(self.root.as_ptr()))?;
            check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()))?;
            check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
            check(libc::chdir(c"/".as_ptr()))?;
            check(libc::sethostname(self.hostname.as_ptr().cast(), self.hostname.len()))?;
            if let Some(userns) = self.userns {
                // From here on, image root is the namespace's root, nobody on the host. The
                // mount namespace stays owned by the host's: nothing can be mounted in it.
                check(libc::setns(userns, libc::CLONE_NEWUSER))?;
                check(libc::setresgid(0, 0, 0))?;
                check(libc::setresuid(0, 0, 0))?;
            }
            for part in &self.workdir_parts {
                if libc::mkdir(part.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                    return Err(io::Error::last_os_error());
                }
            }
            // Needs CAP_SETPCAP, so before the user changes.
            for &cap in &self.drop_caps {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && *libc::__errno_location() != libc::EINVAL {
                    return Err(io::Error::last_os_error());
                }
            }
            check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0))?;
            check(libc::setgroups(self.groups.len(), self.groups.as_ptr()))?;
            check(libc::setgid(self.gid))?;
            check(libc::setuid(self.uid))?;
            // Changing credentials cleared the parent-death signal: arm it again, then make
            // sure the parent did not die before that (it would then never come).
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0))?;
            let mut poll = libc::pollfd { fd: alive[0], events: libc::POLLIN, revents: 0 };
            if libc::poll(&mut poll, 1, 0) != 0 {
                // Readable or hung up: the middle process is gone (it never writes).
                libc::_exit(137);
            }
            check(libc::chdir(self.workdir.as_ptr()))?;
        }
        // Last: it sets no_new_privs and refuses what the steps above needed.
        self.seccomp.install()
    }
}

/// The middle process: close every inherited descriptor but `alive` (so the spawner's
/// exec-status pipe sees the command's exec, not us), wait for the command, exit with its status.
unsafe fn relay_exit(pid: libc::pid_t, alive: libc::c_int) -> ! {
    // SAFETY: async-signal-safe calls only.
    unsafe {
        let alive = alive as u32;
        if alive > 3 {
            libc::syscall(libc::SYS_close_range, 3u32, alive - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, alive + 1, u32::MAX, 0u32);
        if alive < 3 {
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        }
        let mut status = 0;
        loop {
            let r = libc::waitpid(pid, &mut status, 0);
            if r == pid {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(125);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        libc::_exit(128 + libc::WTERMSIG(status));
    }
}

fn check<T: PartialOrd + Default>(r: T) -> io::Result<T> {
    if r < T::default() { Err(io::Error::last_os_error()) } else { Ok(r) }
}

unsafe fn mount(
    src: &CStr,
    target: &CStr,
    fstype: &CStr,
    flags: libc::c_ulong,
    data: *const libc::c_void,
) -> io::Result<()> {
    // SAFETY: valid C strings; the caller runs in the sandbox child.
    check(unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data) }).map(|_| ())
}

unsafe fn mount_bind(src: &CStr, target: &CStr) -> io::Result<()> {
    // SAFETY: as for `mount`.
    check(unsafe { libc::mount(src.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) })
        .map(|_| ())
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
    let result = (|| -> io::Result<bool> {
        let data = cstr(format!("lowerdir=l,upperdir=u,workdir=w{}", overlay_extra_options()))?;
        let base = cpath(&probe)?;
        let target = cpath(&dirs[3])?;
        // SAFETY: the child only makes raw system calls on prepared data, then _exits.
        unsafe {
            let pid = libc::fork();
            if pid < 0 {
                return Err(io::Error::last_os_error());
            }
            if pid == 0 {
                let ok = libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
                    && libc::chdir(base.as_ptr()) == 0
                    && libc::mount(c"overlay".as_ptr(), target.as_ptr(), c"overlay".as_ptr(), 0, data.as_ptr().cast())
                        == 0;
                libc::_exit(if ok { 0 } else { 1 });
            }
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0 {
                if *libc::__errno_location() != libc::EINTR {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
        }
    })();
    let _ = std::fs::remove_dir_all(&probe);
    result.unwrap_or(false)
}
