//! Process setup as data: what a RUN's process does between `fork` and `exec` (namespaces,
//! mounts, `pivot_root`, credentials, capabilities, seccomp) is a list of [`Op`]s prepared
//! before the fork and carried out by one small interpreter, [`execute`], over a [`Syscalls`]
//! implementation:
//! - [`Kernel`] makes the system calls (async-signal-safe only: nothing allocates);
//! - [`Recorder`] writes them down, so the order and the flags of every step (mounts before
//!   `pivot_root`, `nosuid,nodev` on every mount, the `/proc` masks, capabilities dropped
//!   before `setuid`, seccomp last) are unit-tested without root.
//!
//! The sandbox (`sandbox.rs`), the live root's plain child (`live.rs`) and the probes of
//! overlayfs and user-namespace support (`sandbox.rs`, `userns.rs`) all run their setup here.

use std::ffi::{CStr, CString};
use std::io;

use crate::seccomp::SeccompProfile;

/// What [`Syscalls::file_kind`] finds at a path (without following a final symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Missing,
    Dir,
    Other,
}

/// How a process that changed its credentials makes sure its parent still lives (a credential
/// change clears the parent-death signal, which is armed again first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentCheck {
    /// The read end of the pipe made by [`Op::ForkRelay`] is not readable or hung up.
    RelayPipe,
    /// `getppid()` is still this pid.
    Pid(libc::pid_t),
}

