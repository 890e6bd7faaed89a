//! Private scratch directories (`ext-extend-<random>` under `$TMPDIR` or a chosen parent).
//! They are removed on drop and on Ctrl-C/SIGTERM (see `ext_oci::cleanup`); ones left by a run
//! that was killed outright are recognised by their released lock and removed by the next run. Nothing in them is ever mounted on the host (mounts live in the sandbox's namespace).

use std::fs;
use std::io;
use std::path::Path;

#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    _cleanup: ext_oci::cleanup::PathGuard,
    /// After `dir`: the lock file goes once the directory is gone.
    _owner: ext_oci::cleanup::OwnerLock,
}

const PREFIX: &str = "ext-extend-";

/// Prefix of a layer being unpacked into the unpacked-layer cache.
pub const UNPACKING_PREFIX: &str = ".unpacking-";

impl Scratch {
    pub fn create(parent: Option<&Path>) -> io::Result<Scratch> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        // The sandbox changes directory: a relative scratch path would then point elsewhere.
        let parent = std::path::absolute(&parent)?;
        fs::create_dir_all(&parent)?;
        ext_oci::cleanup::remove_stale(&parent, PREFIX);
        let (dir, _owner) = ext_oci::cleanup::owned_tempdir(&parent, PREFIX)?;
        let _cleanup = ext_oci::cleanup::register_path(dir.path());
        Ok(Scratch { dir, _cleanup, _owner })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
