//! Resolution of paths inside a root directory without ever leaving it.
//!
//! The kernel follows every symlink in the directory part of a path. A layer that plants
//! `etc -> /etc` and then writes `etc/passwd` would therefore overwrite the host's file if
//! we handed `root/etc/passwd` to `open(2)`. So paths are resolved here one component at a
//! time with `lstat`, and a symlink is followed by *us*, as a process chrooted into the root
//! would follow it: an absolute target starts again at the root and `..` stops at the root
//! (containerd's `fs.RootPath` and umoci resolve layer parents the same way, so Debian's
//! `var/run -> /run` followed by a `var/run/x` entry puts `x` in `/run`). The returned path
//! consists of real directories only, so the OS has no symlink left to follow in its
//! directory part.
//!
//! Concurrent modification of the tree is out of scope: the root is private to the build.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{EscapeKind, ResolveError, UnsafeReason};

/// Maximum number of symlinks followed while resolving one path; the same limit as Linux's
/// `MAXSYMLINKS`, so a chain the kernel would accept is accepted here too.
pub const MAX_SYMLINKS: u32 = 40;

/// Lexically normalizes a root-relative path.
///
/// Drops `.` components (a leading `./` is what most tar writers emit) and returns the empty
/// path for the root itself (``, `.`, `./`, `/`, `//`). Refuses `..` anywhere and absolute
/// paths other than the root: such a name can only be meant to leave the root.
pub fn normalize_relative(path: &Path) -> Result<PathBuf, UnsafeReason> {
    let mut out = PathBuf::new();
    let mut absolute = false;
    for comp in path.components() {
        match comp {
            Component::RootDir | Component::Prefix(_) => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(if absolute { UnsafeReason::Absolute } else { UnsafeReason::ParentDir });
            }
            Component::Normal(name) => {
                if absolute {
                    return Err(UnsafeReason::Absolute);
                }
                out.push(name);
            }
        }
    }
    Ok(out)
}

/// Resolves `rel` inside `root`, following symlinks in every component (the last one too)
/// inside the root, and returns `root` joined with the resolved path.
///
/// `rel` must be relative and free of `..` (see [`normalize_relative`]); strip a leading `/`
/// first if the path comes from inside the image (e.g. `/etc/passwd`). An absolute symlink
/// target is resolved from the root, a `..` at the root stays there; loops are errors. A
/// missing final component (or missing tail) is not an error: the returned path simply does
/// not exist yet.
pub fn resolve_in_root(root: &Path, rel: &Path) -> Result<PathBuf, ResolveError> {
    let clean =
        normalize_relative(rel).map_err(|reason| ResolveError::UnsafePath { path: rel.to_path_buf(), reason })?;
    let walked =
        walk(root, rel, clean.iter(), WalkOptions { create_missing: false, last_may_be_file: true, lower: None })?;
    Ok(root.join(walked.rel))
}

/// Resolves the parent of `rel` inside `root` like [`resolve_in_root`] and returns it
/// together with the final name, which is *not* followed (callers replace or create it).
///
/// A missing parent is not created and not an error; the returned directory then does not
/// exist.
pub fn resolve_parent_in_root(root: &Path, rel: &Path) -> Result<(PathBuf, OsString), ResolveError> {
    let (parent, name) = resolve_parent_rel(root, rel, false, None)?;
    Ok((root.join(parent.rel), name))
}

/// Like [`resolve_parent_in_root`] but returns the parent relative to `root`, and optionally
/// creates missing parent directories (mode 0755). With `lower`, `root` is one overlay layer
/// over the layers `lower` describes: a component this layer lacks but the layers below have
/// as a symlink is copied into the layer first and then followed, so the layer's entries land
/// where they land when all layers are applied to one tree.
pub(crate) fn resolve_parent_rel(
    root: &Path,
    rel: &Path,
    create_missing: bool,
    lower: Option<&dyn LowerView>,
) -> Result<(Walked, OsString), ResolveError> {
    let clean =
        normalize_relative(rel).map_err(|reason| ResolveError::UnsafePath { path: rel.to_path_buf(), reason })?;
    let Some(name) = clean.file_name().map(OsStr::to_os_string) else {
        return Err(ResolveError::UnsafePath { path: rel.to_path_buf(), reason: UnsafeReason::NoFinalComponent });
    };
    let parent = clean.parent().unwrap_or(Path::new(""));
    let walked = walk(root, rel, parent.iter(), WalkOptions { create_missing, last_may_be_file: false, lower })?;
    Ok((walked, name))
}