/// One step of a process's setup. Paths are as the process sees them at that step.
#[derive(Debug)]
pub enum Op {
    /// `PR_SET_PDEATHSIG` = `SIGKILL`.
    DieWithParent,
    Unshare(libc::c_int),
    /// `/` and everything below it private: no mount propagates back to the host.
    PrivateMounts,
    /// Forks once more: the parent relays the child's exit status and never returns; the
    /// child, PID 1 of the PID namespace unshared before, carries on (and holds the read end of
    /// a pipe whose write end dies with the parent, for [`ParentCheck::RelayPipe`]).
    ForkRelay,
    MountIdmapped {
        source: CString,
        target: CString,
        userns: libc::c_int,
    },
    Chdir(CString),
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// The overlay over idmapped layers, mounted with the namespace root's file-system ids.
    MountAsNamespaceRoot {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// Bind-mounts `source` on `target`, then remounts it with `flags` (`MS_BIND|MS_REMOUNT`
    /// added): how `nosuid,nodev` or read-only reach a bind mount.
    Bind {
        source: CString,
        target: CString,
        flags: libc::c_ulong,
    },
    /// A read-only bind of `path` on itself (flags kept); nothing if it does not exist.
    ReadOnly {
        path: CString,
        flags: libc::c_ulong,
    },
    /// Hides `path`: an empty read-only tmpfs over a directory, `null` (a `/dev/null`) over
    /// anything else; nothing if it does not exist.
    Mask {
        path: CString,
        null: CString,
    },
    /// `mknod` then `chmod` (the umask must not decide a device's mode).
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
        exist_ok: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Creates (exclusively) a file with this content.
    WriteFile {
        path: CString,
        content: Vec<u8>,
        mode: libc::mode_t,
    },
    /// `chdir(root)`, `pivot_root(".", ".")`, the old root unmounted, `chdir("/")`: nothing of
    /// the old root stays reachable.
    PivotRoot(CString),
    SetHostname(&'static [u8]),
    /// `setns` into the user namespace, then ids 0 in it.
    EnterUserNamespace(libc::c_int),
    /// Drops these from the capability bounding set (unknown numbers are skipped).
    DropBoundingCaps(Vec<libc::c_ulong>),
    ClearAmbientCaps,
    SetGroups(Vec<libc::gid_t>),
    SetGid(libc::gid_t),
    SetUid(libc::uid_t),
    /// Exits with 137 (as if killed) if the parent is gone.
    CheckParentAlive(ParentCheck),
    /// `no_new_privs` and the filters.
    Seccomp(SeccompProfile),
}

/// The system calls [`execute`] makes. Every method of [`Kernel`] is async-signal-safe.
pub trait Syscalls {
    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> io::Result<()>;
    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()>;
    fn mount(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;
    fn mount_as_namespace_root(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: libc::c_ulong,
        data: &CStr,
    ) -> io::Result<()>;
    fn mount_idmapped(&mut self, source: &CStr, target: &CStr, userns: libc::c_int) -> io::Result<()>;
    fn umount_detach(&mut self, target: &CStr) -> io::Result<()>;
    /// Forks; returns in the child only, with the read end of the relay pipe.
    fn fork_relay(&mut self) -> io::Result<libc::c_int>;
    fn chdir(&mut self, path: &CStr) -> io::Result<()>;
    fn pivot_root_here(&mut self) -> io::Result<()>;
    fn file_kind(&mut self, path: &CStr) -> FileKind;
    fn mknod(&mut self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()>;
    fn chmod(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// `Err` with `EEXIST` when something is there already.
    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()>;
    fn write_new_file(&mut self, path: &CStr, content: &[u8], mode: libc::mode_t) -> io::Result<()>;
    fn sethostname(&mut self, name: &[u8]) -> io::Result<()>;
    fn setns_user(&mut self, fd: libc::c_int) -> io::Result<()>;
    fn setresid(&mut self, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()>;
    fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()>;
    fn setgid(&mut self, gid: libc::gid_t) -> io::Result<()>;
    fn setuid(&mut self, uid: libc::uid_t) -> io::Result<()>;
    fn parent_alive(&mut self, check: ParentCheck, relay_pipe: libc::c_int) -> bool;
    fn exit(&mut self, code: libc::c_int) -> io::Result<()>;
    fn install_seccomp(&mut self, profile: &SeccompProfile) -> io::Result<()>;
}

/// Carries out `ops` in order; stops at the first error.
pub fn execute(ops: &[Op], sys: &mut impl Syscalls) -> io::Result<()> {
    let mut relay_pipe = -1;
    for op in ops {
        match op {
            Op::DieWithParent => sys.prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?,
            Op::Unshare(flags) => sys.unshare(*flags)?,
            Op::PrivateMounts => sys.mount(c"none", c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)?,
            Op::ForkRelay => relay_pipe = sys.fork_relay()?,
            Op::MountIdmapped { source, target, userns } => sys.mount_idmapped(source, target, *userns)?,
            Op::Chdir(path) => sys.chdir(path)?,
            Op::Mount { source, target, fstype, flags, data } => {
                sys.mount(source, target, Some(fstype), *flags, data.as_deref())?
            }
            Op::MountAsNamespaceRoot { source, target, fstype, flags, data } => {
                sys.mount_as_namespace_root(source, target, fstype, *flags, data)?
            }
            Op::Bind { source, target, flags } => bind(sys, source, target, *flags)?,
            Op::ReadOnly { path, flags } => {
                if sys.file_kind(path) != FileKind::Missing {
                    bind(sys, path, path, *flags | libc::MS_RDONLY)?;
                }
            }
            Op::Mask { path, null } => match sys.file_kind(path) {
                FileKind::Missing => {}
                FileKind::Dir => sys.mount(
                    c"tmpfs",
                    path,
                    Some(c"tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    Some(c"size=0,mode=755"),
                )?,
                // Not `nodev`: the `/dev/null` over it must stay openable (reads give nothing).
                FileKind::Other => bind(sys, null, path, libc::MS_RDONLY | libc::MS_NOSUID)?,
            },
            Op::Mknod { path, mode, dev } => {
                sys.mknod(path, *mode, *dev)?;
                sys.chmod(path, *mode & 0o7777)?;
            }
            Op::Mkdir { path, mode, exist_ok } => match sys.mkdir(path, *mode) {
                Err(e) if *exist_ok && e.raw_os_error() == Some(libc::EEXIST) => {}
                r => r?,
            },
            Op::Symlink { target, link } => sys.symlink(target, link)?,
            Op::WriteFile { path, content, mode } => sys.write_new_file(path, content, *mode)?,
            Op::PivotRoot(root) => {
                sys.chdir(root)?;
                sys.pivot_root_here()?;
                sys.umount_detach(c".")?;
                sys.chdir(c"/")?;
            }
            Op::SetHostname(name) => sys.sethostname(name)?,
            Op::EnterUserNamespace(fd) => {
                sys.setns_user(*fd)?;
                sys.setresid(0, 0)?;
            }
            Op::DropBoundingCaps(caps) => {
                for &cap in caps {
                    match sys.prctl(libc::PR_CAPBSET_DROP, cap) {
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                        r => r?,
                    }
                }
            }
            Op::ClearAmbientCaps => sys.prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong)?,
            Op::SetGroups(groups) => sys.setgroups(groups)?,
            Op::SetGid(gid) => sys.setgid(*gid)?,
            Op::SetUid(uid) => sys.setuid(*uid)?,
            Op::CheckParentAlive(check) => {
                if !sys.parent_alive(*check, relay_pipe) {
                    sys.exit(137)?;
                }
            }
            Op::Seccomp(profile) => sys.install_seccomp(profile)?,
        }
    }
    Ok(())
}

fn bind(sys: &mut impl Syscalls, source: &CStr, target: &CStr, flags: libc::c_ulong) -> io::Result<()> {
    sys.mount(source, target, None, libc::MS_BIND, None)?;
    sys.mount(c"none", target, None, libc::MS_REMOUNT | libc::MS_BIND | flags, None)
}

/// Runs `ops` in a forked child (which then `_exit`s) and waits for it: `Ok` if every step
/// worked, else the error of the step that failed. For probes that try a setup once.
pub fn try_in_child(ops: &[Op]) -> io::Result<()> {
    // SAFETY: the child carries out prepared ops with async-signal-safe calls, then _exits.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            let code = match execute(ops, &mut Kernel) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(255).clamp(1, 255),
            };
            libc::_exit(code);
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                return Err(io::Error::last_os_error());
            }
        }
        match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
            (true, 0) => Ok(()),
            (true, code) => Err(io::Error::from_raw_os_error(code)),
            _ => Err(io::Error::other("the probe process was killed")),
        }
    }
}

/// The real system calls.
pub struct Kernel;

fn check<T: PartialOrd + Default>(r: T) -> io::Result<T> {
    if r < T::default() { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn ptr_or_null(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

// SAFETY (every method): raw system calls on valid, NUL-terminated data.
impl Syscalls for Kernel {
    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
        check(unsafe { libc::prctl(option, arg, 0, 0, 0) }).map(drop)
    }

    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        check(unsafe { libc::unshare(flags) }).map(drop)
    }

    fn mount(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        check(unsafe {
            libc::mount(source.as_ptr(), target.as_ptr(), ptr_or_null(fstype), flags, ptr_or_null(data).cast())
        })
        .map(drop)
    }

    fn mount_as_namespace_root(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: libc::c_ulong,
        data: &CStr,
    ) -> io::Result<()> {
        // SAFETY: as above; the closure only mounts.
        unsafe { crate::userns::as_namespace_root(|| self.mount(source, target, Some(fstype), flags, Some(data))) }
    }

    fn mount_idmapped(&mut self, source: &CStr, target: &CStr, userns: libc::c_int) -> io::Result<()> {
        unsafe { crate::userns::mount_idmapped(source, target, userns) }
    }

    fn umount_detach(&mut self, target: &CStr) -> io::Result<()> {
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }).map(drop)
    }

