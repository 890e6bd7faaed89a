//! A test helper (built by `cargo test`, static like every binary of the project): placed in
//! an image and run by a Dockerfile RUN, it applies a script of file system operations, one per
//! line, fields separated by tabs, with plain system calls (busybox has no `setfattr`):
//!
//! ```text
//! create PATH TEXT       new file (fails if it exists)      write PATH TEXT    same inode, truncated
//! edit-keep-mtime PATH TEXT  same inode, mtime put back     truncate PATH      to its own size
//! mkdir PATH             rm PATH (recursive)                rename FROM TO
//! chmod PATH OCTAL       chown PATH UID GID                 utime PATH SECONDS
//! setxattr PATH NAME VALUE   rmxattr PATH NAME              link TARGET PATH   symlink TARGET PATH
//! ```
//!
//! The snapshot equivalence test (tests/snapshot_equivalence.rs) generates the scripts.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

fn c(p: &str) -> CString {
    CString::new(Path::new(p).as_os_str().as_bytes()).unwrap()
}

fn check(what: &str, r: libc::c_int) {
    if r != 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
}

fn set_mtime(path: &str, secs: i64, nsec: i64) {
    let t = libc::timespec { tv_sec: secs, tv_nsec: nsec };
    let times = [t, t];
    // SAFETY: valid C string and times.
    check(&format!("utimensat {path}"), unsafe {
        libc::utimensat(libc::AT_FDCWD, c(path).as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    });
}

fn apply(line: &str) {
    let f: Vec<&str> = line.split('\t').collect();
    let ok = |r: std::io::Result<()>| r.unwrap_or_else(|e| panic!("{line}: {e}"));
    let md = |p: &str| fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{line}: {e}"));
    match f.as_slice() {
        ["create", p, text] => ok(fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
            .and_then(|mut o| o.write_all(text.as_bytes()))),
        ["write", p, text] => ok(fs::write(p, text)),
        ["edit-keep-mtime", p, text] => {
            let before = md(p);
            ok(fs::write(p, text));
            set_mtime(p, before.mtime(), before.mtime_nsec());
        }
        ["truncate", p] => {
            let len = md(p).len();
            ok(fs::OpenOptions::new().write(true).open(p).and_then(|o| o.set_len(len)))
        }
        ["mkdir", p] => ok(fs::create_dir(p)),
        ["rm", p] => ok(if md(p).is_dir() { fs::remove_dir_all(p) } else { fs::remove_file(p) }),
        ["rename", from, to] => ok(fs::rename(from, to)),
        ["chmod", p, mode] => {
            ok(fs::set_permissions(p, fs::Permissions::from_mode(u32::from_str_radix(mode, 8).unwrap())))
        }
        ["chown", p, uid, gid] => {
            ok(std::os::unix::fs::lchown(p, Some(uid.parse().unwrap()), Some(gid.parse().unwrap())))
        }
        ["utime", p, secs] => set_mtime(p, secs.parse().unwrap(), 0),
        ["setxattr", p, name, value] => {
            let (p, n) = (c(p), c(name));
            // SAFETY: valid C strings and buffer.
            check(line, unsafe { libc::lsetxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) });
        }
        ["rmxattr", p, name] => {
            let (p, n) = (c(p), c(name));
            // SAFETY: valid C strings.
            check(line, unsafe { libc::lremovexattr(p.as_ptr(), n.as_ptr()) });
        }
        ["link", target, p] => ok(fs::hard_link(target, p)),
        ["symlink", target, p] => ok(std::os::unix::fs::symlink(target, p)),
        _ => panic!("unknown operation: {line}"),
    }
}

fn main() {
    let script = std::env::args().nth(1).expect("usage: fs_ops SCRIPT");
    for line in fs::read_to_string(&script).unwrap().lines().filter(|l| !l.is_empty()) {
        apply(line);
    }
}
