//! Behaviour of `unpack_layer` on well-formed and hostile layers, with tar streams built in
//! memory. Tests that need privileges (devices, foreign uids, `trusted.*`, capabilities)
//! print a note and skip those checks when not run as root.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use ext_rootfs::{EscapeKind, UnpackError, UnpackOptions, UnpackStats, UnsafeReason, WhiteoutMode, unpack_layer};
use tar::{Builder, EntryType, Header};

const MTIME: u64 = 1_600_000_000;
const LAYER: &str = "sha256:abcdef0123";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn skip_note(what: &str) {
    eprintln!("note: not root, skipping {what}");
}

/// Builds a layer in memory. Headers default to the current euid/egid so most tests also
/// run unprivileged.
struct Layer {
    b: Builder<Vec<u8>>,
}

fn hdr(kind: EntryType, mode: u32) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(nix::unistd::geteuid().as_raw().into());
    h.set_gid(nix::unistd::getegid().as_raw().into());
    h.set_mtime(MTIME);
    h.set_size(0);
    h
}

impl Layer {
    fn new() -> Self {
        let mut b = Builder::new(Vec::new());
        b.preserve_absolute(true);
        Layer { b }
    }

    fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_h(path, data, |_| {})
    }

    fn file_h(mut self, path: &str, data: &[u8], f: impl FnOnce(&mut Header)) -> Self {
        let mut h = hdr(EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        f(&mut h);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    fn dir(self, path: &str, mode: u32) -> Self {
        self.dir_h(path, mode, |_| {})
    }

    fn dir_h(mut self, path: &str, mode: u32, f: impl FnOnce(&mut Header)) -> Self {
        let mut h = hdr(EntryType::Directory, mode);
        f(&mut h);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn symlink(self, path: &str, target: &str) -> Self {
        self.symlink_h(path, target, |_| {})
    }

    fn symlink_h(mut self, path: &str, target: &str, f: impl FnOnce(&mut Header)) -> Self {
        let mut h = hdr(EntryType::Symlink, 0o777);
        f(&mut h);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = hdr(EntryType::Link, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    fn node(mut self, path: &str, kind: EntryType, major: u32, minor: u32) -> Self {
        let mut h = hdr(kind, 0o640);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.b.append_pax_extensions(records.iter().copied()).unwrap();
        self
    }

    /// An entry with name bytes written straight into the header, for names `Builder`
    /// refuses (`..`).
    fn raw(mut self, name: &[u8], kind: EntryType, link: Option<&[u8]>, data: &[u8]) -> Self {
        let mut h = hdr(kind, 0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn bytes(self) -> Vec<u8> {
        self.b.into_inner().unwrap()
    }
}

fn unpack_mode(root: &Path, layer: &[u8], mode: WhiteoutMode) -> Result<UnpackStats, UnpackError> {
    let opts = UnpackOptions { whiteouts: mode, layer_name: LAYER.to_owned(), filter: None };
    unpack_layer(root, layer, &opts)
}

fn unpack(root: &Path, layer: &[u8]) -> Result<UnpackStats, UnpackError> {
    unpack_mode(root, layer, WhiteoutMode::Apply)
}

/// A root next to a sentinel directory the hostile layers aim at.
struct Fixture {
    base: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir_all(outside.join("b")).unwrap();
        fs::set_permissions(outside.join("b"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::write(outside.join("passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        fs::write(outside.join("file"), "precious\n").unwrap();
        Fixture { base, root, outside }
    }

    fn outside_str(&self) -> String {
        self.outside.to_str().unwrap().to_owned()
    }

    /// Everything under the base directory except the root: the sentinel plus any stray
    /// file an escaping entry might have created next to the root.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        for e in walkdir::WalkDir::new(self.base.path()).follow_links(false) {
            let e = e.unwrap();
            if e.path().starts_with(&self.root) {
                continue;
            }
            let md = e.path().symlink_metadata().unwrap();
            let content = if md.file_type().is_file() {
                String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned()
            } else if md.file_type().is_symlink() {
                fs::read_link(e.path()).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.insert(
                e.path().to_path_buf(),
                format!(
                    "{:o} {}:{} {}.{} {} {content}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.len()
                ),
            );
        }
        out
    }
}

fn mtime(p: &Path) -> i64 {
    p.symlink_metadata().unwrap().mtime()
}

// ---------------------------------------------------------------------------------------
// Well-formed layers
// ---------------------------------------------------------------------------------------

#[test]
fn basic_entry_types() {
    let fx = Fixture::new();
    let mut layer = Layer::new()
        .dir("./etc/", 0o755)
        .file("./etc/hosts", b"127.0.0.1 localhost\n")
        .symlink("./etc/link", "hosts")
        .hardlink("./etc/hard", "./etc/hosts")
        .file("deep/missing/parents/f", b"x");
    if is_root() {
        layer = layer.node("dev/null", EntryType::Char, 1, 3).node("dev/loop0", EntryType::Block, 7, 0);
    }
    let layer = layer.node("run/fifo", EntryType::Fifo, 0, 0).bytes();
    let stats = unpack(&fx.root, &layer).unwrap();
    let r = &fx.root;

    assert_eq!(fs::read(r.join("etc/hosts")).unwrap(), b"127.0.0.1 localhost\n");
    assert_eq!(fs::read_link(r.join("etc/link")).unwrap(), Path::new("hosts"));
    let hard = r.join("etc/hard").symlink_metadata().unwrap();
    assert_eq!(hard.nlink(), 2);
    assert_eq!(hard.ino(), r.join("etc/hosts").symlink_metadata().unwrap().ino());
    assert!(r.join("run/fifo").symlink_metadata().unwrap().file_type().is_fifo());
    // Implicit parents are 0755.
    let parent = r.join("deep/missing").symlink_metadata().unwrap();
    assert!(parent.is_dir());
    assert_eq!(parent.mode() & 0o7777, 0o755);

    if is_root() {
        let null = r.join("dev/null").symlink_metadata().unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o640);
        let lp = r.join("dev/loop0").symlink_metadata().unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), nix::sys::stat::makedev(7, 0));
        assert_eq!(stats.entries, 8);
    } else {
        skip_note("char/block device entries");
        assert_eq!(stats.entries, 6);
    }
    assert_eq!(stats.bytes, 21);
    assert_eq!(stats.whiteouts, 0);
}

#[test]
fn modes_including_special_bits() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .file_h("bin/su", b"#!", |h| h.set_mode(0o4755))
        .file_h("bin/wall", b"#!", |h| h.set_mode(0o2711))
        .dir("tmp", 0o1777)
        .dir("secret", 0o500)
        .file("secret/inner", b"s")
        .node("fifo", EntryType::Fifo, 0, 0)
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    let mode = |p: &str| fx.root.join(p).symlink_metadata().unwrap().mode() & 0o7777;
    assert_eq!(mode("bin/su"), 0o4755);
    assert_eq!(mode("bin/wall"), 0o2711);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("secret"), 0o500);
    assert_eq!(mode("fifo"), 0o640);
}

#[test]
fn ownership() {
    if !is_root() {
        skip_note("uid/gid test");
        return;
    }
    let fx = Fixture::new();
    let owned = |uid: u64, gid: u64| {
        move |h: &mut Header| {
            h.set_uid(uid);
            h.set_gid(gid);
        }
    };
    let layer = Layer::new()
        .dir_h("home/u", 0o750, owned(1000, 1001))
        .file_h("home/u/f", b"x", owned(1000, 1001))
        // setuid must survive the chown that precedes chmod.
        .file_h("home/u/suid", b"x", |h| {
            h.set_uid(1234);
            h.set_gid(5678);
            h.set_mode(0o6755);
        })
        .symlink_h("home/u/l", "f", owned(42, 43))
        // PAX uid/gid beyond the octal header range.
        .pax(&[("uid", b"3000000"), ("gid", b"3000001")])
        .file("home/big", b"x")
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    let own = |p: &str| {
        let md = fx.root.join(p).symlink_metadata().unwrap();
        (md.uid(), md.gid())
    };
    assert_eq!(own("home/u"), (1000, 1001));
    assert_eq!(own("home/u/f"), (1000, 1001));
    assert_eq!(own("home/u/suid"), (1234, 5678));
    assert_eq!(own("home/u/l"), (42, 43));
    assert_eq!(own("home/big"), (3_000_000, 3_000_001));
    assert_eq!(own("home"), (0, 0));
    let suid = fx.root.join("home/u/suid").symlink_metadata().unwrap();
    assert_eq!(suid.mode() & 0o7777, 0o6755);
}

#[test]
fn mtimes_of_files_symlinks_and_dirs() {
    let fx = Fixture::new();
    let t = |v: u64| move |h: &mut Header| h.set_mtime(v);
    let layer = Layer::new()
        .dir_h("d", 0o755, t(1_000_000))
        .dir_h("d/sub", 0o755, t(1_100_000))
        // Children written after their directory entries must not bump its mtime.
        .file_h("d/f", b"x", t(2_000_000))
        .symlink_h("d/l", "f", t(3_000_000))
        .file_h("d/sub/g", b"y", t(4_000_000))
        .node("d/sub/p", EntryType::Fifo, 0, 0)
        // Sub-second precision from the PAX record.
        .pax(&[("mtime", b"1500000000.25")])
        .file("d/precise", b"z")
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    let r = &fx.root;
    assert_eq!(mtime(&r.join("d")), 1_000_000);
    assert_eq!(mtime(&r.join("d/sub")), 1_100_000);
    assert_eq!(mtime(&r.join("d/f")), 2_000_000);
    assert_eq!(mtime(&r.join("d/l")), 3_000_000);
    assert_eq!(mtime(&r.join("d/sub/g")), 4_000_000);
    assert_eq!(mtime(&r.join("d/sub/p")), MTIME as i64);
    let p = r.join("d/precise").symlink_metadata().unwrap();
    assert_eq!((p.mtime(), p.mtime_nsec()), (1_500_000_000, 250_000_000));
    // atime = mtime
    assert_eq!(r.join("d/f").symlink_metadata().unwrap().atime(), 2_000_000);
}

#[test]
fn xattrs() {
    let fx = Fixture::new();
    // File capability v2: cap_net_bind_service (bit 10) permitted + effective.
    let cap: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut layer = Layer::new()
        .pax(&[("SCHILY.xattr.user.test", b"hello")])
        .file("f", b"data")
        .pax(&[("SCHILY.xattr.user.dir", b"d")])
        .dir("d", 0o755)
        // user.* on a symlink is refused by Linux: must be a warning, not an error.
        .pax(&[("SCHILY.xattr.user.onlink", b"x")])
        .symlink("l", "f");
    if is_root() {
        layer =
            layer.pax(&[("SCHILY.xattr.security.capability", &cap[..])]).file_h("ping", b"elf", |h| h.set_mode(0o755));
    }
    unpack(&fx.root, &layer.bytes()).unwrap();

    let probe = fx.base.path().join("probe");
    fs::write(&probe, "").unwrap();
    if xattr::set(&probe, "user.probe", b"1").is_err() {
        eprintln!("note: filesystem lacks user xattrs, skipping user.* checks");
    } else {
        assert_eq!(xattr::get(fx.root.join("f"), "user.test").unwrap().as_deref(), Some(&b"hello"[..]));
        assert_eq!(xattr::get(fx.root.join("d"), "user.dir").unwrap().as_deref(), Some(&b"d"[..]));
    }
    fs::remove_file(&probe).unwrap();

    if is_root() {
        assert_eq!(xattr::get(fx.root.join("ping"), "security.capability").unwrap().as_deref(), Some(&cap[..]));
    } else {
        skip_note("security.capability");
    }
}

#[test]
fn whiteouts_apply_mode() {
    let fx = Fixture::new();
    let l1 = Layer::new()
        .dir("a", 0o755)
        .file("a/file1", b"1")
        .file("a/keep", b"k")
        .dir("a/dir1", 0o755)
        .file("a/dir1/x", b"x")
        .dir("opq", 0o755)
        .file("opq/old1", b"o")
        .dir("opq/sub", 0o755)
        .file("opq/sub/old2", b"o")
        .dir("opq2", 0o755)
        .file("opq2/old", b"o")
        .bytes();
    unpack(&fx.root, &l1).unwrap();

    let l2 = Layer::new()
        .file("a/.wh.file1", b"")
        .file("a/.wh.dir1", b"")
        .file("a/.wh.never-existed", b"")
        .file("gone/.wh.x", b"")
        // Children of this layer come BEFORE the opaque marker and must survive it.
        .file("opq/new", b"n")
        .file("opq/sub/new2", b"n")
        .file("opq/.wh..wh..opq", b"")
        .file("opq/later", b"l")
        // Marker first, then the new content.
        .dir("opq2", 0o755)
        .file("opq2/.wh..wh..opq", b"")
        .file("opq2/new", b"n")
        .bytes();
    let stats = unpack(&fx.root, &l2).unwrap();
    let r = &fx.root;
    let exists = |p: &str| r.join(p).symlink_metadata().is_ok();

    assert_eq!(stats.whiteouts, 6);
    assert!(!exists("a/file1"));
    assert!(!exists("a/dir1"));
    assert!(exists("a/keep"));
    assert!(!exists("a/.wh.file1"));
    assert!(!exists("gone"), "whiteout in Apply mode must not create parents");
    assert!(!exists("opq/old1"));
    assert!(!exists("opq/sub/old2"));
    assert!(exists("opq/new"));
    assert!(exists("opq/sub/new2"));
    assert!(exists("opq/later"));
    assert!(!exists("opq/.wh..wh..opq"));
    assert!(!exists("opq2/old"));
    assert!(exists("opq2/new"));
}

#[test]
fn whiteouts_overlay_mode() {
    if !is_root() {
        skip_note("Overlay mode (mknod and trusted.* need root)");
        return;
    }
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("etc", 0o755)
        .file("etc/.wh.motd", b"")
        .file("var/cache/.wh..wh..opq", b"")
        .file("var/cache/fresh", b"f")
        .bytes();
    let stats = unpack_mode(&fx.root, &layer, WhiteoutMode::Overlay).unwrap();
    assert_eq!(stats.whiteouts, 2);
    let wh = fx.root.join("etc/motd").symlink_metadata().unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(xattr::get(fx.root.join("var/cache"), "trusted.overlay.opaque").unwrap().as_deref(), Some(&b"y"[..]));
    assert!(fx.root.join("var/cache/fresh").exists());
    assert!(!fx.root.join("etc/.wh.motd").exists());
}

#[test]
fn replace_file_by_dir_and_dir_by_file() {
    let fx = Fixture::new();
    let l1 = Layer::new()
        .file("was-file", b"f")
        .dir("was-dir", 0o755)
        .file("was-dir/child", b"c")
        .dir("stays-dir", 0o700)
        .file("stays-dir/child", b"c")
        .bytes();
    unpack(&fx.root, &l1).unwrap();
    let l2 = Layer::new()
        .dir("was-file", 0o755)
        .file("was-file/inner", b"i")
        .file("was-dir", b"now a file")
        .dir_h("stays-dir", 0o755, |h| h.set_mtime(12345))
        .bytes();
    unpack(&fx.root, &l2).unwrap();
    let r = &fx.root;
    assert!(r.join("was-file").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(r.join("was-file/inner")).unwrap(), b"i");
    assert_eq!(fs::read(r.join("was-dir")).unwrap(), b"now a file");
    // A directory entry over an existing directory keeps the children, updates metadata.
    assert_eq!(fs::read(r.join("stays-dir/child")).unwrap(), b"c");
    let sd = r.join("stays-dir").symlink_metadata().unwrap();
    assert_eq!(sd.mode() & 0o7777, 0o755);
    assert_eq!(sd.mtime(), 12345);
}

#[test]
fn missing_end_of_archive() {
    let fx = Fixture::new();
    let mut layer = Layer::new().dir("d", 0o755).file("d/f", b"hello").bytes();
    // Builder appends two zero blocks; umoci-style layers stop right after the last entry.
    assert!(layer[layer.len() - 1024..].iter().all(|b| *b == 0));
    layer.truncate(layer.len() - 1024);
    let stats = unpack(&fx.root, &layer).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(fs::read(fx.root.join("d/f")).unwrap(), b"hello");

    // A stream cut inside file data or inside a header is still an error.
    let big = Layer::new().file("f", &[7u8; 2000]).file("g", b"g").bytes();
    let fx2 = Fixture::new();
    let err = unpack(&fx2.root, &big[..512 + 1000]).unwrap_err();
    assert!(matches!(err, UnpackError::Io { .. }), "{err}");
    let err = unpack(&fx2.root, &big[..512 + 2048 + 100]).unwrap_err();
    assert!(matches!(err, UnpackError::Tar { .. }), "{err}");
    eprintln!("{err}");
}

#[test]
fn root_entries_are_skipped() {
    let fx = Fixture::new();
    let before = fx.root.symlink_metadata().unwrap().mode();
    let layer = Layer::new()
        .dir("./", 0o700)
        .raw(b".", EntryType::Directory, None, b"")
        .raw(b"/", EntryType::Directory, None, b"")
        .raw(b"", EntryType::Directory, None, b"")
        .file("./a", b"a")
        .bytes();
    let stats = unpack(&fx.root, &layer).unwrap();
    assert_eq!(stats.entries, 1);
    assert_eq!(fx.root.symlink_metadata().unwrap().mode(), before);
    assert!(fx.root.join("a").is_file());
}

#[test]
fn long_names() {
    let fx = Fixture::new();
    let long_dir = "d".repeat(120);
    let long = format!("{long_dir}/{}", "f".repeat(150));
    let pax_name = format!("{long_dir}/{}", "p".repeat(150));
    let link_target = long.clone();
    let layer = Layer::new()
        // GNU long name (`././@LongLink`) written by Builder.
        .file(&long, b"gnu")
        // PAX path record overriding a dummy header name.
        .pax(&[("path", pax_name.as_bytes())])
        .file("dummy", b"pax")
        // Long link target via PAX linkpath.
        .pax(&[("linkpath", link_target.as_bytes())])
        .symlink("short-link", "dummy")
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    assert_eq!(fs::read(fx.root.join(&long)).unwrap(), b"gnu");
    assert_eq!(fs::read(fx.root.join(&pax_name)).unwrap(), b"pax");
    assert!(!fx.root.join("dummy").exists());
    assert_eq!(fs::read_link(fx.root.join("short-link")).unwrap(), Path::new(&link_target));
}

#[test]
fn relative_symlink_in_parent_is_followed_inside_root() {
    let fx = Fixture::new();
    let layer = Layer::new()
        .dir("usr", 0o755)
        .dir("usr/lib", 0o755)
        .symlink("lib", "usr/lib")
        .file("lib/x.so", b"elf")
        // `..` inside the root is fine.
        .symlink("usr/lib/up", "../../usr")
        .file("usr/lib/up/y", b"y")
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    assert_eq!(fs::read(fx.root.join("usr/lib/x.so")).unwrap(), b"elf");
    assert!(fx.root.join("lib").symlink_metadata().unwrap().file_type().is_symlink());
    assert_eq!(fs::read(fx.root.join("usr/y")).unwrap(), b"y");
}

#[test]
fn hardlink_to_symlink_and_self() {
    let fx = Fixture::new();
    let layer = Layer::new().symlink("l", "/etc/shadow").hardlink("l2", "l").file("f", b"f").hardlink("f", "f").bytes();
    unpack(&fx.root, &layer).unwrap();
    let l2 = fx.root.join("l2").symlink_metadata().unwrap();
    assert!(l2.file_type().is_symlink());
    assert_eq!(l2.nlink(), 2);
    assert_eq!(fs::read(fx.root.join("f")).unwrap(), b"f");
}

#[test]
fn unsupported_hardlink_targets() {
    let fx = Fixture::new();
    let layer = Layer::new().dir("d", 0o755).hardlink("x", "d").bytes();
    assert!(matches!(unpack(&fx.root, &layer), Err(UnpackError::BadHardLink { .. })));
    let layer = Layer::new().hardlink("x", "missing").bytes();
    let err = unpack(&fx.root, &layer).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardLink { .. }), "{err}");
    assert!(err.to_string().contains(LAYER), "{err}");
}

// ---------------------------------------------------------------------------------------
// Hostile layers. Each asserts the error variant and that nothing outside the root moved.
// ---------------------------------------------------------------------------------------

fn assert_hostile(fx: &Fixture, layers: &[Vec<u8>], check: impl FnOnce(&UnpackError)) {
    let before = fx.snapshot();
    let (last, earlier) = layers.split_last().unwrap();
    for l in earlier {
        unpack(&fx.root, l).unwrap();
    }
    let err = unpack(&fx.root, last).expect_err("hostile layer must be refused");
    eprintln!("refused as expected: {err}");
    assert!(err.to_string().contains(LAYER), "error must name the layer: {err}");
    check(&err);
    assert_eq!(before, fx.snapshot(), "something outside the root changed");
}

fn unsafe_reason(err: &UnpackError) -> UnsafeReason {
    match err {
        UnpackError::UnsafePath { reason, .. } => *reason,
        other => panic!("expected UnsafePath, got {other:?}"),
    }
}

fn escape(err: &UnpackError) -> (EscapeKind, PathBuf, PathBuf) {
    match err {
        UnpackError::SymlinkEscape { kind, symlink, entry, .. } => (*kind, symlink.clone(), entry.clone()),
        other => panic!("expected SymlinkEscape, got {other:?}"),
    }
}

#[test]
fn hostile_dotdot_name() {
    let fx = Fixture::new();
    let layer = Layer::new().raw(b"../escape", EntryType::Regular, None, b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| {
        assert_eq!(unsafe_reason(e), UnsafeReason::ParentDir);
        assert!(e.to_string().contains("`../escape`"), "{e}");
    });
    let layer = Layer::new().raw(b"../outside/file", EntryType::Regular, None, b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::ParentDir));
}

