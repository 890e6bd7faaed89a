//! The one interface the executor uses for RUN, whichever way RUN happens:
//! - [`crate::Rootfs`]: a private scratch root filesystem unpacked from the image's layers, and
//!   a sandbox (namespaces + chroot) per command; needs root with `CAP_SYS_ADMIN`;
//! - [`crate::LiveRoot`]: the filesystem of the container ext-extend runs in, which *is* the
//!   image being extended (how CNB platforms run the extender); commands are plain child
//!   processes, so it works without any privilege a default container lacks.

use std::io::Read;

use crate::error::RootfsError;
use crate::rootfs::RunOutcome;
use crate::sandbox::RunSpec;
use crate::unpack::UnpackStats;

pub trait RunRoot {
    /// Applies one of the session's own layers (a COPY/ADD, as an uncompressed tar stream), so
    /// later RUNs see its files.
    fn add_layer(&mut self, tar: &mut dyn Read, name: &str) -> Result<UnpackStats, RootfsError>;

    /// Reads a file of the image's tree (e.g. `etc/passwd`), following no symlink out of it.
    fn read_file(&self, rel: &str) -> Option<Vec<u8>>;

    /// Runs a command and returns its status and, on success, what it changed.
    fn run(&mut self, spec: &RunSpec) -> Result<RunOutcome, RootfsError>;

    /// Layers applied so far (base layers included, for the scratch rootfs).
    fn layers_added(&self) -> usize;

    /// How changes are found, for the log.
    fn snapshot_kind(&self) -> &'static str;

    /// Ends the session's use of the root: removes what the session created for it.
    fn finish(self: Box<Self>);
}
