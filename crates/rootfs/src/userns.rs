//! A user namespace for RUN, so that image root is not host root.
//!
//! The command runs in a user namespace whose ids `0..SIZE` are host ids `HOST_BASE..`: its
//! root owns nothing on the host and has no capability outside the namespace. The image's
//! files must still look like the image's (root-owned files owned by root) and what the command
//! writes must land on disk with image ids (the layers are written from the disk), so every
//! directory the root is made of (the overlay's lower layers and its upper and work dirs, or the
//! flat root of the stat strategy) is mounted *idmapped* with the same namespace: through such a
//! mount, a file that is uid 0 on disk is host uid `HOST_BASE`, i.e. uid 0 in the namespace, and
//! a file the namespace's root creates is uid 0 on disk again.
//!
//! overlayfs cannot itself be idmapped (`mount_setattr` answers `EINVAL`), but accepts idmapped
//! layers; it creates its work dir and upper-dir entries with the credentials of whoever mounted
//! it, which must therefore map through the idmapping too: the overlay is mounted with the file
//! system ids set to `HOST_BASE` (capabilities kept). Measured on Linux 6.18.
//!
//! Everything that runs between `fork` and `exec` here is a raw, async-signal-safe system call.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The first host id of the namespace's range: far above any real user or subordinate range.
pub const HOST_BASE: u32 = 1 << 31;
/// How many ids are mapped: image ids `0..SIZE` (every uid a real image uses).
pub const SIZE: u32 = (1 << 31) - 1;

/// A user namespace kept alive by a descriptor (its creating process is gone).
#[derive(Debug)]
pub struct UserNamespace {
    fd: OwnedFd,
}

fn check(r: libc::c_long) -> io::Result<libc::c_long> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

impl UserNamespace {
    /// Creates the namespace: a child unshares it and waits while we write its id maps and open
    /// it, then exits.
    pub fn create() -> io::Result<UserNamespace> {
        let mut ready = [0 as libc::c_int; 2];
        let mut done = [0 as libc::c_int; 2];
        // SAFETY: plain system calls; the child makes only async-signal-safe calls and _exits.
        unsafe {
            check(libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC).into())?;
            check(libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC).into())?;
            let pid = libc::fork();
            if pid < 0 {
                let e = io::Error::last_os_error();
                for fd in ready.iter().chain(done.iter()) {
                    libc::close(*fd);
                }
                return Err(e);
            }
            if pid == 0 {
                // Only the parent may hold the write end of `done`, or the read below never ends.
                libc::close(done[1]);
                libc::close(ready[0]);
                let ok: u8 = if libc::unshare(libc::CLONE_NEWUSER) == 0 { 1 } else { 0 };
                libc::write(ready[1], (&ok as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::read(done[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
            libc::close(ready[1]);
            libc::close(done[0]);
            let done_w = OwnedFd::from_raw_fd(done[1]);
            let ready_r = OwnedFd::from_raw_fd(ready[0]);
            let result = (|| {
                let mut ok = 0u8;
                if libc::read(ready_r.as_raw_fd(), (&mut ok as *mut u8).cast(), 1) != 1 || ok != 1 {
                    return Err(io::Error::other("the kernel refused to create a user namespace"));
                }
                let map = format!("0 {HOST_BASE} {SIZE}\n");
                std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
                std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/user"))?;
                Ok(UserNamespace { fd: OwnedFd::from(ns) })
            })();
            drop(done_w);
            let mut status = 0;
            while libc::waitpid(pid, &mut status, 0) < 0 && *libc::__errno_location() == libc::EINTR {}
            result
        }
    }

    /// A stand-in holding any descriptor, for tests of the setup plan (which only passes the
    /// number on).
    #[cfg(test)]
    pub(crate) fn stand_in(fd: OwnedFd) -> UserNamespace {
        UserNamespace { fd }
    }

    pub fn raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }
}

/// Mounts `src` idmapped with `userns` (plus `nosuid,nodev`) on `dst`. Async-signal-safe.
///
/// # Safety
/// Raw system calls; call only where mounting is intended (a private mount namespace).
pub unsafe fn mount_idmapped(src: &CStr, dst: &CStr, userns: libc::c_int) -> io::Result<()> {
    // SAFETY: valid C strings and a prepared attribute struct.
    unsafe {
        let fd = check(libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC as libc::c_uint,
        ))? as libc::c_int;
        let attr = libc::mount_attr {
            attr_set: libc::MOUNT_ATTR_IDMAP | libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns as u64,
        };
        let r = libc::syscall(
            libc::SYS_mount_setattr,
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        );
        let r = if r < 0 {
            r
        } else {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                dst.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        let e = io::Error::last_os_error();
        libc::close(fd);
        if r < 0 { Err(e) } else { Ok(()) }
    }
}

/// `struct __user_cap_header_struct` of linux/capability.h.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of linux/capability.h.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Runs `f` with the file system ids set to the namespace's root (`HOST_BASE`), capabilities
/// kept: how the overlay is mounted over idmapped layers. Async-signal-safe.
///
/// # Safety
/// Raw system calls on the calling thread's credentials.
pub unsafe fn as_namespace_root<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    // SAFETY: capget/capset on prepared structs, setfsuid/setfsgid.
    unsafe {
        let mut header = CapHeader { version: CAPABILITY_VERSION_3, pid: 0 };
        let mut data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
        check(libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()))?;
        // Changing the fs ids away from 0 clears the file-system capabilities from the
        // effective set: raise them again.
        let raise = |header: &mut CapHeader, data: &mut [CapData; 2]| -> io::Result<()> {
            for d in data.iter_mut() {
                d.effective = d.permitted;
            }
            check(libc::syscall(libc::SYS_capset, header as *mut _, data.as_mut_ptr())).map(|_| ())
        };
        libc::setfsgid(HOST_BASE);
        libc::setfsuid(HOST_BASE);
        let result = raise(&mut header, &mut data).and_then(|_| f());
        libc::setfsuid(0);
        libc::setfsgid(0);
        raise(&mut header, &mut data)?;
        result
    }
}