#[test]
fn hostile_absolute_name() {
    let fx = Fixture::new();
    let layer = Layer::new().file("/abs/path", b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::Absolute));
    let target = format!("{}/file", fx.outside_str());
    let layer = Layer::new().file(&target, b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::Absolute));
}

#[test]
fn hostile_interior_dotdot() {
    let fx = Fixture::new();
    let layer = Layer::new().raw(b"a/../../x", EntryType::Regular, None, b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::ParentDir));
    // Same through a PAX path record, which `tar` passes through unchecked.
    let layer = Layer::new().pax(&[("path", b"a/../../outside/file")]).file("harmless", b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::ParentDir));
}

/// Unpacks `layers` in order (all must succeed) and checks nothing outside the root moved:
/// what a symlink leads to is resolved inside the root, as in a chroot.
fn assert_contained(fx: &Fixture, layers: &[Vec<u8>]) {
    let before = fx.snapshot();
    for l in layers {
        unpack(&fx.root, l).unwrap();
    }
    assert_eq!(before, fx.snapshot(), "something outside the root changed");
}

/// The sentinel's absolute path, seen from inside the root.
fn inside(fx: &Fixture, rel: &str) -> PathBuf {
    fx.root.join(fx.outside.strip_prefix("/").unwrap()).join(rel)
}

