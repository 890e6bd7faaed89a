//! Extension layers (RFC "Add extension layer to exchange data", first draft): a distinct
//! writable directory per extension, created before its `bin/generate` runs, handed to it as
//! `CNB_EXT_LAYER_DIR`, used as the build context of its Dockerfiles in the extend phase, and
//! marked `[types] extension = true` so the exporter never puts it into the app image.
//!
//! Layout, next to buildpack layers:
//! ```text
//! <layers>/<escaped-extension-id>/extension/        the layer (CNB_EXT_LAYER_DIR)
//! <layers>/<escaped-extension-id>/extension.toml    [types] extension = true, launch/build/cache = false
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{LifecycleError, Result};
use crate::files::{EXTENSION_LAYER_TOML, escape_id};

/// The layer's name under the extension's layers directory.
pub const LAYER_NAME: &str = "extension";

#[derive(Debug, Clone)]
pub struct ExtensionLayer {
    pub dir: PathBuf,
    pub metadata: PathBuf,
}

impl ExtensionLayer {
    pub fn locate(layers: &Path, extension_id: &str) -> ExtensionLayer {
        let base = layers.join(escape_id(extension_id));
        ExtensionLayer { dir: base.join(LAYER_NAME), metadata: base.join(format!("{LAYER_NAME}.toml")) }
    }

    /// Creates the layer fresh: a stale one from an earlier build is emptied first.
    pub fn create(layers: &Path, extension_id: &str) -> Result<ExtensionLayer> {
        let layer = ExtensionLayer::locate(layers, extension_id);
        match fs::symlink_metadata(&layer.dir) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(&layer.dir).map_err(LifecycleError::io(&layer.dir))?,
            Ok(_) => fs::remove_file(&layer.dir).map_err(LifecycleError::io(&layer.dir))?,
            Err(_) => {}
        }
        fs::create_dir_all(&layer.dir).map_err(LifecycleError::io(&layer.dir))?;
        crate::files::write_atomic(&layer.metadata, EXTENSION_LAYER_TOML.as_bytes())?;
        Ok(layer)
    }

    /// True when `bin/generate` wrote something into it.
    pub fn has_content(&self) -> bool {
        fs::read_dir(&self.dir).is_ok_and(|mut d| d.next().is_some())
    }
}
