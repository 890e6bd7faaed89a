//! Applies one uncompressed OCI layer (a tar stream) to a directory.
//!
//! We do not use `tar::Entry::unpack`: it turns devices into empty files, follows whatever
//! symlinks earlier entries planted, and knows nothing about OCI whiteouts. Instead every
//! entry's parent is resolved with [`crate::safe_path`] (in-root symlinks only), the final
//! component is always unlinked and recreated (never written through), and metadata is set
//! with the no-follow variants of the syscalls.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use tar::EntryType;
use tracing::{debug, warn};

use crate::error::{ResolveError, UnpackError, UnsafeReason};
use crate::safe_path::{LowerView, Walked, is_plain_dir_path, normalize_relative, resolve_dir_rel, resolve_parent_rel};

/// Prefix of an OCI whiteout file name.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker (the part after [`WHITEOUT_PREFIX`]).
const OPAQUE_SUFFIX: &[u8] = b".wh..opq";
/// xattr overlayfs reads to decide that a directory hides the lower layers.
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Copy buffer size; large enough that syscall overhead is negligible for big files.
const COPY_BUF: usize = 256 * 1024;
/// Free space the unpacker leaves on the target filesystem: this much, or a tenth of the
/// filesystem if that is less. A layer is unbounded by design (and a gzip bomb of 10 MB
/// expands to 10 GiB), so it is the disk that is watched, not the layer.
const RESERVE_BYTES: u64 = 256 << 20;
/// Free inodes left, likewise (or a tenth of them): a bomb of empty files exhausts inodes.
const RESERVE_INODES: u64 = 10_000;
/// How often free space is checked at most: every so many bytes written or entries created
/// (more often when the margin above the reserve is smaller, so it is never overrun).
const SPACE_CHECK_BYTES: u64 = 16 << 20;
const SPACE_CHECK_ENTRIES: u64 = 512;

/// How OCI whiteout entries (`.wh.NAME`, `.wh..wh..opq`) are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// The root already holds the lower layers: whiteouts delete from it.
    Apply,
    /// The root is an empty directory that becomes an overlayfs layer: whiteouts are
    /// converted to overlayfs' own format (0/0 character devices, `trusted.overlay.opaque`).
    Overlay,
}

/// Options of [`unpack_layer`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub whiteouts: WhiteoutMode,
    /// Name used in every error message, typically the layer digest.
    pub layer_name: String,
    /// Only the entries this keeps are applied (`None`: all of them).
    pub filter: Option<std::sync::Arc<PathFilter>>,
}

/// The part of a tree an unpack applies, when only some paths of an image are needed
/// (`COPY --from=IMAGE` reads a few of another image's files). An entry is kept if it is one
/// of the exact paths, at or below one of the roots, or an ancestor of a root (so the roots'
/// directories get their own metadata). Whiteouts are kept by the path they hide; a hard
/// link whose target was left out is skipped and its target listed in
/// [`UnpackStats::left_out_link_targets`], so the caller can add them and unpack again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathFilter {
    roots: Vec<PathBuf>,
    exact: HashSet<PathBuf>,
}

impl PathFilter {
    /// Root-relative paths (`usr/bin`, never `/usr/bin`); the root `""` keeps everything.
    pub fn new(roots: impl IntoIterator<Item = PathBuf>, exact: impl IntoIterator<Item = PathBuf>) -> PathFilter {
        PathFilter { roots: roots.into_iter().collect(), exact: exact.into_iter().collect() }
    }

    /// Also keeps `path` (a hard link's target, found after a first unpack).
    pub fn add_exact(&mut self, path: PathBuf) {
        self.exact.insert(path);
    }

    pub fn keeps(&self, rel: &Path) -> bool {
        self.exact.contains(rel) || self.roots.iter().any(|r| rel.starts_with(r) || r.starts_with(rel))
    }
}