#[test]
fn absolute_symlink_parent_resolves_inside_the_root() {
    let fx = Fixture::new();
    let layer = Layer::new().symlink("evil", &fx.outside_str()).file("evil/passwd", b"pwned").bytes();
    assert_contained(&fx, &[layer]);
    assert_eq!(fs::read(inside(&fx, "passwd")).unwrap(), b"pwned");
    assert!(fx.root.join("evil").symlink_metadata().unwrap().file_type().is_symlink());
}

#[test]
fn symlink_to_etc_resolves_inside_the_root() {
    // The literal `/etc` case; the file name is unique so a failure could not clobber
    // anything real, and we check it was not created.
    let fx = Fixture::new();
    let probe = "ext-rootfs-test-must-not-exist";
    let layer = Layer::new().symlink("evil", "/etc").file(&format!("evil/{probe}"), b"pwned").bytes();
    assert_contained(&fx, &[layer]);
    assert!(!Path::new("/etc").join(probe).exists());
    assert_eq!(fs::read(fx.root.join("etc").join(probe)).unwrap(), b"pwned");
}

/// Debian ships `var/run -> /run`; a later layer's `var/run/x.pid` belongs in `/run`, where
/// containerd and umoci put it (issue 18).
#[test]
fn absolute_symlink_from_earlier_layer_is_followed_inside_the_root() {
    let fx = Fixture::new();
    let l1 = Layer::new().dir("run", 0o755).dir("var", 0o755).symlink("var/run", "/run").bytes();
    let l2 = Layer::new().file("var/run/x.pid", b"42").bytes();
    assert_contained(&fx, &[l1, l2]);
    assert_eq!(fs::read(fx.root.join("run/x.pid")).unwrap(), b"42");
    assert!(fx.root.join("var/run").symlink_metadata().unwrap().file_type().is_symlink());
    let l3 = Layer::new().symlink("evil", &fx.outside_str()).bytes();
    let l4 = Layer::new().file("evil/passwd", b"pwned").bytes();
    assert_contained(&fx, &[l3, l4]);
    assert_eq!(fs::read(inside(&fx, "passwd")).unwrap(), b"pwned");
}

