//! Reading the special files of a build context (`.dockerignore`, a `Dockerfile`): the context
//! is an extension's output, so one of them may be a symlink to a host file (`-> /etc/shadow`,
//! read as root, a line of which an error would then quote), a FIFO (the read would hang), a
//! device, or huge. Only a regular file is read, opened without following a symlink at the
//! last component, without blocking, and up to a size limit.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Whether a symlink at the last component is followed (a Dockerfile the user named on the
/// command line) or refused (anything found in a context or an extension's output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Symlinks {
    Follow,
    Refuse,
}

/// The largest `.dockerignore` read.
pub const MAX_DOCKERIGNORE: u64 = 1 << 20;
/// The largest Dockerfile read (here-documents can make them big).
pub const MAX_DOCKERFILE: u64 = 16 << 20;

/// Reads `path` as UTF-8 text if it is a regular file of at most `max` bytes. The error says
/// what the file is instead (a symlink, a FIFO, ...), never what it contains.
pub fn read_text(path: &Path, symlinks: Symlinks, max: u64) -> io::Result<String> {
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    if symlinks == Symlinks::Refuse {
        flags |= libc::O_NOFOLLOW;
    }
    let file = match File::options().read(true).custom_flags(flags).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "is a symbolic link, which is refused here (it must be a regular file)",
            ));
        }
        other => other?,
    };
    let md = file.metadata()?;
    let ft = md.file_type();
    let kind = if ft.is_file() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() || ft.is_block_device() {
        Some("a device")
    } else {
        Some("not a regular file")
    };
    if let Some(kind) = kind {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is {kind}, not a regular file")));
    }
    if md.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {} bytes, more than the {} MiB allowed", md.len(), max >> 20),
        ));
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("is more than {} MiB", max >> 20)));
    }
    String::from_utf8(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "is not UTF-8 text"))
}

/// Copies the regular file `src` (not followed if it is a symlink, refused if it turned into
/// anything else since the context was indexed) to a new file `dst`.
pub fn copy_regular(src: &Path, dst: &Path) -> io::Result<u64> {
    let flags = libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW;
    let mut from = File::options().read(true).custom_flags(flags).open(src)?;
    if !from.metadata()?.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "is no longer a regular file"));
    }
    let mut to = File::options().write(true).create_new(true).mode(0o600).open(dst)?;
    io::copy(&mut from, &mut to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        std::fs::write(p("ok"), "node_modules\n").unwrap();
        std::fs::write(p("secret"), "root:$6$hash\n").unwrap();
        std::os::unix::fs::symlink(p("secret"), p("link")).unwrap();
        let fifo = std::ffi::CString::new(p("fifo").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        std::fs::create_dir(p("dir")).unwrap();
        std::fs::write(p("big"), vec![b'x'; 100]).unwrap();
        std::fs::write(p("binary"), b"\xff\xfe").unwrap();
        assert_eq!(read_text(&p("ok"), Symlinks::Refuse, 1 << 20).unwrap(), "node_modules\n");
        assert_eq!(read_text(&p("link"), Symlinks::Follow, 1 << 20).unwrap(), "root:$6$hash\n");
        let cases = [
            ("link", "symbolic link"),
            ("fifo", "is a FIFO"),
            ("dir", "is a directory"),
            ("big", "more than"),
            ("binary", "not UTF-8"),
        ];
        for (name, want) in cases {
            let e = read_text(&p(name), Symlinks::Refuse, 50).unwrap_err().to_string();
            assert!(e.contains(want) && !e.contains("root:"), "{name}: {e}");
        }
        assert_eq!(read_text(&p("missing"), Symlinks::Refuse, 50).unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