    fn fork_relay(&mut self) -> io::Result<libc::c_int> {
        unsafe {
            let mut alive = [0 as libc::c_int; 2];
            check(libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC))?;
            let pid = check(libc::fork())?;
            if pid > 0 {
                libc::close(alive[0]);
                relay_exit(pid, alive[1]);
            }
            libc::close(alive[1]);
            Ok(alive[0])
        }
    }

    fn chdir(&mut self, path: &CStr) -> io::Result<()> {
        check(unsafe { libc::chdir(path.as_ptr()) }).map(drop)
    }

    fn pivot_root_here(&mut self) -> io::Result<()> {
        check(unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) }).map(drop)
    }

    fn file_kind(&mut self, path: &CStr) -> FileKind {
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        if unsafe { libc::lstat(path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return FileKind::Missing;
        }
        // SAFETY: lstat succeeded, so it filled the struct.
        let mode = unsafe { st.assume_init() }.st_mode;
        if mode & libc::S_IFMT == libc::S_IFDIR { FileKind::Dir } else { FileKind::Other }
    }

    fn mknod(&mut self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        check(unsafe { libc::mknod(path.as_ptr(), mode, dev) }).map(drop)
    }

    fn chmod(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        check(unsafe { libc::chmod(path.as_ptr(), mode) }).map(drop)
    }

    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        check(unsafe { libc::mkdir(path.as_ptr(), mode) }).map(drop)
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()> {
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }).map(drop)
    }

    fn write_new_file(&mut self, path: &CStr, content: &[u8], mode: libc::mode_t) -> io::Result<()> {
        unsafe {
            let fd = check(libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                mode,
            ))?;
            let mut written = 0;
            while written < content.len() {
                let n = libc::write(fd, content[written..].as_ptr().cast(), content.len() - written);
                if n < 0 {
                    let e = io::Error::last_os_error();
                    libc::close(fd);
                    return Err(e);
                }
                written += n as usize;
            }
            libc::close(fd);
        }
        Ok(())
    }

    fn sethostname(&mut self, name: &[u8]) -> io::Result<()> {
        check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
    }

    fn setns_user(&mut self, fd: libc::c_int) -> io::Result<()> {
        check(unsafe { libc::setns(fd, libc::CLONE_NEWUSER) }).map(drop)
    }

    fn setresid(&mut self, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        check(unsafe { libc::setresgid(gid, gid, gid) })?;
        check(unsafe { libc::setresuid(uid, uid, uid) }).map(drop)
    }

    fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()> {
        check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }).map(drop)
    }

    fn setgid(&mut self, gid: libc::gid_t) -> io::Result<()> {
        check(unsafe { libc::setgid(gid) }).map(drop)
    }

    fn setuid(&mut self, uid: libc::uid_t) -> io::Result<()> {
        check(unsafe { libc::setuid(uid) }).map(drop)
    }

    fn parent_alive(&mut self, check: ParentCheck, relay_pipe: libc::c_int) -> bool {
        match check {
            ParentCheck::Pid(pid) => unsafe { libc::getppid() == pid },
            ParentCheck::RelayPipe => {
                // Readable or hung up: the relaying parent is gone (it never writes).
                let mut poll = libc::pollfd { fd: relay_pipe, events: libc::POLLIN, revents: 0 };
                unsafe { libc::poll(&mut poll, 1, 0) == 0 }
            }
        }
    }

    fn exit(&mut self, code: libc::c_int) -> io::Result<()> {
        unsafe { libc::_exit(code) }
    }

    fn install_seccomp(&mut self, profile: &SeccompProfile) -> io::Result<()> {
        profile.install()
    }
}