#[test]
fn climbing_symlink_stops_at_the_root() {
    let fx = Fixture::new();
    let layer = Layer::new().symlink("up", "../../..").file("up/x", b"pwned").bytes();
    assert_contained(&fx, &[layer]);
    assert_eq!(fs::read(fx.root.join("x")).unwrap(), b"pwned");
    // One level up would reach the sentinel next to the root.
    let layer = Layer::new().dir("d", 0o755).symlink("d/up", "../../outside").file("d/up/file", b"pwned").bytes();
    assert_contained(&fx, &[layer]);
    assert_eq!(fs::read(fx.root.join("outside/file")).unwrap(), b"pwned");
}

#[test]
fn relative_chain_stops_at_the_root() {
    let fx = Fixture::new();
    // l1 -> l2 -> sub/l3 -> ../../outside: each link looks harmless on its own.
    let layer = Layer::new()
        .symlink("l1", "l2")
        .symlink("l2", "sub/l3")
        .dir("sub", 0o755)
        .symlink("sub/l3", "../../outside")
        .file("l1/file", b"pwned")
        .bytes();
    assert_contained(&fx, &[layer]);
    assert_eq!(fs::read(fx.root.join("outside/file")).unwrap(), b"pwned");
}

#[test]
fn hostile_symlink_loop() {
    let fx = Fixture::new();
    let layer = Layer::new().symlink("loop1", "loop2").symlink("loop2", "loop1").file("loop1/x", b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(escape(e).0, EscapeKind::Loop));
    let layer = Layer::new().symlink("self", "self/x").file("self/y", b"pwned").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(escape(e).0, EscapeKind::Loop));
}

