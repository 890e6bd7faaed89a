//! Rootfs: the filesystem side of RUN. Safe layer unpacking ([`unpack_layer`]), the two places
//! RUN can happen behind one interface ([`RunRoot`]): a private root filesystem materialized
//! once per session with the chroot sandbox ([`Rootfs`], [`sandbox`]), or the live root of the
//! container ext-extend runs in ([`LiveRoot`]); and the snapshot differs that turn a RUN's
//! changes into a layer ([`diff`]).
//!
//! The unpacker applies OCI layer tars to a directory without ever touching anything outside
//! it; [`safe_path`] holds the in-root path resolution it is built on, which other code can use
//! to read files of a rootfs (e.g. `/etc/passwd`) safely.

pub mod diff;
pub mod error;
pub mod live;
mod mount_points;
pub mod rootfs;
pub mod run_root;
pub mod safe_path;
pub mod sandbox;
pub mod scratch;
pub mod seccomp;
pub mod setup;
pub mod unpack;
pub mod userns;

pub use diff::{Change, IgnoreSet, Snapshot, StatIndex, write_snapshot};
pub use error::{EscapeKind, ResolveError, RootfsError, UnpackError, UnsafeReason};
pub use live::{LiveRoot, container_evidence};
pub use rootfs::{CacheFill, Rootfs, RunOutcome, SnapshotMode};
pub use run_root::RunRoot;
pub use safe_path::{LowerSymlink, LowerView, resolve_in_root, resolve_parent_in_root};
pub use sandbox::{MountSource, Network, RunSpec, SandboxMount};
pub use scratch::Scratch;
pub use seccomp::SeccompProfile;
pub use unpack::{PathFilter, UnpackOptions, UnpackStats, WhiteoutMode, unpack_layer, unpack_layer_over};
