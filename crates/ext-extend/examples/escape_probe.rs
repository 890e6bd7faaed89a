//! A test helper (built by `cargo test`, static like every binary of the project): placed in
//! an image and run by a Dockerfile RUN, it tries the classic ways out of a sandbox and prints
//! one `name: result` line each, for the hardening tests (crates/ext-extend/tests/sandbox.rs).
//!
//! `escape_probe HOST_FILE` tries to append a line to `HOST_FILE`, a path on the build host:
//! directly, after a `chroot` + `chdir("..")` climb (the chroot escape), and through
//! `/proc/1/root`; then `mount`, `unshare`, writing kernel settings through `/proc` (it only
//! opens them for writing: nothing is written even where that is allowed), reading kernel
//! memory from `/proc/kcore`, a raw socket, and reports its effective uid and capabilities.

use std::ffi::CString;
use std::io::Write;

fn errno() -> String {
    std::io::Error::last_os_error().to_string()
}

fn try_append(path: &str) -> String {
    match std::fs::OpenOptions::new().append(true).open(path) {
        Ok(mut f) => match f.write_all(b"escaped\n") {
            Ok(()) => "WROTE".into(),
            Err(e) => format!("write failed: {e}"),
        },
        Err(e) => format!("refused: {e}"),
    }
}

/// Opens `path` for writing and closes it again without writing a byte.
fn try_open_for_write(path: &str) -> String {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => "OPENED FOR WRITING".into(),
        Err(e) => format!("refused: {e}"),
    }
}

fn try_read(path: &str) -> String {
    use std::io::Read;
    let mut buf = [0u8; 64];
    match std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)) {
        Ok(0) => "empty".into(),
        Ok(n) => format!("READ {n} bytes"),
        Err(e) => format!("refused: {e}"),
    }
}

fn main() {
    let host_file = std::env::args().nth(1).expect("usage: escape_probe HOST_FILE");
    // SAFETY (whole function): plain system calls on valid C strings.
    unsafe {
        println!("euid: {}", libc::geteuid());
        let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        println!("uid_map: {}", uid_map.split_whitespace().collect::<Vec<_>>().join(" "));
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        for key in ["CapEff:", "CapBnd:", "NoNewPrivs:", "Seccomp:"] {
            if let Some(l) = status.lines().find(|l| l.starts_with(key)) {
                println!("{}", l.replace('\t', " "));
            }
        }
        println!("direct: {}", try_append(&host_file));
        println!("proc-root: {}", try_append(&format!("/proc/1/root{host_file}")));
        let jail = CString::new("/.escape-probe-jail").unwrap();
        libc::mkdir(jail.as_ptr(), 0o755);
        if libc::chroot(jail.as_ptr()) != 0 {
            println!("chroot: refused: {}", errno());
        } else {
            for _ in 0..64 {
                libc::chdir(c"..".as_ptr());
            }
            libc::chroot(c".".as_ptr());
            println!("chroot-climb: {}", try_append(&host_file));
        }
        let r = libc::mount(c"none".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null());
        println!("mount: {}", if r == 0 { "MOUNTED".to_string() } else { format!("refused: {}", errno()) });
        let r = libc::unshare(libc::CLONE_NEWNS);
        println!("unshare: {}", if r == 0 { "UNSHARED".to_string() } else { format!("refused: {}", errno()) });
        println!("core_pattern: {}", try_open_for_write("/proc/sys/kernel/core_pattern"));
        println!("drop_caches: {}", try_open_for_write("/proc/sys/vm/drop_caches"));
        println!("sysrq-trigger: {}", try_open_for_write("/proc/sysrq-trigger"));
        println!("kcore: {}", try_read("/proc/kcore"));
        println!("timer_list: {}", try_read("/proc/timer_list"));
        let fd = libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP);
        println!("raw-socket: {}", if fd >= 0 { "OPENED".to_string() } else { format!("refused: {}", errno()) });
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        println!("packet-socket: {}", if fd >= 0 { "OPENED".to_string() } else { format!("refused: {}", errno()) });
    }
}