#[test]
fn hostile_hardlinks() {
    let fx = Fixture::new();
    let layer = Layer::new().hardlink("pw", "../../etc/passwd").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::LinkParentDir));
    let layer = Layer::new().hardlink("pw", "../outside/passwd").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::LinkParentDir));
    let layer = Layer::new().hardlink("pw", "/etc/passwd").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::LinkAbsolute));
    // Through a symlinked directory that would leave the root: resolved inside it, where
    // there is no such file.
    let layer = Layer::new().symlink("out", &fx.outside_str()).hardlink("pw", "out/passwd").bytes();
    assert_hostile(&fx, &[layer], |e| assert!(matches!(e, UnpackError::BadHardLink { .. }), "{e}"));
    assert!(!fx.root.join("pw").exists());
}

#[test]
fn file_replaces_symlink_instead_of_writing_through() {
    let fx = Fixture::new();
    let target = fx.outside.join("file");
    let before = fx.snapshot();
    let layer = Layer::new()
        .symlink("f", target.to_str().unwrap())
        .file("f", b"pwned")
        .symlink("d", fx.outside.to_str().unwrap())
        .dir("d", 0o700)
        .file("d/passwd", b"inside")
        .symlink("n", target.to_str().unwrap())
        .node("n", EntryType::Fifo, 0, 0)
        .bytes();
    unpack(&fx.root, &layer).unwrap();
    assert_eq!(before, fx.snapshot());
    assert_eq!(fs::read(&target).unwrap(), b"precious\n");
    let f = fx.root.join("f").symlink_metadata().unwrap();
    assert!(f.is_file());
    assert_eq!(fs::read(fx.root.join("f")).unwrap(), b"pwned");
    assert!(fx.root.join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(fx.root.join("d/passwd")).unwrap(), b"inside");
}