/// What [`unpack_layer`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied to the tree, whiteouts included (skipped root entries are not counted).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteout entries (plain and opaque) seen.
    pub whiteouts: u64,
    /// [`WhiteoutMode::Overlay`] only: directories the layer has without an entry of their own
    /// (made as parents of its entries, 0755 root). They must not hide the metadata the lower
    /// layers give the same directory, which is what overlayfs would otherwise show.
    pub implicit_dirs: Vec<PathBuf>,
    /// With a [`PathFilter`]: targets of kept hard links that the filter left out (the links
    /// were skipped).
    pub left_out_link_targets: Vec<PathBuf>,
}

/// Reads an uncompressed layer tar stream and applies it to `root`.
///
/// Nothing outside `root` is created, modified or deleted, whatever the layer contains:
/// entry names and hard-link targets with `..` or an absolute path are refused, and a
/// symlink in the directory part of a name is followed only if it stays inside `root`.
/// Resources are bounded: the headers of one entry (long names, PAX records) by
/// [`ext_oci::targuard::MAX_ENTRY_METADATA`], and the unpacking stops with
/// [`UnpackError::NoSpace`] before the filesystem of `root` runs out of space or inodes.
/// The first error aborts the unpacking; the tree is then partially updated.
pub fn unpack_layer<R: Read>(root: &Path, layer: R, opts: &UnpackOptions) -> Result<UnpackStats, UnpackError> {
    unpack_layer_over(root, layer, opts, None)
}

/// [`unpack_layer`] into an overlay layer directory ([`WhiteoutMode::Overlay`]) that will sit
/// on the layers `lower` describes: where an entry's parent is a symlink only in those layers
/// (Debian's `var/run -> /run`, then `var/run/x`), the symlink is copied into this layer and
/// followed, so the entry lands where applying all layers to one tree puts it.
pub fn unpack_layer_over<R: Read>(
    root: &Path,
    layer: R,
    opts: &UnpackOptions,
    lower: Option<&dyn LowerView>,
) -> Result<UnpackStats, UnpackError> {
    let mut unpacker = Unpacker {
        root,
        opts,
        lower,
        keep: HashSet::new(),
        explicit_dirs: HashSet::new(),
        dirs: Vec::new(),
        stats: UnpackStats::default(),
        buf: vec![0; COPY_BUF],
        bytes_until_check: 0,
        entries_until_check: 0,
    };
    unpacker.check_space(Path::new(""))?;
    let (layer, guard) = ext_oci::targuard::guard(layer);
    let mut archive = tar::Archive::new(layer);
    let tar_err = |after: Option<&Path>, source| UnpackError::Tar {
        layer: opts.layer_name.clone(),
        after: after.map(Path::to_path_buf),
        source,
    };
    // A stream that simply ends at a header boundary (umoci omits the two zero blocks) is
    // reported by `tar` as the normal end of the archive, so no special casing is needed.
    let mut entries = archive.entries().map_err(|e| tar_err(None, e))?;
    let mut last: Option<PathBuf> = None;
    while let Some(entry) = guard.next(&mut entries) {
        let mut entry = entry.map_err(|e| tar_err(last.as_deref(), e))?;
        let raw = PathBuf::from(OsString::from_vec(entry.path_bytes().into_owned()));
        unpacker.entry(&mut entry, &raw)?;
        // Data an entry type does not use (a hostile symlink with a body) is skipped here,
        // outside the guard's header budget.
        io::copy(&mut entry, &mut io::sink()).map_err(|e| tar_err(Some(&raw), e))?;
        unpacker.entries_until_check = unpacker.entries_until_check.saturating_sub(1);
        if unpacker.entries_until_check == 0 {
            unpacker.check_space(&raw)?;
        }
        last = Some(raw);
    }
    unpacker.finish()?;
    if opts.whiteouts == WhiteoutMode::Overlay {
        // Every directory of the layer is in `keep` (as an entry or an ancestor of one).
        let mut implicit: Vec<PathBuf> = unpacker
            .keep
            .iter()
            .filter(|p| !p.as_os_str().is_empty() && !unpacker.explicit_dirs.contains(*p))
            .filter(|p| fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.is_dir()))
            .cloned()
            .collect();
        implicit.sort();
        unpacker.stats.implicit_dirs = implicit;
    }
    Ok(unpacker.stats)
}

