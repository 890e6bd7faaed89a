//! Resource bounds of the unpacker: header bombs (GNU long names, PAX records), disk and inode
//! exhaustion (gzip bombs, floods of empty files), and untrusted names in messages.

use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use ext_rootfs::{UnpackError, UnpackOptions, WhiteoutMode, unpack_layer};

fn opts() -> UnpackOptions {
    UnpackOptions { whiteouts: WhiteoutMode::Apply, layer_name: "sha256:bomb".into(), filter: None }
}

/// A ustar header block.
fn header(name: &[u8], kind: u8, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[257..265].copy_from_slice(b"ustar  \0");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar stream whose first entry is a metadata entry (`kind` `L` or `x`) claiming `size`
/// bytes, followed by a plain file; the body is generated, never held in memory here.
fn bomb(kind: u8, size: u64, fill: u8) -> impl Read {
    let padded = size.div_ceil(512) * 512;
    io::Cursor::new(header(b"././@LongLink", kind, size).to_vec())
        .chain(io::repeat(fill).take(padded))
        .chain(io::Cursor::new(header(b"file", b'0', 0).to_vec()))
        .chain(io::repeat(0).take(1024))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn gnu_long_name_bomb_is_refused_without_buffering_it() {
    let root = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let err = unpack_layer(root.path(), bomb(b'L', 256 << 20, b'a'), &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UnpackError::Tar { .. }), "{msg:.300}");
    assert!(msg.contains("GNU long names, PAX records) exceed 4 MiB"), "{msg:.300}");
    assert!(started.elapsed().as_secs() < 20);
    // The 256 MiB name was never held (the test process stays far below it).
    assert!(rss_kib() < 200 * 1024, "peak RSS {} KiB", rss_kib());
}

#[test]
fn pax_bomb_is_refused() {
    let root = tempfile::tempdir().unwrap();
    // One enormous PAX record (`<len> path=aaaa...`), as the header says.
    let size: u64 = 64 << 20;
    let record_head = format!("{size} path=");
    let body = io::Cursor::new(record_head.into_bytes()).chain(io::repeat(b'a'));
    let stream = io::Cursor::new(header(b"PaxHeaders/x", b'x', size).to_vec())
        .chain(body.take(size.div_ceil(512) * 512))
        .chain(io::Cursor::new(header(b"file", b'0', 0).to_vec()))
        .chain(io::repeat(0).take(1024));
    let msg = unpack_layer(root.path(), stream, &opts()).unwrap_err().to_string();
    assert!(msg.contains("exceed 4 MiB"), "{msg:.300}");
}

/// A size-limited tmpfs mounted on a fresh directory (as root; tests run as root in CI).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn mount(options: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), nix::mount::MsFlags::empty(), Some(options))
            .expect("mount tmpfs (tests need root)");
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> (u64, u64) {
        let st = nix::sys::statvfs::statvfs(self.path()).unwrap();
        (st.blocks_available() as u64 * st.fragment_size() as u64, st.files_available() as u64)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_layer_larger_than_the_disk_stops_before_filling_it() {
    let fs = SmallFs::mount("size=32m");
    // What a gzip bomb decompresses to: a 200 MiB file (zeros, streamed).
    let size: u64 = 200 << 20;
    let stream = io::Cursor::new(header(b"big", b'0', size).to_vec())
        .chain(io::repeat(0).take(size))
        .chain(io::repeat(0).take(1024));
    let err = unpack_layer(fs.path(), stream, &opts()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, UnpackError::NoSpace { .. }), "{msg}");
    assert!(msg.contains("the scratch filesystem is nearly full") && msg.contains("entry `big`"), "{msg}");
    let (free, _) = fs.free();
    assert!(free >= 2 << 20, "only {free} bytes left: the disk was filled");
}

#[test]
fn a_flood_of_empty_files_stops_before_the_inodes_run_out() {
    let fs = SmallFs::mount("size=64m,nr_inodes=3000");
    let mut tar = Vec::new();
    for i in 0..5000 {
        tar.extend_from_slice(&header(format!("f{i}").as_bytes(), b'0', 0));
    }
    tar.extend_from_slice(&[0; 1024]);
    let err = unpack_layer(fs.path(), &tar[..], &opts()).unwrap_err();
    assert!(matches!(err, UnpackError::NoSpace { .. }), "{err}");
    let (_, inodes) = fs.free();
    assert!(inodes >= 100, "only {inodes} inodes left");
}

#[test]
fn names_with_escape_sequences_are_escaped_in_messages() {
    let root = tempfile::tempdir().unwrap();
    let mut tar = header(b"../\x1b[2J\x1b[31mevil\r\xff", b'0', 0).to_vec();
    tar.extend_from_slice(&[0; 1024]);
    let msg = unpack_layer(root.path(), &tar[..], &opts()).unwrap_err().to_string();
    assert!(msg.contains(r"../\e[2J\e[31mevil\r\xff"), "{msg:?}");
    assert!(!msg.contains('\x1b') && !msg.contains('\r'), "{msg:?}");
}