#[test]
fn deferred_dir_metadata_not_applied_through_later_symlink() {
    let fx = Fixture::new();
    // `a/b` gets mode 0700 at the end of the layer; by then `a` is a symlink to the sentinel,
    // which also has a `b` directory.
    let layer = Layer::new()
        .dir("a", 0o755)
        .dir_h("a/b", 0o700, |h| h.set_mtime(1))
        .symlink("a", fx.outside.to_str().unwrap())
        .bytes();
    let before = fx.snapshot();
    unpack(&fx.root, &layer).unwrap();
    assert_eq!(before, fx.snapshot());
}

#[test]
fn hostile_whiteouts() {
    let fx = Fixture::new();
    let layer = Layer::new().raw(b"../outside/.wh.file", EntryType::Regular, None, b"").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::ParentDir));
    // Whiteouts below a symlink to the outside delete inside the root.
    let layer = Layer::new().symlink("evil", fx.outside.to_str().unwrap()).file("evil/.wh.file", b"").bytes();
    assert_contained(&fx, &[layer]);
    let layer = Layer::new().symlink("evil2", fx.outside.to_str().unwrap()).file("evil2/.wh..wh..opq", b"").bytes();
    assert_contained(&fx, &[layer]);
    let layer = Layer::new().file("x/.wh...", b"").bytes();
    assert_hostile(&fx, &[layer], |e| assert_eq!(unsafe_reason(e), UnsafeReason::BadWhiteout));
    // Whiteout of a symlink to the outside removes the symlink, not its target.
    let l1 = Layer::new().symlink("s", fx.outside.to_str().unwrap()).bytes();
    let l2 = Layer::new().file(".wh.s", b"").bytes();
    let before = fx.snapshot();
    unpack(&fx.root, &l1).unwrap();
    unpack(&fx.root, &l2).unwrap();
    assert!(fx.root.join("s").symlink_metadata().is_err());
    assert_eq!(before, fx.snapshot());
}