/// The relaying parent of [`Op::ForkRelay`]: closes every inherited descriptor but `alive` (so
/// the spawner's exec-status pipe sees the command's exec, not us), waits for the command and
/// exits with its status.
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

/// Writes every call down as one line (`mount proc /r/proc proc nosuid,nodev,noexec`) and
/// answers as the kernel would on success; [`Recorder::dirs`] and [`Recorder::files`] say what
/// [`Syscalls::file_kind`] finds, [`Recorder::fail`] makes calls fail, and
/// [`Recorder::parent_gone`] answers [`Syscalls::parent_alive`].
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: Vec<String>,
    pub dirs: Vec<String>,
    pub files: Vec<String>,
    /// Calls whose line starts with this fail (after being written down) with this errno.
    pub fail: Option<(&'static str, i32)>,
    pub parent_gone: bool,
}

impl Recorder {
    fn record(&mut self, line: String) -> io::Result<()> {
        let fails = self.fail.filter(|(prefix, _)| line.starts_with(prefix));
        self.calls.push(line);
        match fails {
            Some((_, errno)) => Err(io::Error::from_raw_os_error(errno)),
            None => Ok(()),
        }
    }
}

fn lossy(s: &CStr) -> String {
    s.to_string_lossy().into_owned()
}

/// `MS_*` flags as mount(8) spells them, for the recorder.
pub fn mount_flags(flags: libc::c_ulong) -> String {
    let names = [
        (libc::MS_RDONLY, "ro"),
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
        (libc::MS_REMOUNT, "remount"),
        (libc::MS_BIND, "bind"),
        (libc::MS_REC, "rec"),
        (libc::MS_PRIVATE, "private"),
    ];
    let out: Vec<&str> = names.iter().filter(|(f, _)| flags & f != 0).map(|(_, n)| *n).collect();
    if out.is_empty() { "-".into() } else { out.join(",") }
}

