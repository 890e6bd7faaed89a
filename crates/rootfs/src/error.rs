//! Error types of the safe path resolver and the layer unpacker.
//!
//! Every [`UnpackError`] names the layer and, when one is involved, the tar entry, because a
//! build usually unpacks a dozen layers and "no such file" without that context is useless.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a path given to the resolver (or a tar entry name) was refused before touching the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsafeReason {
    /// The path contains a `..` component.
    ParentDir,
    /// The path is absolute (and is not just `/`).
    Absolute,
    /// The path names the root itself where a name inside the root is required.
    NoFinalComponent,
    /// A whiteout entry whose target name is empty, `.` or `..`.
    BadWhiteout,
    /// The hard-link target of the entry contains a `..` component.
    LinkParentDir,
    /// The hard-link target of the entry is an absolute path.
    LinkAbsolute,
}

impl fmt::Display for UnsafeReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UnsafeReason::ParentDir => "it contains a `..` component",
            UnsafeReason::Absolute => "it is an absolute path",
            UnsafeReason::NoFinalComponent => "it names the root directory itself",
            UnsafeReason::BadWhiteout => "it is a whiteout for an empty, `.` or `..` name",
            UnsafeReason::LinkParentDir => "its hard-link target contains a `..` component",
            UnsafeReason::LinkAbsolute => "its hard-link target is an absolute path",
        })
    }
}

/// Why a symlink met during resolution cannot be followed. (Absolute targets and `..` above
/// the root are resolved inside the root, as in a chroot, so they are not errors.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapeKind {
    /// More than [`crate::safe_path::MAX_SYMLINKS`] symlinks were followed (a loop, most likely).
    Loop,
}

impl fmt::Display for EscapeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EscapeKind::Loop => "is part of a symlink loop (more than 40 symlinks followed)",
        })
    }
}

