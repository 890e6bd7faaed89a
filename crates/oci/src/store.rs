//! One entry point for reading images, whatever the reference: `oci:` layouts and (see
//! `registry`) `docker://` registries.

use std::path::PathBuf;

use crate::error::{OciError, Result};
use crate::layout::{Image, OciLayout};
use crate::platform::Platform;
use crate::reference::ImageRef;

/// Settings shared by every command that reads or writes images.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Content-addressed cache for registry blobs (default: the user's cache dir).
    pub cache_dir: Option<PathBuf>,
    /// Registries (`host[:port]`) to reach over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
}

/// Resolves `reference` to a single-platform image. Only the manifest and config are read;
/// layers are read (or, for registries, downloaded) when something needs their bytes.
pub fn open_image(reference: &ImageRef, platform: &Platform, _opts: &StoreOptions) -> Result<Image> {
    match reference {
        ImageRef::Layout(l) => OciLayout::open(&l.dir)?.resolve(l.tag.as_deref(), platform),
        ImageRef::Registry(r) => Err(OciError::Registry {
            registry: r.registry.clone(),
            message: "registry images are not supported yet".into(),
        }),
    }
}