impl Syscalls for Recorder {
    fn prctl(&mut self, option: libc::c_int, arg: libc::c_ulong) -> io::Result<()> {
        let name = match option {
            libc::PR_SET_PDEATHSIG => "pdeathsig",
            libc::PR_CAPBSET_DROP => "capbset_drop",
            libc::PR_CAP_AMBIENT => "ambient",
            _ => "prctl",
        };
        self.record(format!("{name} {arg}"))
    }

    fn unshare(&mut self, flags: libc::c_int) -> io::Result<()> {
        self.record(format!("unshare {flags:#x}"))
    }

    fn mount(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        self.record(format!(
            "mount {} {} {} {}{}",
            lossy(source),
            lossy(target),
            fstype.map_or("-".into(), lossy),
            mount_flags(flags),
            data.map_or(String::new(), |d| format!(" {}", lossy(d)))
        ))
    }

    fn mount_as_namespace_root(
        &mut self,
        source: &CStr,
        target: &CStr,
        fstype: &CStr,
        flags: libc::c_ulong,
        data: &CStr,
    ) -> io::Result<()> {
        self.record("fsids namespace-root".into())?;
        self.mount(source, target, Some(fstype), flags, Some(data))
    }

    fn mount_idmapped(&mut self, source: &CStr, target: &CStr, _userns: libc::c_int) -> io::Result<()> {
        self.record(format!("mount_idmapped {} {} nosuid,nodev", lossy(source), lossy(target)))
    }

    fn umount_detach(&mut self, target: &CStr) -> io::Result<()> {
        self.record(format!("umount {}", lossy(target)))
    }

    fn fork_relay(&mut self) -> io::Result<libc::c_int> {
        self.record("fork".into()).map(|_| -1)
    }

    fn chdir(&mut self, path: &CStr) -> io::Result<()> {
        self.record(format!("chdir {}", lossy(path)))
    }

    fn pivot_root_here(&mut self) -> io::Result<()> {
        self.record("pivot_root . .".into())
    }

    fn file_kind(&mut self, path: &CStr) -> FileKind {
        let p = lossy(path);
        if self.dirs.contains(&p) {
            FileKind::Dir
        } else if self.files.contains(&p) {
            FileKind::Other
        } else {
            FileKind::Missing
        }
    }

    fn mknod(&mut self, path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> io::Result<()> {
        self.record(format!("mknod {} {mode:o} {}:{}", lossy(path), libc::major(dev), libc::minor(dev)))
    }

    fn chmod(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("chmod {} {mode:o}", lossy(path)))
    }