/// A symlink of the layers below the overlay layer being unpacked (see [`LowerView`]).
#[derive(Debug, Clone)]
pub struct LowerSymlink {
    pub target: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mtime: filetime::FileTime,
}

/// The merged layers below an overlay layer that is unpacked into a directory of its own.
pub trait LowerView {
    /// The symlink at `rel` (a path of real directories) in the layers below, if that is what
    /// they have there and the layer being unpacked does not hide it.
    fn symlink_at(&self, rel: &Path) -> Option<LowerSymlink>;
}

/// Resolves a directory path entirely (all components followed), optionally creating it.
/// `lower` as in [`resolve_parent_rel`].
pub(crate) fn resolve_dir_rel(
    root: &Path,
    rel: &Path,
    create_missing: bool,
    lower: Option<&dyn LowerView>,
) -> Result<Walked, ResolveError> {
    let clean =
        normalize_relative(rel).map_err(|reason| ResolveError::UnsafePath { path: rel.to_path_buf(), reason })?;
    walk(root, rel, clean.iter(), WalkOptions { create_missing, last_may_be_file: false, lower })
}

/// True when every component of `rel` below `root` is an existing real directory (no
/// symlinks). Used to re-check a path recorded earlier before touching it again, since later
/// entries may have replaced one of its directories with a symlink.
pub(crate) fn is_plain_dir_path(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    for comp in rel.iter() {
        cur.push(comp);
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Result of a walk: the resolved path relative to the root and whether it exists.
#[derive(Debug, Clone)]
pub(crate) struct Walked {
    /// Root-relative path; every existing component of it is a real directory (or, for the
    /// last component when allowed, a non-directory).
    pub rel: PathBuf,
    pub exists: bool,
    /// Symlinks copied from the layers below (see [`resolve_parent_rel`]).
    pub seeded: Vec<PathBuf>,
}

#[derive(Clone, Copy)]
struct WalkOptions<'l> {
    /// Create missing components as directories (mode 0755) instead of stopping.
    create_missing: bool,
    /// Allow the last component to be a non-directory (for full-path resolution).
    last_may_be_file: bool,
    /// With `create_missing`: the layers below, whose symlinks are copied in before a
    /// missing component is made a directory.
    lower: Option<&'l dyn LowerView>,
}

/// A component still to be resolved; `from_link` when a symlink's target introduced it (a
/// `..` of the caller's own path is refused, one of a target's is resolved).
struct Pending {
    name: OsString,
    from_link: bool,
}

fn walk<'a>(
    root: &Path,
    display: &Path,
    comps: impl Iterator<Item = &'a OsStr>,
    opts: WalkOptions<'_>,
) -> Result<Walked, ResolveError> {
    let mut pending: VecDeque<Pending> = comps.map(|c| Pending { name: c.to_os_string(), from_link: false }).collect();
    let mut followed = 0u32;
    let mut cur = PathBuf::new();
    let mut seeded = Vec::new();

    let io_err = |op: &'static str, at: &Path, source: io::Error| ResolveError::Io {
        path: display.to_path_buf(),
        op,
        at: at.to_path_buf(),
        source,
    };

    while let Some(Pending { name, from_link }) = pending.pop_front() {
        if name == "." || name.is_empty() {
            continue;
        }
        if name == ".." {
            // At the root `..` stays there, as in a chroot; only a caller's own `..` (input
            // that skipped normalization) is refused.
            if !from_link {
                return Err(ResolveError::UnsafePath { path: display.to_path_buf(), reason: UnsafeReason::ParentDir });
            }
            cur.pop();
            continue;
        }
        if !matches!(Path::new(&name).components().next(), Some(Component::Normal(_))) {
            return Err(ResolveError::UnsafePath { path: display.to_path_buf(), reason: UnsafeReason::ParentDir });
        }

        let next = cur.join(&name);
        let full = root.join(&next);
        match fs::symlink_metadata(&full) {
            Ok(md) if md.file_type().is_symlink() => {
                let target = fs::read_link(&full).map_err(|e| io_err("readlink", &next, e))?;
                followed += 1;
                if followed > MAX_SYMLINKS {
                    return Err(ResolveError::SymlinkEscape {
                        path: display.to_path_buf(),
                        symlink: next,
                        target,
                        kind: EscapeKind::Loop,
                    });
                }
                if target.has_root() {
                    // Absolute: resolved again from the root of the image, never the host's.
                    cur.clear();
                }
                if target.as_os_str().is_empty() {
                    return Err(io_err("follow symlink", &next, io::Error::from(io::ErrorKind::NotFound)));
                }
                // Path::iter drops interior `.` but keeps `..`, which is what we need: `..`
                // is applied to the real directory we are in, exactly like the kernel does.
                let expanded: Vec<OsString> =
                    target.iter().filter(|c| *c != OsStr::new("/")).map(OsStr::to_os_string).collect();
                for c in expanded.into_iter().rev() {
                    pending.push_front(Pending { name: c, from_link: true });
                }
            }
            Ok(md) if md.file_type().is_dir() => cur = next,
            Ok(_) => {
                if pending.is_empty() && opts.last_may_be_file {
                    cur = next;
                } else {
                    return Err(ResolveError::NotADirectory { path: display.to_path_buf(), component: next });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(link) = opts.lower.filter(|_| opts.create_missing).and_then(|l| l.symlink_at(&next)) {
                    seed_symlink(&full, &link).map_err(|e| io_err("symlink", &next, e))?;
                    seeded.push(next);
                    pending.push_front(Pending { name, from_link });
                    continue;
                }
                if opts.create_missing {
                    fs::DirBuilder::new().mode(0o755).create(&full).map_err(|e| io_err("mkdir", &next, e))?;
                    // mkdir is subject to the umask; the image expects exactly 0755.
                    fs::set_permissions(&full, fs::Permissions::from_mode(0o755))
                        .map_err(|e| io_err("chmod", &next, e))?;
                    cur = next;
                } else {
                    // Nothing below a missing directory can be a symlink, so the rest of the
                    // path is appended as is. `..` after a missing directory would fail with
                    // ENOENT in the kernel; report the same instead of guessing.
                    cur = next;
                    for Pending { name, .. } in pending.drain(..) {
                        if name == ".." {
                            return Err(io_err("resolve", &cur, io::Error::from(io::ErrorKind::NotFound)));
                        }
                        if name != "." && !name.is_empty() {
                            cur.push(name);
                        }
                    }
                    return Ok(Walked { rel: cur, exists: false, seeded });
                }
            }
            Err(e) => return Err(io_err("lstat", &next, e)),
        }
    }
    Ok(Walked { rel: cur, exists: true, seeded })
}