/// Error of [`crate::safe_path::resolve_in_root`] and [`crate::safe_path::resolve_parent_in_root`].
///
/// All paths are relative to the root, so messages never leak host paths of the build
/// machine and read the same way as the paths in a Dockerfile.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("path `{path}` is refused: {reason}", path = crate::error::esc(.path))]
    UnsafePath { path: PathBuf, reason: UnsafeReason },

    #[error("path `{path}` goes through symlink `{symlink}` -> `{target}`, which {kind}", symlink = crate::error::esc(.symlink), target = crate::error::esc(.target), path = crate::error::esc(.path))]
    SymlinkEscape { path: PathBuf, symlink: PathBuf, target: PathBuf, kind: EscapeKind },

    #[error("path `{path}`: `{component}` is not a directory", component = crate::error::esc(.component), path = crate::error::esc(.path))]
    NotADirectory { path: PathBuf, component: PathBuf },

    #[error("path `{path}`: {op} `{at}` failed: {source}", path = crate::error::esc(.path), at = crate::error::esc(.at))]
    Io {
        path: PathBuf,
        op: &'static str,
        at: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Error of [`crate::unpack::unpack_layer`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The entry name (or hard-link target) is absolute or contains `..`.
    #[error("layer {layer}: entry `{entry}` is refused: {reason}", entry = crate::error::esc(.entry))]
    UnsafePath { layer: String, entry: PathBuf, reason: UnsafeReason },

    /// A parent component of the entry (or of its hard-link target) is a symlink that leads
    /// outside the root. `symlink` is relative to the root.
    #[error("layer {layer}: entry `{entry}` goes through symlink `{symlink}` -> `{target}`, which {kind}", entry = crate::error::esc(.entry), symlink = crate::error::esc(.symlink), target = crate::error::esc(.target))]
    SymlinkEscape { layer: String, entry: PathBuf, symlink: PathBuf, target: PathBuf, kind: EscapeKind },

    /// A parent component of the entry exists and is not a directory.
    #[error("layer {layer}: entry `{entry}`: parent `{component}` is not a directory", entry = crate::error::esc(.entry), component = crate::error::esc(.component))]
    NotADirectory { layer: String, entry: PathBuf, component: PathBuf },

    /// The hard-link target is missing, is a directory, or cannot be linked.
    #[error("layer {layer}: entry `{entry}`: hard link to `{target}` refused: {reason}", entry = crate::error::esc(.entry), target = crate::error::esc(.target))]
    BadHardLink { layer: String, entry: PathBuf, target: PathBuf, reason: String },

    /// A tar entry type the unpacker does not know how to apply.
    #[error("layer {layer}: entry `{entry}` has unsupported tar entry type {kind:?}", entry = crate::error::esc(.entry))]
    UnsupportedEntry { layer: String, entry: PathBuf, kind: u8 },

    /// A header field that cannot be applied (e.g. uid beyond `u32`).
    #[error("layer {layer}: entry `{entry}`: invalid header: {reason}", entry = crate::error::esc(.entry))]
    BadHeader { layer: String, entry: PathBuf, reason: String },

    /// Setting an extended attribute failed (failures that only lose optional information,
    /// like `user.*` on a filesystem without user xattrs, are logged instead).
    #[error("layer {layer}: entry `{entry}`: setting xattr `{name}` on `{path}` failed: {source}", entry = crate::error::esc(.entry), path = crate::error::esc(.path), name = ext_oci::escape::text(.name))]
    Xattr {
        layer: String,
        entry: PathBuf,
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// The tar stream itself is malformed or truncated. `after` is the last good entry.
    #[error("layer {layer}: malformed tar stream{}: {source}", after_suffix(.after))]
    Tar {
        layer: String,
        after: Option<PathBuf>,
        #[source]
        source: io::Error,
    },

    /// The filesystem being unpacked to is (nearly) full: unpacking stopped before it was.
    #[error(
        "layer {layer}: unpacking stopped at entry `{entry}`: the scratch filesystem is nearly full ({available_mib} MiB and {inodes_free} inodes free; {reserve_mib} MiB and {inode_reserve} inodes are kept free). Free some space or point --scratch-dir elsewhere",
        entry = crate::error::esc(.entry)
    )]
    NoSpace {
        layer: String,
        entry: PathBuf,
        available_mib: u64,
        inodes_free: u64,
        reserve_mib: u64,
        inode_reserve: u64,
    },

    /// A filesystem operation failed. `path` is relative to the root.
    #[error("layer {layer}: entry `{entry}`: {op} `{path}` failed: {source}", entry = crate::error::esc(.entry), path = crate::error::esc(.path))]
    Io {
        layer: String,
        entry: PathBuf,
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An untrusted path (a tar entry name, a link target) for a message.
pub(crate) fn esc(p: &std::path::Path) -> ext_oci::escape::Escaped<'_> {
    ext_oci::escape::path(p)
}

fn after_suffix(after: &Option<PathBuf>) -> String {
    match after {
        Some(p) => format!(" after entry `{}`", esc(p)),
        None => String::new(),
    }
}

impl UnpackError {
    /// Attaches layer and entry context to a resolver error.
    pub(crate) fn from_resolve(layer: &str, entry: &std::path::Path, err: ResolveError) -> Self {
        let layer = layer.to_owned();
        let entry = entry.to_path_buf();
        match err {
            ResolveError::UnsafePath { reason, .. } => UnpackError::UnsafePath { layer, entry, reason },
            ResolveError::SymlinkEscape { symlink, target, kind, .. } => {
                UnpackError::SymlinkEscape { layer, entry, symlink, target, kind }
            }
            ResolveError::NotADirectory { component, .. } => UnpackError::NotADirectory { layer, entry, component },
            ResolveError::Io { op, at, source, .. } => UnpackError::Io { layer, entry, op, path: at, source },
        }
    }
}

/// Errors of the rootfs, the sandbox and the differ.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Unpack(#[from] Box<UnpackError>),

    #[error("{path}: {source}", path = crate::error::esc(.path))]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot start `{program}` in the sandbox: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("{0}")]
    Unsupported(String),

    /// A `RUN --mount` target the image cannot take (a file where a directory is needed, a
    /// symlink loop), or a mount the executor cannot make.
    #[error("RUN --mount target {target}: {message}")]
    MountTarget { target: String, message: String },

    /// A setting (environment variable) that is invalid, or that cannot be honoured here.
    #[error("{0}")]
    Setting(String),

    /// The unpacked-layer cache verified this layer against another diffID than the image
    /// config now lists: the config is wrong (the compressed digest is the same).
    #[error(
        "layer {layer}: its uncompressed content hashes to {recorded}, but the image config lists diff_id {expected}"
    )]
    DiffIdMismatch { layer: String, recorded: String, expected: String },
}

impl RootfsError {
    /// Bad input from the user rather than a failure of the machine.
    pub fn is_user_error(&self) -> bool {
        matches!(self, RootfsError::Setting(_) | RootfsError::MountTarget { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> RootfsError {
        let path = path.into();
        move |source| RootfsError::Io { path, source }
    }
}
