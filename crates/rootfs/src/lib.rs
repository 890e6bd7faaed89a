//! Rootfs: safe layer unpacking, snapshot diffing and the chroot sandbox for RUN.
//!
//! The unpacker ([`unpack_layer`]) applies OCI layer tars to a directory without ever
//! touching anything outside it; [`safe_path`] holds the in-root path resolution it is built
//! on, which other code can use to read files of a rootfs (e.g. `/etc/passwd`) safely.

pub mod error;
pub mod safe_path;
pub mod unpack;

pub use error::{EscapeKind, ResolveError, UnpackError, UnsafeReason};
pub use safe_path::{resolve_in_root, resolve_parent_in_root};
pub use unpack::{UnpackOptions, UnpackStats, WhiteoutMode, unpack_layer};