/// Copies a symlink of the layers below into the layer, owner and mtime included, so the
/// merged tree shows it exactly as before.
fn seed_symlink(full: &Path, link: &LowerSymlink) -> io::Result<()> {
    std::os::unix::fs::symlink(&link.target, full)?;
    std::os::unix::fs::lchown(full, Some(link.uid), Some(link.gid))?;
    filetime::set_symlink_file_times(full, link.mtime, link.mtime)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        (dir, root)
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_relative(Path::new("./a/./b/")).unwrap(), Path::new("a/b"));
        assert_eq!(normalize_relative(Path::new("/")).unwrap(), Path::new(""));
        assert_eq!(normalize_relative(Path::new("./")).unwrap(), Path::new(""));
        assert_eq!(normalize_relative(Path::new("")).unwrap(), Path::new(""));
        assert_eq!(normalize_relative(Path::new("a/../b")), Err(UnsafeReason::ParentDir));
        assert_eq!(normalize_relative(Path::new("/etc")), Err(UnsafeReason::Absolute));
    }

    #[test]
    fn follows_in_root_symlinks() {
        let (_d, root) = setup();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("../etc/passwd", root.join("usr/pw")).unwrap();
        assert_eq!(resolve_in_root(&root, Path::new("lib/x.so")).unwrap(), root.join("usr/lib/x.so"));
        assert_eq!(resolve_in_root(&root, Path::new("usr/pw")).unwrap(), root.join("etc/passwd"));
        let (parent, name) = resolve_parent_in_root(&root, Path::new("usr/pw")).unwrap();
        assert_eq!(parent, root.join("usr"));
        assert_eq!(name, "pw");
        assert_eq!(resolve_in_root(&root, Path::new(".")).unwrap(), root);
    }

    #[test]
    fn resolves_escapes_inside_the_root() {
        let (_d, root) = setup();
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../..", root.join("usr/up")).unwrap();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        symlink("usr/up/etc", root.join("chain")).unwrap();
        // As in a chroot: an absolute target starts at the root, `..` stops there.
        assert_eq!(resolve_in_root(&root, Path::new("abs/passwd")).unwrap(), root.join("etc/passwd"));
        assert_eq!(resolve_in_root(&root, Path::new("abs")).unwrap(), root.join("etc"));
        assert_eq!(resolve_in_root(&root, Path::new("usr/up/x")).unwrap(), root.join("x"));
        assert_eq!(resolve_in_root(&root, Path::new("chain/passwd")).unwrap(), root.join("etc/passwd"));
        match resolve_in_root(&root, Path::new("a/x")) {
            Err(ResolveError::SymlinkEscape { kind: EscapeKind::Loop, .. }) => {}
            other => panic!("a loop: unexpected {other:?}"),
        }
        assert!(matches!(
            resolve_in_root(&root, Path::new("../x")),
            Err(ResolveError::UnsafePath { reason: UnsafeReason::ParentDir, .. })
        ));
        assert!(matches!(
            resolve_in_root(&root, Path::new("/etc/passwd")),
            Err(ResolveError::UnsafePath { reason: UnsafeReason::Absolute, .. })
        ));
    }

    /// An overlay layer unpacked on its own copies a symlink the layers below have where it
    /// would otherwise make a directory, then follows it.
    #[test]
    fn symlinks_of_the_layers_below_are_seeded_then_followed() {
        struct Below;
        impl LowerView for Below {
            fn symlink_at(&self, rel: &Path) -> Option<LowerSymlink> {
                (rel == Path::new("var/run")).then(|| LowerSymlink {
                    target: "/run".into(),
                    uid: 0,
                    gid: 0,
                    mtime: filetime::FileTime::from_unix_time(1_000, 0),
                })
            }
        }
        let d = tempfile::tempdir().unwrap();
        let (walked, name) = resolve_parent_rel(d.path(), Path::new("var/run/x.pid"), true, Some(&Below)).unwrap();
        assert_eq!((walked.rel.as_path(), name.to_str().unwrap()), (Path::new("run"), "x.pid"));
        assert_eq!(walked.seeded, vec![PathBuf::from("var/run")]);
        assert_eq!(fs::read_link(d.path().join("var/run")).unwrap(), Path::new("/run"));
        let md = fs::symlink_metadata(d.path().join("var/run")).unwrap();
        assert_eq!(filetime::FileTime::from_last_modification_time(&md).unix_seconds(), 1_000);
        assert!(d.path().join("run").is_dir());
        // Without the view, the layer gets a directory of its own there.
        let e = tempfile::tempdir().unwrap();
        let (walked, _) = resolve_parent_rel(e.path(), Path::new("var/run/x.pid"), true, None).unwrap();
        assert_eq!(walked.rel, Path::new("var/run"));
    }

    #[test]
    fn missing_tail_and_not_a_dir() {
        let (_d, root) = setup();
        assert_eq!(resolve_in_root(&root, Path::new("nope/deeper")).unwrap(), root.join("nope/deeper"));
        assert!(matches!(resolve_in_root(&root, Path::new("etc/passwd/x")), Err(ResolveError::NotADirectory { .. })));
    }

    #[test]
    fn symlink_dotdot_inside_root_is_fine() {
        let (_d, root) = setup();
        symlink("../../etc", root.join("usr/lib/e")).unwrap();
        assert_eq!(resolve_in_root(&root, Path::new("usr/lib/e/passwd")).unwrap(), root.join("etc/passwd"));
    }
}
