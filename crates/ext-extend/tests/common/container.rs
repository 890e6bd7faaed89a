//! A stand-in for the container pack runs a lifecycle phase in, without Docker: the image's
//! root filesystem as `/` (pivot_root in a private mount namespace), the platform's volumes
//! bind-mounted, `/proc`, `/dev`, and bind-mounted `/etc/resolv.conf` and `/etc/hosts` like a
//! runtime's, `/.dockerenv`; then Docker's default capability bounding set (no
//! `CAP_SYS_ADMIN`), `no_new_privs` and a seccomp filter refusing what Docker's default
//! profile refuses to such a container (`unshare`, `mount`, `umount2`, `pivot_root`, `setns`,
//! namespace flags to `clone`), optionally as a non-root user with every capability dropped
//! (kpack). The harness checks itself: `Container::self_check` proves `unshare` is refused.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use ext_rootfs::SeccompProfile;

/// Docker's default capabilities, the set pack's containers get (the sandbox's bounding set is
/// the same list; tests/sandbox.rs checks it against moby's mask independently).
pub use ext_rootfs::sandbox::DEFAULT_CAPABILITIES as DOCKER_CAPS;

pub struct Container {
    pub rootfs: PathBuf,
    volumes: Vec<(PathBuf, String)>,
    user: Option<(u32, u32)>,
    dev: bool,
    files: tempfile::TempDir,
}

impl Container {
    /// A container of the filesystem at `rootfs` (changed in place by what runs in it).
    pub fn new(rootfs: &Path) -> Container {
        for d in ["proc", "dev", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        // What a runtime adds to every container: bind-mount targets and Docker's marker.
        for f in ["etc/resolv.conf", "etc/hosts", ".dockerenv"] {
            if !rootfs.join(f).exists() {
                std::fs::write(rootfs.join(f), b"").unwrap();
            }
        }
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("resolv.conf"), b"nameserver 127.0.0.1\n").unwrap();
        // `registry.test` names the tests' loopback registry. Both address families are listed:
        // the resolver asks for A and AAAA at once, and a name missing from /etc/hosts for one
        // of them would go to the (absent) DNS server and wait for its timeout.
        std::fs::write(files.path().join("hosts"), b"127.0.0.1 localhost registry.test\n::1 localhost registry.test\n")
            .unwrap();
        Container { rootfs: rootfs.to_path_buf(), volumes: Vec::new(), user: None, dev: true, files }
    }

    /// Bind-mounts `host` at `path` (absolute, inside the container), as a volume.
    pub fn volume(mut self, host: &Path, path: &str) -> Container {
        std::fs::create_dir_all(host).unwrap();
        std::fs::create_dir_all(self.rootfs.join(path.trim_start_matches('/'))).unwrap();
        self.volumes.push((host.to_path_buf(), path.to_string()));
        self
    }

    /// Removes `/.dockerenv`: nothing then says this is a container (a host, as far as
    /// ext-extend can tell).
    pub fn without_container_marker(self) -> Container {
        let _ = std::fs::remove_file(self.rootfs.join(".dockerenv"));
        self
    }

    /// No `/dev` mounted (an empty directory, as in a bare chroot).
    pub fn without_dev(mut self) -> Container {
        self.dev = false;
        self
    }

    /// Runs as this non-root user with every capability dropped (how kpack runs phases).
    pub fn non_root(mut self, uid: u32, gid: u32) -> Container {
        self.user = Some((uid, gid));
        self
    }

    /// A command run inside the container. `program` is a path inside it.
    pub fn command(&self, program: &str) -> Command {
        let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).unwrap();
        let root = c(&self.rootfs);
        let in_root = |p: &str| c(&self.rootfs.join(p.trim_start_matches('/')));
        let mut binds: Vec<(CString, CString)> = self.volumes.iter().map(|(h, p)| (c(h), in_root(p))).collect();
        if self.dev {
            binds.push((CString::new("/dev").unwrap(), in_root("/dev")));
        }
        binds.push((c(&self.files.path().join("resolv.conf")), in_root("/etc/resolv.conf")));
        binds.push((c(&self.files.path().join("hosts")), in_root("/etc/hosts")));
        let proc_dir = in_root("/proc");
        let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").unwrap().trim().parse().unwrap();
        let keep: Vec<u32> = if self.user.is_some() { Vec::new() } else { DOCKER_CAPS.to_vec() };
        let drop_caps: Vec<u32> = (0..=last_cap).filter(|c| !keep.contains(c)).collect();
        let user = self.user;
        let seccomp = SeccompProfile::docker_default();
        let mut cmd = Command::new(program);
        cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin:/cnb/lifecycle").current_dir("/");
        // SAFETY: the hook makes raw system calls on data prepared above.
        unsafe {
            cmd.pre_exec(move || enter(&root, &binds, &proc_dir, &drop_caps, user, &seccomp));
        }
        cmd
    }

    /// Proves the harness confines what runs in it before a test trusts it: `unshare` and
    /// `mount` are refused, `no_new_privs` and a seccomp filter are in force, and the bounding
    /// set is Docker's default.
    pub fn self_check(&self) {
        let out = self.command("/bin/unshare").args(["-m", "true"]).output().unwrap();
        assert!(!out.status.success(), "unshare must be refused in the container");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not permitted"), "unshare: {err}");
        let out = self.command("/bin/mount").args(["-t", "tmpfs", "t", "/tmp"]).output().unwrap();
        assert!(!out.status.success(), "mount must be refused in the container");
        let out = self.command("/bin/cat").arg("/proc/self/status").output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.lines().any(|l| l.starts_with("Seccomp:") && l.trim_end().ends_with('2')), "{status}");
        let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
        let bnd = u64::from_str_radix(bnd, 16).unwrap();
        let expected: u64 = if self.user.is_some() { 0 } else { DOCKER_CAPS.iter().map(|c| 1u64 << c).sum() };
        assert_eq!(bnd, expected, "capability bounding set");
        assert_eq!(bnd & (1 << 21), 0, "no CAP_SYS_ADMIN");
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The pre-exec hook: mounts, pivot_root, capabilities, user, seccomp (last: it refuses mount).
fn enter(
    root: &CString,
    binds: &[(CString, CString)],
    proc_dir: &CString,
    drop_caps: &[u32],
    user: Option<(u32, u32)>,
    seccomp: &SeccompProfile,
) -> io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: raw system calls on NUL-terminated strings prepared before fork.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS))?;
        check(libc::mount(null, c"/".as_ptr(), null, libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
        check(libc::mount(root.as_ptr(), root.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
        for (src, dst) in binds {
            check(libc::mount(src.as_ptr(), dst.as_ptr(), null, libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
        }
        check(libc::mount(
            c"proc".as_ptr(),
            proc_dir.as_ptr(),
            c"proc".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        ))?;
        check(libc::chdir(root.as_ptr()))?;
        check(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int)?;
        check(libc::umount2(c".".as_ptr(), libc::MNT_DETACH))?;
        check(libc::chdir(c"/".as_ptr()))?;
        for &cap in drop_caps {
            check(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0))?;
        }
        if let Some((uid, gid)) = user {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
        }
    }
    seccomp.install()
}