// ---------------------------------------------------------------------------------------
// Throughput (run with `cargo test --release -p ext-rootfs -- --ignored --nocapture`)
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "benchmark"]
fn throughput_many_files() {
    let fx = Fixture::new();
    let files = 10_000usize;
    let size = 10 * 1024usize;
    let data = vec![0x5au8; size];
    let mut layer = Layer::new();
    for d in 0..100 {
        layer = layer.dir(&format!("usr/share/d{d}"), 0o755);
    }
    for i in 0..files {
        layer = layer.file(&format!("usr/share/d{}/file{i}", i % 100), &data);
    }
    let layer = layer.bytes();
    let start = Instant::now();
    let stats = unpack(&fx.root, &layer).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let mb = layer.len() as f64 / 1e6;
    eprintln!(
        "unpacked {mb:.1} MB tar, {} entries, {} file bytes in {secs:.3}s: {:.0} MB/s, {:.0} entries/s",
        stats.entries,
        stats.bytes,
        mb / secs,
        stats.entries as f64 / secs
    );

    let fx = Fixture::new();
    let big = vec![0xa5u8; 100 * 1024 * 1024];
    let layer = Layer::new().file("big", &big).bytes();
    let start = Instant::now();
    unpack(&fx.root, &layer).unwrap();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("one 100 MB file: {:.0} MB/s", 104.857_6 / secs);
}

