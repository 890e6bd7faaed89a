//! One entry point for reading images, whatever the reference: `oci:` layouts and (see
//! [`crate::registry`]) `docker://` registries.

use std::path::PathBuf;

use crate::error::Result;
use crate::layout::{Image, OciLayout};
use crate::platform::Platform;
use crate::reference::ImageRef;

/// Settings shared by every command that reads or writes images.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Content-addressed cache for registry blobs (default: [`default_cache_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) to reach over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// A registry request that receives or sends no byte for this long is abandoned (and
    /// retried like a connection error). Default: [`DEFAULT_STALL_TIMEOUT`].
    pub stall_timeout: Option<std::time::Duration>,
}

/// No byte for this long and a transfer counts as stalled.
pub const DEFAULT_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl StoreOptions {
    /// The registry blob cache: `cache_dir` or the default, as an absolute path (cached layers
    /// are linked into the sandbox's overlay by absolute symlinks).
    pub fn cache_dir(&self) -> PathBuf {
        let dir = self.cache_dir.clone().unwrap_or_else(default_cache_dir);
        std::path::absolute(&dir).unwrap_or(dir)
    }
}

/// `$XDG_CACHE_HOME/ext-extend`, else `$HOME/.cache/ext-extend` (else under `$TMPDIR`).
pub fn default_cache_dir() -> PathBuf {
    let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(x) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
        return x.join("ext-extend");
    }
    match var("HOME") {
        Some(home) => home.join(".cache").join("ext-extend"),
        None => std::env::temp_dir().join("ext-extend-cache"),
    }
}

/// Resolves `reference` to a single-platform image. Only the manifest and config are read;
/// layers are read (or, for registries, downloaded into the cache) when something needs their
/// bytes.
pub fn open_image(reference: &ImageRef, platform: &Platform, opts: &StoreOptions) -> Result<Image> {
    match reference {
        ImageRef::Layout(l) => OciLayout::open(&l.dir)?.resolve(l.tag.as_deref(), platform),
        ImageRef::Registry(r) => crate::registry::open_image(r, platform, opts),
    }
}
