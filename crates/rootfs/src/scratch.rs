//! Private scratch directories (`ext-extend-<pid>-<random>` under `$TMPDIR` or a chosen
//! parent). They are removed on drop and on Ctrl-C/SIGTERM (see `ext_oci::cleanup`); ones left
//! by a run that was killed outright are recognised by their dead pid and removed by the next
//! run. Nothing in them is ever mounted on the host (mounts live in the sandbox's namespace).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
    _cleanup: ext_oci::cleanup::PathGuard,
}

const PREFIX: &str = "ext-extend-";

impl Scratch {
    pub fn create(parent: Option<&Path>) -> io::Result<Scratch> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&parent)?;
        remove_stale(&parent);
        let dir = tempfile::Builder::new().prefix(&format!("{PREFIX}{}-", std::process::id())).tempdir_in(&parent)?;
        let _cleanup = ext_oci::cleanup::register_path(dir.path());
        Ok(Scratch { dir, _cleanup })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Removes `ext-extend-<pid>-*` directories whose process is gone.
fn remove_stale(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() && e.path().is_dir() {
            tracing::info!("removing {} left by an interrupted run", e.path().display());
            let _ = fs::remove_dir_all(e.path());
        }
    }
}