    fn mkdir(&mut self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("mkdir {} {mode:o}", lossy(path)))
    }

    fn symlink(&mut self, target: &CStr, link: &CStr) -> io::Result<()> {
        self.record(format!("symlink {} {}", lossy(target), lossy(link)))
    }

    fn write_new_file(&mut self, path: &CStr, content: &[u8], mode: libc::mode_t) -> io::Result<()> {
        self.record(format!("write {} {mode:o} ({} bytes)", lossy(path), content.len()))
    }

    fn sethostname(&mut self, name: &[u8]) -> io::Result<()> {
        self.record(format!("sethostname {}", String::from_utf8_lossy(name)))
    }

    fn setns_user(&mut self, _fd: libc::c_int) -> io::Result<()> {
        self.record("setns user".into())
    }

    fn setresid(&mut self, uid: libc::uid_t, gid: libc::gid_t) -> io::Result<()> {
        self.record(format!("setresid {uid}:{gid}"))
    }

    fn setgroups(&mut self, groups: &[libc::gid_t]) -> io::Result<()> {
        self.record(format!("setgroups {groups:?}"))
    }

    fn setgid(&mut self, gid: libc::gid_t) -> io::Result<()> {
        self.record(format!("setgid {gid}"))
    }

    fn setuid(&mut self, uid: libc::uid_t) -> io::Result<()> {
        self.record(format!("setuid {uid}"))
    }

    fn parent_alive(&mut self, check: ParentCheck, _relay_pipe: libc::c_int) -> bool {
        let _ = self.record(format!("parent_alive {check:?}"));
        !self.parent_gone
    }

    fn exit(&mut self, code: libc::c_int) -> io::Result<()> {
        self.record(format!("exit {code}"))?;
        // The real call does not return: nothing after it may be carried out.
        Err(io::Error::other(format!("exited with {code}")))
    }

    fn install_seccomp(&mut self, _profile: &SeccompProfile) -> io::Result<()> {
        self.record("seccomp".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[test]
    fn masks_and_read_only_paths_depend_on_what_is_there() {
        let ops = [
            Op::ReadOnly { path: c("/r/proc/sys"), flags: libc::MS_NOSUID },
            Op::ReadOnly { path: c("/r/proc/absent"), flags: libc::MS_NOSUID },
            Op::Mask { path: c("/r/proc/acpi"), null: c("/r/dev/null") },
            Op::Mask { path: c("/r/proc/kcore"), null: c("/r/dev/null") },
            Op::Mask { path: c("/r/proc/gone"), null: c("/r/dev/null") },
        ];
        let mut rec = Recorder {
            dirs: vec!["/r/proc/sys".into(), "/r/proc/acpi".into()],
            files: vec!["/r/proc/kcore".into()],
            ..Default::default()
        };
        execute(&ops, &mut rec).unwrap();
        assert_eq!(
            rec.calls,
            [
                "mount /r/proc/sys /r/proc/sys - bind",
                "mount none /r/proc/sys - ro,nosuid,remount,bind",
                "mount tmpfs /r/proc/acpi tmpfs ro,nosuid,nodev,noexec size=0,mode=755",
                "mount /r/dev/null /r/proc/kcore - bind",
                "mount none /r/proc/kcore - ro,nosuid,remount,bind",
            ]
        );
    }

    #[test]
    fn a_failing_step_stops_the_setup_and_known_errors_are_tolerated() {
        // An existing directory is fine where it may exist, an error where it may not.
        let ops = [Op::Mkdir { path: c("/w"), mode: 0o755, exist_ok: true }, Op::SetUid(5)];
        let mut rec = Recorder { fail: Some(("mkdir", libc::EEXIST)), ..Default::default() };
        execute(&ops, &mut rec).unwrap();
        assert_eq!(rec.calls, ["mkdir /w 755", "setuid 5"]);
        let ops = [Op::Mkdir { path: c("/w"), mode: 0o755, exist_ok: false }, Op::SetUid(5)];
        let mut rec = Recorder { fail: Some(("mkdir", libc::EEXIST)), ..Default::default() };
        assert_eq!(execute(&ops, &mut rec).unwrap_err().raw_os_error(), Some(libc::EEXIST));
        assert_eq!(rec.calls, ["mkdir /w 755"], "nothing after the failed step");
        // A capability this kernel does not know (EINVAL) is skipped; EPERM is not.
        let ops = [Op::DropBoundingCaps(vec![40, 41]), Op::SetUid(5)];
        let mut rec = Recorder { fail: Some(("capbset_drop", libc::EINVAL)), ..Default::default() };
        execute(&ops, &mut rec).unwrap();
        assert_eq!(rec.calls, ["capbset_drop 40", "capbset_drop 41", "setuid 5"]);
        let mut rec = Recorder { fail: Some(("capbset_drop", libc::EPERM)), ..Default::default() };
        assert_eq!(execute(&ops, &mut rec).unwrap_err().raw_os_error(), Some(libc::EPERM));
        assert_eq!(rec.calls, ["capbset_drop 40"]);
    }

    #[test]
    fn a_dead_parent_ends_the_setup() {
        let ops = [Op::SetUid(5), Op::CheckParentAlive(ParentCheck::Pid(1)), Op::Chdir(c("/w"))];
        let mut rec = Recorder { parent_gone: true, ..Default::default() };
        assert!(execute(&ops, &mut rec).is_err());
        assert_eq!(rec.calls, ["setuid 5", "parent_alive Pid(1)", "exit 137"]);
        let mut rec = Recorder::default();
        execute(&ops, &mut rec).unwrap();
        assert_eq!(rec.calls, ["setuid 5", "parent_alive Pid(1)", "chdir /w"]);
    }
}