/// Metadata from a tar header (plus PAX records) to apply to a created node.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: FileTime,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A directory whose mode and mtime are applied at the end of the layer, because creating
/// children would bump the mtime again and a read-only mode could block them.
struct DeferredDir {
    entry: PathBuf,
    rel: PathBuf,
    mode: u32,
    mtime: FileTime,
}

enum XattrTarget<'f> {
    File(&'f File),
    /// Path-based `lsetxattr`: never follows a symlink at the final component.
    Path(&'f Path),
}

struct Unpacker<'a> {
    root: &'a Path,
    opts: &'a UnpackOptions,
    lower: Option<&'a dyn LowerView>,
    /// Resolved root-relative paths written by this layer, plus all their ancestors. OCI
    /// whiteouts only hide lower layers, so these survive an opaque marker or whiteout of the
    /// same layer regardless of the entry order.
    keep: HashSet<PathBuf>,
    /// Directories this layer has an entry for (the others are implicit parents).
    explicit_dirs: HashSet<PathBuf>,
    dirs: Vec<DeferredDir>,
    stats: UnpackStats,
    buf: Vec<u8>,
    /// Bytes to write and entries to make before free space is checked again.
    bytes_until_check: u64,
    entries_until_check: u64,
}

impl Unpacker<'_> {
    /// Fails when the filesystem of the root has less free space or inodes than the reserve.
    fn check_space(&mut self, entry: &Path) -> Result<(), UnpackError> {
        let st = nix::sys::statvfs::statvfs(self.root)
            .map_err(|e| self.io_err(entry, "statvfs", Path::new("."), e.into()))?;
        let frsize = st.fragment_size() as u64;
        let (total, available) = (st.blocks() as u64 * frsize, st.blocks_available() as u64 * frsize);
        let reserve = RESERVE_BYTES.min(total / 10);
        let (inodes, inodes_free) = (st.files() as u64, st.files_available() as u64);
        // Filesystems without a fixed inode table (btrfs) report 0 inodes.
        let inode_reserve = RESERVE_INODES.min(inodes / 10);
        if available < reserve || (inodes > 0 && inodes_free < inode_reserve) {
            return Err(UnpackError::NoSpace {
                layer: self.layer(),
                entry: entry.to_path_buf(),
                available_mib: available >> 20,
                inodes_free,
                reserve_mib: reserve >> 20,
                inode_reserve,
            });
        }
        // Half the margin, so the next check comes before the reserve is reached.
        self.bytes_until_check = ((available - reserve) / 2).clamp(1, SPACE_CHECK_BYTES);
        self.entries_until_check = if inodes > 0 {
            ((inodes_free - inode_reserve) / 2).clamp(1, SPACE_CHECK_ENTRIES)
        } else {
            SPACE_CHECK_ENTRIES
        };
        Ok(())
    }
    fn layer(&self) -> String {
        self.opts.layer_name.clone()
    }

    fn resolve_err(&self, entry: &Path, err: ResolveError) -> UnpackError {
        UnpackError::from_resolve(&self.opts.layer_name, entry, err)
    }

    fn io_err(&self, entry: &Path, op: &'static str, path: &Path, source: io::Error) -> UnpackError {
        UnpackError::Io { layer: self.layer(), entry: entry.to_path_buf(), op, path: path.to_path_buf(), source }
    }

    fn bad_header(&self, entry: &Path, reason: impl Into<String>) -> UnpackError {
        UnpackError::BadHeader { layer: self.layer(), entry: entry.to_path_buf(), reason: reason.into() }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        // Global PAX headers carry defaults we do not need; a GNU volume label names no file.
        if kind.is_pax_global_extensions() || kind.as_byte() == b'V' {
            debug!(layer = %self.opts.layer_name, entry = %crate::error::esc(raw), "skipping metadata-only entry");
            return Ok(());
        }
        let rel = normalize_relative(raw).map_err(|reason| UnpackError::UnsafePath {
            layer: self.layer(),
            entry: raw.to_path_buf(),
            reason,
        })?;
        let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
            // umoci writes a `./` entry for the root; the root's metadata belongs to the caller.
            debug!(layer = %self.opts.layer_name, entry = %crate::error::esc(raw), "skipping root entry");
            return Ok(());
        };

        if let Some(filter) = &self.opts.filter {
            let hides = match name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
                Some(OPAQUE_SUFFIX) => rel.parent().unwrap_or(Path::new("")).to_path_buf(),
                Some(rest) => rel.with_file_name(OsStr::from_bytes(rest)),
                None => rel.clone(),
            };
            if !filter.keeps(&hides) {
                return Ok(());
            }
        }
        if let Some(rest) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX) {
            self.stats.whiteouts += 1;
            self.stats.entries += 1;
            let parent = rel.parent().unwrap_or(Path::new(""));
            if rest == OPAQUE_SUFFIX {
                return self.opaque(raw, parent);
            }
            if rest.is_empty() || rest == b"." || rest == b".." {
                return Err(UnpackError::UnsafePath {
                    layer: self.layer(),
                    entry: raw.to_path_buf(),
                    reason: UnsafeReason::BadWhiteout,
                });
            }
            return self.whiteout(raw, parent, OsStr::from_bytes(rest));
        }

        let meta = self.read_meta(entry, raw)?;
        let (parent, name) =
            resolve_parent_rel(self.root, &rel, true, self.lower).map_err(|e| self.resolve_err(raw, e))?;
        for link in parent.seeded {
            self.mark_written(link);
        }
        let dest_rel = parent.rel.join(&name);
        let dest = self.root.join(&dest_rel);

        // Old (pre-POSIX) tars mark directories only by a trailing slash on a regular entry.
        let old_style_dir = kind == EntryType::Regular && raw.as_os_str().as_bytes().ends_with(b"/");
        match kind {
            EntryType::Directory => self.make_dir(raw, &dest_rel, &dest, meta)?,
            _ if old_style_dir => self.make_dir(raw, &dest_rel, &dest, meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.make_file(entry, raw, &dest_rel, &dest, meta)?
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| PathBuf::from(OsString::from_vec(b.into_owned())))
                    .filter(|t| !t.as_os_str().is_empty())
                    .ok_or_else(|| self.bad_header(raw, "symlink entry without a target"))?;
                self.make_symlink(raw, &dest_rel, &dest, &target, meta)?
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|b| PathBuf::from(OsString::from_vec(b.into_owned())))
                    .ok_or_else(|| self.bad_header(raw, "hard link entry without a target"))?;
                self.make_hardlink(raw, &dest_rel, &dest, &target)?
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (sflag, dev) = if kind == EntryType::Fifo {
                    (SFlag::S_IFIFO, 0)
                } else {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    let sflag = if kind == EntryType::Char { SFlag::S_IFCHR } else { SFlag::S_IFBLK };
                    (sflag, makedev(major.into(), minor.into()))
                };
                self.make_node(raw, &dest_rel, &dest, sflag, dev, meta)?
            }
            other => {
                return Err(UnpackError::UnsupportedEntry {
                    layer: self.layer(),
                    entry: raw.to_path_buf(),
                    kind: other.as_byte(),
                });
            }
        }
        self.mark_written(dest_rel);
        self.stats.entries += 1;
        Ok(())
    }

    fn read_meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &Path) -> Result<Meta, UnpackError> {
        let header = entry.header();
        let mode = header.mode().map_err(|e| self.bad_header(raw, format!("mode: {e}")))? & 0o7777;
        // `tar` already folds PAX uid/gid records into the header.
        let uid = header.uid().map_err(|e| self.bad_header(raw, format!("uid: {e}")))?;
        let gid = header.gid().map_err(|e| self.bad_header(raw, format!("gid: {e}")))?;
        let uid = u32::try_from(uid).map_err(|_| self.bad_header(raw, format!("uid {uid} out of range")))?;
        let gid = u32::try_from(gid).map_err(|_| self.bad_header(raw, format!("gid {gid} out of range")))?;
        let header_mtime = header.mtime().unwrap_or(0);
        let mut mtime = FileTime::from_unix_time(i64::try_from(header_mtime).unwrap_or(i64::MAX), 0);

        let mut xattrs = Vec::new();
        let pax = entry.pax_extensions().map_err(|e| self.bad_header(raw, format!("PAX records: {e}")))?;
        if let Some(pax) = pax {
            for ext in pax {
                let ext = ext.map_err(|e| self.bad_header(raw, format!("PAX record: {e}")))?;
                let key = ext.key_bytes();
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((OsString::from_vec(name.to_vec()), ext.value_bytes().to_vec()));
                } else if key == b"mtime" {
                    // The PAX record keeps sub-second precision the header field lacks.
                    if let Some(t) = parse_pax_time(ext.value_bytes()) {
                        mtime = t;
                    }
                }
            }
        }
        Ok(Meta { mode, uid, gid, mtime, xattrs })
    }

    /// Removes whatever is at `dest` so the entry can be created fresh; writing through an
    /// existing symlink or into an existing file of another type is how layers escape.
    /// Returns true if an existing real directory was kept (`keep_dir`).
    fn clear(&self, raw: &Path, dest_rel: &Path, dest: &Path, keep_dir: bool) -> Result<bool, UnpackError> {
        match fs::symlink_metadata(dest) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io_err(raw, "lstat", dest_rel, e)),
            Ok(md) if md.file_type().is_dir() => {
                if keep_dir {
                    return Ok(true);
                }
                // std's remove_dir_all does not follow symlinks inside the tree.
                fs::remove_dir_all(dest).map_err(|e| self.io_err(raw, "remove directory", dest_rel, e))?;
                Ok(false)
            }
            Ok(_) => {
                fs::remove_file(dest).map_err(|e| self.io_err(raw, "unlink", dest_rel, e))?;
                Ok(false)
            }
        }
    }

    fn make_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
        dest_rel: &Path,
        dest: &Path,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        self.clear(raw, dest_rel, dest, false)?;
        // O_EXCL guarantees we write a file we just created, O_NOFOLLOW is belt and braces.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dest)
            .map_err(|e| self.io_err(raw, "create", dest_rel, e))?;
        let expected = entry.size();
        let mut written = 0u64;
        loop {
            let n = match entry.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_err(raw, "read layer data for", dest_rel, e)),
            };
            file.write_all(&self.buf[..n]).map_err(|e| self.io_err(raw, "write", dest_rel, e))?;
            written += n as u64;
            self.bytes_until_check = self.bytes_until_check.saturating_sub(n as u64);
            if self.bytes_until_check == 0 {
                self.check_space(raw)?;
            }
        }
        if written != expected {
            return Err(self.io_err(
                raw,
                "read layer data for",
                dest_rel,
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("layer truncated: got {written} of {expected} bytes"),
                ),
            ));
        }
        self.stats.bytes += written;

        // Order matters: chown clears setuid/setgid and security.capability, and writing
        // data clears capabilities too, so ownership, then mode, then xattrs.
        std::os::unix::fs::fchown(&file, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io_err(raw, "chown", dest_rel, e))?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode))
            .map_err(|e| self.io_err(raw, "chmod", dest_rel, e))?;
        self.set_xattrs(raw, dest_rel, XattrTarget::File(&file), &meta.xattrs)?;
        filetime::set_file_handle_times(&file, Some(meta.mtime), Some(meta.mtime))
            .map_err(|e| self.io_err(raw, "set times of", dest_rel, e))?;
        Ok(())
    }

    fn make_dir(&mut self, raw: &Path, dest_rel: &Path, dest: &Path, meta: Meta) -> Result<(), UnpackError> {
        if self.clear(raw, dest_rel, dest, true)? {
            // The entry's metadata replaces the existing directory's, xattrs included (as a
            // later layer's directory does in overlayfs): drop those the entry does not have.
            let names: Vec<OsString> = xattr::list(dest).map(|l| l.collect()).unwrap_or_default();
            for name in names {
                let ours = name.to_string_lossy().starts_with("trusted.overlay.") || name == "security.selinux";
                if !ours && !meta.xattrs.iter().any(|(n, _)| *n == name) {
                    xattr::remove(dest, &name).map_err(|e| self.io_err(raw, "remove an xattr of", dest_rel, e))?;
                }
            }
        } else {
            fs::DirBuilder::new().mode(0o700).create(dest).map_err(|e| self.io_err(raw, "mkdir", dest_rel, e))?;
        }
        std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io_err(raw, "chown", dest_rel, e))?;
        self.set_xattrs(raw, dest_rel, XattrTarget::Path(dest), &meta.xattrs)?;
        self.explicit_dirs.insert(dest_rel.to_path_buf());
        self.dirs.push(DeferredDir {
            entry: raw.to_path_buf(),
            rel: dest_rel.to_path_buf(),
            mode: meta.mode,
            mtime: meta.mtime,
        });
        Ok(())
    }

    fn make_symlink(
        &mut self,
        raw: &Path,
        dest_rel: &Path,
        dest: &Path,
        target: &Path,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        self.clear(raw, dest_rel, dest, false)?;
        // The target is stored verbatim; it is only dangerous when followed, and every
        // follow goes through safe_path.
        std::os::unix::fs::symlink(target, dest).map_err(|e| self.io_err(raw, "symlink", dest_rel, e))?;
        std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io_err(raw, "chown", dest_rel, e))?;
        self.set_xattrs(raw, dest_rel, XattrTarget::Path(dest), &meta.xattrs)?;
        filetime::set_symlink_file_times(dest, meta.mtime, meta.mtime)
            .map_err(|e| self.io_err(raw, "set times of", dest_rel, e))?;
        Ok(())
    }

    fn make_node(
        &mut self,
        raw: &Path,
        dest_rel: &Path,
        dest: &Path,
        sflag: SFlag,
        dev: libc::dev_t,
        meta: Meta,
    ) -> Result<(), UnpackError> {
        self.clear(raw, dest_rel, dest, false)?;
        mknod(dest, sflag, Mode::from_bits_truncate(meta.mode & 0o777), dev)
            .map_err(|e| self.io_err(raw, "mknod", dest_rel, e.into()))?;
        std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io_err(raw, "chown", dest_rel, e))?;
        // mknod applies the umask and ignores special bits; `dest` is the node we just made,
        // not a symlink, so the path-based chmod is fine (and opening a FIFO would block).
        fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| self.io_err(raw, "chmod", dest_rel, e))?;
        self.set_xattrs(raw, dest_rel, XattrTarget::Path(dest), &meta.xattrs)?;
        filetime::set_symlink_file_times(dest, meta.mtime, meta.mtime)
            .map_err(|e| self.io_err(raw, "set times of", dest_rel, e))?;
        Ok(())
    }

    /// Hard links carry no metadata of their own: the inode's metadata came with the entry
    /// that created it, and re-applying it here would be redundant at best.
    fn make_hardlink(&mut self, raw: &Path, dest_rel: &Path, dest: &Path, target: &Path) -> Result<(), UnpackError> {
        let target_clean = normalize_relative(target).map_err(|reason| UnpackError::UnsafePath {
            layer: self.layer(),
            entry: raw.to_path_buf(),
            reason: match reason {
                UnsafeReason::Absolute => UnsafeReason::LinkAbsolute,
                UnsafeReason::ParentDir => UnsafeReason::LinkParentDir,
                other => other,
            },
        })?;
        let bad = |reason: &str| UnpackError::BadHardLink {
            layer: self.layer(),
            entry: raw.to_path_buf(),
            target: target.to_path_buf(),
            reason: reason.to_owned(),
        };
        if target_clean.as_os_str().is_empty() {
            return Err(bad("the target is the root directory"));
        }
        if let Some(filter) = &self.opts.filter
            && !filter.keeps(&target_clean)
        {
            // Left out, so there is nothing to link to: the caller unpacks again with it.
            self.stats.left_out_link_targets.push(target_clean);
            return Ok(());
        }
        // The final component is not followed: linking to a symlink links the symlink itself,
        // exactly what link(2) without AT_SYMLINK_FOLLOW does.
        let (parent, name) =
            resolve_parent_rel(self.root, &target_clean, false, None).map_err(|e| self.resolve_err(raw, e))?;
        if !parent.exists {
            return Err(bad("the target does not exist"));
        }
        let target_rel = parent.rel.join(name);
        let target_abs = self.root.join(&target_rel);
        match fs::symlink_metadata(&target_abs) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(bad("the target does not exist"));
            }
            Err(e) => return Err(self.io_err(raw, "lstat", &target_rel, e)),
            Ok(md) if md.file_type().is_dir() => return Err(bad("the target is a directory")),
            Ok(_) => {}
        }
        if target_rel == dest_rel {
            // A link to itself: unlinking first would destroy the only copy.
            return Ok(());
        }
        self.clear(raw, dest_rel, dest, false)?;
        fs::hard_link(&target_abs, dest).map_err(|e| self.io_err(raw, "hard link", dest_rel, e))?;
        Ok(())
    }

    fn set_xattrs(
        &self,
        raw: &Path,
        dest_rel: &Path,
        target: XattrTarget<'_>,
        xattrs: &[(OsString, Vec<u8>)],
    ) -> Result<(), UnpackError> {
        for (name, value) in xattrs {
            let res = match target {
                XattrTarget::File(f) => xattr::FileExt::set_xattr(f, name, value),
                XattrTarget::Path(p) => xattr::set(p, name, value),
            };
            let Err(e) = res else { continue };
            let name_str = name.to_string_lossy();
            if xattr_failure_is_tolerable(&name_str, &e) {
                warn!(
                    layer = %self.opts.layer_name,
                    entry = %crate::error::esc(raw),
                    xattr = %ext_oci::escape::text(&name_str),
                    error = %e,
                    "cannot set extended attribute, skipping it"
                );
                continue;
            }
            return Err(UnpackError::Xattr {
                layer: self.layer(),
                entry: raw.to_path_buf(),
                name: name_str.into_owned(),
                path: dest_rel.to_path_buf(),
                source: e,
            });
        }
        Ok(())
    }

    /// Records `rel` and its ancestors as produced by this layer (see [`Unpacker::keep`]).
    fn mark_written(&mut self, rel: PathBuf) {
        let mut cur = Some(rel.as_path());
        while let Some(p) = cur {
            if !self.keep.insert(p.to_path_buf()) {
                // Already present, and so are its ancestors.
                break;
            }
            cur = p.parent();
        }
    }

    /// Resolves the directory holding a whiteout. `None` when there is nothing to delete.
    fn whiteout_dir(&mut self, raw: &Path, dir: &Path, create: bool) -> Result<Option<Walked>, UnpackError> {
        match resolve_dir_rel(self.root, dir, create, self.lower.filter(|_| create)) {
            Ok(w) if w.exists => {
                for link in &w.seeded {
                    self.mark_written(link.clone());
                }
                Ok(Some(w))
            }
            Ok(_) => Ok(None),
            // A lower layer has a non-directory there, so it has no children to hide.
            Err(ResolveError::NotADirectory { .. }) if !create => Ok(None),
            Err(e) => Err(self.resolve_err(raw, e)),
        }
    }

    fn whiteout(&mut self, raw: &Path, dir: &Path, name: &OsStr) -> Result<(), UnpackError> {
        let create = self.opts.whiteouts == WhiteoutMode::Overlay;
        let Some(parent) = self.whiteout_dir(raw, dir, create)? else {
            return Ok(());
        };
        let target_rel = parent.rel.join(name);
        if self.keep.contains(&target_rel) {
            // Whiteouts only hide lower layers, never content of their own layer.
            return Ok(());
        }
        let target = self.root.join(&target_rel);
        match self.opts.whiteouts {
            WhiteoutMode::Apply => {
                self.clear(raw, &target_rel, &target, false)?;
            }
            WhiteoutMode::Overlay => {
                self.clear(raw, &target_rel, &target, false)?;
                mknod(&target, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| self.io_err(raw, "mknod whiteout", &target_rel, e.into()))?;
                self.mark_written(target_rel);
            }
        }
        Ok(())
    }

    fn opaque(&mut self, raw: &Path, dir: &Path) -> Result<(), UnpackError> {
        match self.opts.whiteouts {
            WhiteoutMode::Apply => {
                let Some(walked) = self.whiteout_dir(raw, dir, false)? else {
                    return Ok(());
                };
                self.clear_lower_children(raw, &walked.rel)
            }
            WhiteoutMode::Overlay => {
                // Created if missing, so `None` cannot happen; nothing to mark if it did.
                let Some(walked) = self.whiteout_dir(raw, dir, true)? else {
                    return Ok(());
                };
                let path = self.root.join(&walked.rel);
                xattr::set(&path, OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| UnpackError::Xattr {
                    layer: self.layer(),
                    entry: raw.to_path_buf(),
                    name: OVERLAY_OPAQUE_XATTR.to_owned(),
                    path: walked.rel.clone(),
                    source: e,
                })?;
                self.mark_written(walked.rel);
                Ok(())
            }
        }
    }

    /// Deletes everything below `dir_rel` that this layer did not write, descending into
    /// directories this layer kept so lower-layer grandchildren are hidden as well.
    fn clear_lower_children(&self, raw: &Path, dir_rel: &Path) -> Result<(), UnpackError> {
        let mut stack = vec![dir_rel.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let abs = self.root.join(&dir);
            let rd = fs::read_dir(&abs).map_err(|e| self.io_err(raw, "read directory", &dir, e))?;
            for child in rd {
                let child = child.map_err(|e| self.io_err(raw, "read directory", &dir, e))?;
                let child_rel = dir.join(child.file_name());
                // DirEntry::file_type does not follow symlinks.
                let ft = child.file_type().map_err(|e| self.io_err(raw, "lstat", &child_rel, e))?;
                if self.keep.contains(&child_rel) {
                    if ft.is_dir() {
                        stack.push(child_rel);
                    }
                    continue;
                }
                let child_abs = self.root.join(&child_rel);
                if ft.is_dir() {
                    fs::remove_dir_all(&child_abs).map_err(|e| self.io_err(raw, "remove directory", &child_rel, e))?;
                } else {
                    fs::remove_file(&child_abs).map_err(|e| self.io_err(raw, "unlink", &child_rel, e))?;
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), UnpackError> {
        for d in &self.dirs {
            // A later entry may have replaced this directory, or one of its parents by a
            // symlink; opening the stored path would then follow it.
            if !is_plain_dir_path(self.root, &d.rel) {
                debug!(layer = %self.opts.layer_name, entry = %crate::error::esc(&d.entry), "directory replaced later in the layer");
                continue;
            }
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(self.root.join(&d.rel))
                .map_err(|e| self.io_err(&d.entry, "open directory", &d.rel, e))?;
            dir.set_permissions(fs::Permissions::from_mode(d.mode))
                .map_err(|e| self.io_err(&d.entry, "chmod", &d.rel, e))?;
            filetime::set_file_handle_times(&dir, Some(d.mtime), Some(d.mtime))
                .map_err(|e| self.io_err(&d.entry, "set times of", &d.rel, e))?;
        }
        Ok(())
    }
}

/// Failures that only lose optional information, and that a build host cannot fix:
/// `user.*` is not supported on every filesystem (nor on symlinks and devices at all),
/// SELinux labels depend on the host policy, and some filesystems lack xattrs entirely.
fn xattr_failure_is_tolerable(name: &str, err: &io::Error) -> bool {
    name.starts_with("user.")
        || name == "security.selinux"
        || err.raw_os_error() == Some(libc::EOPNOTSUPP)
        || err.raw_os_error() == Some(libc::ENOTSUP)
}

/// Parses a PAX time value `SECONDS[.FRACTION]`; negative times are left to the header.
fn parse_pax_time(value: &[u8]) -> Option<FileTime> {
    let s = std::str::from_utf8(value).ok()?;
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if secs.starts_with('-') {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos = 0u32;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| u32::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    Some(FileTime::from_unix_time(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time() {
        assert_eq!(parse_pax_time(b"1700000000.5"), Some(FileTime::from_unix_time(1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some(FileTime::from_unix_time(12, 0)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some(FileTime::from_unix_time(1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.5"), None);
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