#[test]
fn a_path_filter_keeps_its_roots_their_ancestors_and_exact_paths() {
    let fx = Fixture::new();
    let filter = |roots: &[&str], exact: &[&str]| {
        Some(std::sync::Arc::new(ext_rootfs::PathFilter::new(
            roots.iter().map(PathBuf::from),
            exact.iter().map(PathBuf::from),
        )))
    };
    let run = |layer: &[u8], f| {
        let opts = UnpackOptions { whiteouts: WhiteoutMode::Apply, layer_name: LAYER.to_owned(), filter: f };
        unpack_layer(&fx.root, layer, &opts)
    };
    let l1 = Layer::new()
        .dir("usr", 0o700)
        .dir("usr/bin", 0o755)
        .file("usr/bin/tool", b"t")
        .file("usr/bin2", b"not below usr/bin")
        .dir("usr/lib", 0o755)
        .file("usr/lib/libx.so.1", b"x")
        .symlink("usr/lib/libx.so", "libx.so.1")
        .file("etc", b"e")
        .bytes();
    run(&l1, filter(&["usr/bin"], &["usr/lib/libx.so"])).unwrap();
    let r = &fx.root;
    let exists = |p: &str| r.join(p).symlink_metadata().is_ok();
    assert!(exists("usr/bin/tool"));
    assert_eq!(
        r.join("usr").symlink_metadata().unwrap().permissions().mode() & 0o777,
        0o700,
        "an ancestor keeps its own mode"
    );
    assert!(exists("usr/lib/libx.so"), "an exact path is kept");
    for gone in ["usr/bin2", "usr/lib/libx.so.1", "etc"] {
        assert!(!exists(gone), "{gone} is left out");
    }
    // Whiteouts count by the path they hide: one inside the roots applies, one outside is
    // skipped (its directory is not made either).
    let l2 = Layer::new().file("usr/bin/.wh.tool", b"").file("opt/.wh.x", b"").bytes();
    run(&l2, filter(&["usr/bin"], &[])).unwrap();
    assert!(!exists("usr/bin/tool") && !exists("opt"));
    // A kept hard link to a left-out file is skipped, naming the target to add.
    let l3 = Layer::new().file("data/big", b"b").hardlink("usr/bin/big", "data/big").bytes();
    let stats = run(&l3, filter(&["usr/bin"], &[])).unwrap();
    assert_eq!(stats.left_out_link_targets, vec![PathBuf::from("data/big")]);
    assert!(!exists("usr/bin/big"));
    let stats = run(&l3, filter(&["usr/bin"], &["data/big"])).unwrap();
    assert!(stats.left_out_link_targets.is_empty());
    assert_eq!(fs::read(r.join("usr/bin/big")).unwrap(), b"b");
}
