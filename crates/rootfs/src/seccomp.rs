//! Seccomp filters: deny lists of system calls, answered with `EPERM`, compiled to BPF with
//! `seccompiler` (pure Rust, so the static binary links no libseccomp).
//!
//! Two places need one, and both use this module:
//! - the unprivileged-container harness of the tests imitates what Docker's default profile
//!   refuses to a container without `CAP_SYS_ADMIN` ([`SeccompProfile::docker_default`]), so
//!   the drop-in `extender` is tested where pack really runs it;
//! - the RUN sandbox refuses what could undo its isolation.
//!
//! A filter can only look at system-call arguments passed in registers, so namespace flags
//! are refused on `clone` by value, and `clone3` (whose flags sit in a struct in memory) answers
//! `ENOSYS`, which makes libc fall back to `clone`: Docker does the same.

use std::collections::BTreeMap;
use std::io;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// `clone` flags that create namespaces.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
    0x80, // CLONE_NEWTIME
];

/// System calls Docker's default profile refuses to a container that lacks `CAP_SYS_ADMIN`
/// (and the other capabilities a default container does not have), as far as they matter to
/// a build: mounting, namespaces, root switching, kernel modules and keyrings, raw handles.
pub const DOCKER_DENIED: &[libc::c_long] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_keyctl,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_quotactl,
    libc::SYS_userfaultfd,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_lookup_dcookie,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
];

/// A compiled set of filters, ready to install (installing allocates nothing, so it may run
/// between `fork` and `exec`).
#[derive(Debug, Clone)]
pub struct SeccompProfile {
    programs: Vec<BpfProgram>,
}

/// A filter could not be compiled (a bug in the deny list, not a runtime condition).
#[derive(Debug, thiserror::Error)]
#[error("seccomp filter: {0}")]
pub struct SeccompError(String);

impl SeccompProfile {
    /// Refuses `denied` with `EPERM`; with `namespace_clone`, also `clone` with any namespace
    /// flag (`EPERM`) and `clone3` (`ENOSYS`, so libc retries with `clone`).
    pub fn deny(denied: &[libc::c_long], namespace_clone: bool) -> Result<SeccompProfile, SeccompError> {
        let err = |e: seccompiler::BackendError| SeccompError(e.to_string());
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = denied.iter().map(|&nr| (nr, Vec::new())).collect();
        let mut programs = Vec::new();
        if namespace_clone {
            let flag_rules = NAMESPACE_FLAGS
                .iter()
                .map(|&flag| {
                    let flag = flag as u64;
                    let cond = SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag)
                        .map_err(err)?;
                    SeccompRule::new(vec![cond]).map_err(err)
                })
                .collect::<Result<Vec<_>, _>>()?;
            rules.insert(libc::SYS_clone, flag_rules);
            let clone3 = SeccompFilter::new(
                BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                ARCH,
            )
            .map_err(err)?;
            programs.push(BpfProgram::try_from(clone3).map_err(err)?);
        }
        let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), ARCH)
            .map_err(err)?;
        programs.push(BpfProgram::try_from(filter).map_err(err)?);
        Ok(SeccompProfile { programs })
    }

    /// What Docker's default profile refuses to a container without `CAP_SYS_ADMIN`.
    pub fn docker_default() -> SeccompProfile {
        SeccompProfile::deny(DOCKER_DENIED, true).expect("the built-in deny list compiles")
    }

    /// Sets `no_new_privs` (required to install a filter without `CAP_SYS_ADMIN`, and what
    /// keeps setuid binaries from gaining privileges) and installs the filters on the calling
    /// thread; they are inherited by children and kept across `execve`.
    ///
    /// Async-signal-safe: only `prctl` and `seccomp` system calls on prepared data.
    pub fn install(&self) -> io::Result<()> {
        // SAFETY: raw system calls; each program outlives the call, and the kernel copies it.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            for program in &self.programs {
                let fprog = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
                let rc = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &fprog as *const libc::sock_fprog,
                );
                if rc != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` in a forked child with the profile installed; returns the child's exit code.
    fn in_child(profile: &SeccompProfile, f: fn() -> i32) -> i32 {
        // SAFETY: the child only installs the filter, makes raw system calls and _exits.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if profile.install().is_err() {
                    libc::_exit(100);
                }
                libc::_exit(f());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "child died: {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno() -> i32 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn denied_calls_fail_with_eperm_and_others_work() {
        let p = SeccompProfile::docker_default();
        // unshare(0) is a no-op that succeeds without a filter, whatever our privileges.
        let code = in_child(&p, || unsafe {
            if libc::unshare(0) == 0 {
                return 1;
            }
            if errno() != libc::EPERM {
                return 2;
            }
            if libc::getpid() <= 0 {
                return 3;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn clone_with_namespace_flags_is_refused_and_clone3_says_enosys() {
        let p = SeccompProfile::docker_default();
        let code = in_child(&p, || unsafe {
            let r =
                libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::SIGCHLD) as u64, 0u64, 0u64, 0u64, 0u64);
            if r >= 0 {
                if r == 0 {
                    libc::_exit(0);
                }
                return 1;
            }
            if errno() != libc::EPERM {
                return 2;
            }
            let r = libc::syscall(libc::SYS_clone3, 0u64, 0u64);
            if r >= 0 || errno() != libc::ENOSYS {
                return 3;
            }
            // A plain fork still works.
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(7);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 7 {
                return 4;
            }
            0
        });
        assert_eq!(code, 0);
    }
}