/// `EXT_EXTEND_USERNS`: whether RUN runs in a user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernsPolicy {
    /// Where the kernel allows it (the default).
    Auto,
    /// Never (`off` or `0`): image root is host root, confined by the rest of the sandbox.
    Off,
    /// Always: a RUN that cannot have one fails (`require`).
    Require,
}

impl UsernsPolicy {
    pub fn from_env() -> Result<UsernsPolicy, String> {
        match std::env::var("EXT_EXTEND_USERNS").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(UsernsPolicy::Auto),
            Ok("off") | Ok("0") => Ok(UsernsPolicy::Off),
            Ok("require") => Ok(UsernsPolicy::Require),
            Ok(other) => {
                Err(format!("EXT_EXTEND_USERNS={}: expected auto, off (or 0) or require", ext_oci::escape::text(other)))
            }
        }
    }
}

/// Decides whether RUN uses a user namespace under `scratch` by `policy`: the whole
/// arrangement (a namespace, idmapped layers on the scratch filesystem, an overlay over them
/// that the namespace's root can write to with image ids on disk) is tried once in a throwaway
/// process. Without one, says so at `info` level, with the reason; `Err` (the reason) only for
/// [`UsernsPolicy::Require`].
pub fn decide(scratch: &Path, overlay_options: &str, policy: UsernsPolicy) -> Result<bool, String> {
    let reason = match policy {
        UsernsPolicy::Off => "EXT_EXTEND_USERNS=off".to_string(),
        UsernsPolicy::Auto | UsernsPolicy::Require => {
            let probe = scratch.join(".userns-probe");
            let result = probe_in(&probe, overlay_options);
            let _ = std::fs::remove_dir_all(&probe);
            match result {
                Ok(()) => return Ok(true),
                Err(e) => format!("the kernel refused one here: {e}"),
            }
        }
    };
    if policy == UsernsPolicy::Require {
        return Err(format!("EXT_EXTEND_USERNS=require, but RUN cannot have a user namespace ({reason})"));
    }
    tracing::info!(
        "RUN runs without a user namespace ({reason}): image root is host root, confined by namespaces, capabilities, seccomp and read-only /proc paths (EXT_EXTEND_USERNS=require refuses this)"
    );
    Ok(false)
}

fn probe_in(probe: &Path, overlay_options: &str) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    for d in ["l", "uw/u", "uw/w", "li", "uwi", "m"] {
        std::fs::create_dir_all(probe.join(d))?;
    }
    let ns = UserNamespace::create()?;
    let c = |p: &str| std::ffi::CString::new(probe.join(p).as_os_str().as_bytes()).map_err(io::Error::other);
    let (l, li, uw, uwi, m, created) = (c("l")?, c("li")?, c("uw")?, c("uwi")?, c("m")?, c("m/probe")?);
    let data = std::ffi::CString::new(format!(
        "lowerdir={},upperdir={}/u,workdir={}/w{overlay_options}",
        probe.join("li").display(),
        probe.join("uwi").display(),
        probe.join("uwi").display()
    ))
    .map_err(io::Error::other)?;
    let cstr = |s: &str| std::ffi::CString::new(s).map_err(io::Error::other);
    use crate::setup::Op;
    crate::setup::try_in_child(&[
        Op::Unshare(libc::CLONE_NEWNS),
        Op::PrivateMounts,
        Op::MountIdmapped { source: l, target: li, userns: ns.raw_fd() },
        Op::MountIdmapped { source: uw, target: uwi, userns: ns.raw_fd() },
        Op::MountAsNamespaceRoot { source: cstr("overlay")?, target: m, fstype: cstr("overlay")?, flags: 0, data },
        Op::EnterUserNamespace(ns.raw_fd()),
        Op::WriteFile { path: created, content: Vec::new(), mode: 0o644 },
    ])?;
    // Written by the namespace's root through the overlay: image root on disk.
    let md = std::fs::metadata(probe.join("uw/u/probe"))?;
    use std::os::unix::fs::MetadataExt;
    if md.uid() != 0 || md.gid() != 0 {
        return Err(io::Error::other(format!("a file of the namespace's root is {}:{} on disk", md.uid(), md.gid())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn require_refuses_where_the_probe_fails_and_auto_goes_on_without() {
        // A scratch dir that cannot exist: the probe fails as on a kernel that refuses.
        let scratch = Path::new("/dev/null/scratch");
        let err = decide(scratch, "", UsernsPolicy::Require).unwrap_err();
        assert!(err.starts_with("EXT_EXTEND_USERNS=require, but RUN cannot have a user namespace"), "{err}");
        assert!(err.contains("the kernel refused one here"), "{err}");
        assert_eq!(decide(scratch, "", UsernsPolicy::Auto), Ok(false));
        assert_eq!(decide(scratch, "", UsernsPolicy::Off), Ok(false));
    }
}
