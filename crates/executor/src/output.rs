//! Writing an [`ExtendedImage`]: the manifest (base layers by digest, then the new layers) and
//! config, committed atomically into an OCI layout or pushed to a registry (tag last).

use std::path::PathBuf;

use ext_oci::registry::{LayerSource, PushLayer};
use ext_oci::{Digest, ImageRef, LayoutWriter, OciError, RegistryRef, StoreOptions, media};
use serde_json::{Value, json};

use crate::error::{ExecError, Result};
use crate::session::ExtendedImage;

/// Where an extended image goes. Opened before the session, which writes its new layer blobs
/// into [`OutputTarget::blob_dir`], so committing moves files instead of copying them.
pub enum OutputTarget {
    Layout { writer: LayoutWriter, tag: String },
    Registry { reference: RegistryRef, staging: tempfile::TempDir, _cleanup: ext_oci::cleanup::PathGuard },
}

impl OutputTarget {
    pub fn begin(reference: &ImageRef, _opts: &StoreOptions) -> Result<OutputTarget> {
        match reference {
            ImageRef::Layout(l) => Ok(OutputTarget::Layout {
                writer: LayoutWriter::begin(&l.dir)?,
                tag: l.tag.clone().unwrap_or_else(|| "latest".into()),
            }),
            ImageRef::Registry(r) => {
                if r.digest.is_some() {
                    return Err(ExecError::Image(OciError::BadReference {
                        reference: reference.to_string(),
                        reason: "an output is pushed by tag: use docker://HOST/REPO:TAG, without @DIGEST".into(),
                    }));
                }
                let staging = tempfile::Builder::new()
                    .prefix("ext-extend-push-")
                    .tempdir()
                    .map_err(ExecError::io(std::env::temp_dir()))?;
                let _cleanup = ext_oci::cleanup::register_path(staging.path());
                Ok(OutputTarget::Registry { reference: r.clone(), staging, _cleanup })
            }
        }
    }

    /// Where the session writes new layer blobs.
    pub fn blob_dir(&self) -> PathBuf {
        match self {
            OutputTarget::Layout { writer, .. } => writer.staging_blobs(),
            OutputTarget::Registry { staging, .. } => staging.path().join("blobs").join("sha256"),
        }
    }

    /// A short description for logs.
    pub fn describe(&self) -> String {
        match self {
            OutputTarget::Layout { writer, tag } => format!("oci:{}:{tag}", writer.target().display()),
            OutputTarget::Registry { reference, .. } => ImageRef::Registry(reference.clone()).to_string(),
        }
    }
}

/// What was written, for the CLI's output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WrittenImage {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    pub layers: Vec<WrittenLayer>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WrittenLayer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    /// True for layers this build made; false for base layers carried over by digest.
    pub new: bool,
}

/// The layers of an image made of `base` and `new_layers`, as [`ExtendedImage::layer_descriptors`].
pub(crate) fn layer_descriptors(base: &ext_oci::Image, new_layers: &[ext_oci::LayerBlob]) -> Vec<WrittenLayer> {
    let base = base.layers().iter().map(|d| WrittenLayer {
        digest: d.digest().to_string(),
        size: d.size(),
        media_type: media::oci_layer_type(d.media_type().as_ref()).to_string(),
        new: false,
    });
    let new = new_layers.iter().map(|l| WrittenLayer {
        digest: l.digest.to_string(),
        size: l.size,
        media_type: l.media_type.to_string(),
        new: true,
    });
    base.chain(new).collect()
}

/// The OCI manifest bytes of `layers` and a config (sorted keys, so the same image always has
/// the same digest).
pub(crate) fn manifest_bytes(layers: &[WrittenLayer], config_digest: &Digest, config_size: u64) -> Vec<u8> {
    let layers: Vec<Value> =
        layers.iter().map(|l| json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest.to_string(), "size": config_size},
        "layers": layers,
    });
    serde_json::to_vec(&manifest).expect("JSON serializes")
}

impl ExtendedImage {
    /// Canonical config bytes; an error if they exceed [`ext_oci::config::MAX_CONFIG_BYTES`]
    /// (the session refuses such a config at the instruction that grew it; this catches edits
    /// made after the session, e.g. the lifecycle's labels).
    pub fn config_bytes(&self) -> Result<Vec<u8>> {
        let bytes = self.config.to_canonical_bytes();
        if bytes.len() > ext_oci::config::MAX_CONFIG_BYTES {
            return Err(ExecError::Image(OciError::ConfigTooLarge { size: bytes.len() }));
        }
        Ok(bytes)
    }

    /// The layers of the result: base layers unchanged (media types in their OCI spelling),
    /// then the new ones.
    pub fn layer_descriptors(&self) -> Vec<WrittenLayer> {
        layer_descriptors(&self.base, &self.new_layers)
    }

    /// The OCI manifest bytes (sorted keys, so the same image always has the same digest).
    pub fn manifest_bytes(&self, config_digest: &Digest, config_size: u64) -> Vec<u8> {
        manifest_bytes(&self.layer_descriptors(), config_digest, config_size)
    }

    /// Writes the image to `target` (a layout commit or a registry push).
    pub fn write(&self, target: OutputTarget, opts: &StoreOptions) -> Result<WrittenImage> {
        match target {
            OutputTarget::Layout { writer, tag } => self.write_layout(writer, &tag),
            OutputTarget::Registry { reference, staging, _cleanup } => {
                // The staging dir holds the new layers until the push is over.
                let written = self.push(&reference, opts);
                drop(staging);
                written
            }
        }
    }

    /// Pushes the image to `target`: layers the registry lacks (base layers are mounted from
    /// their repository when they are on the same registry, else taken from the base's store),
    /// the config, then the manifest by tag.
    pub fn push(&self, target: &RegistryRef, opts: &StoreOptions) -> Result<WrittenImage> {
        let mut layers = Vec::new();
        for d in self.base.layers() {
            layers.push(PushLayer {
                digest: Digest::try_from(d.digest())?,
                size: d.size(),
                source: LayerSource::Store(self.base.store.clone()),
            });
        }
        for l in &self.new_layers {
            let source = match self.layer_stores.get(&l.digest) {
                Some(store) => LayerSource::Store(store.clone()),
                None => LayerSource::File(l.path.clone()),
            };
            layers.push(PushLayer { digest: l.digest.clone(), size: l.size, source });
        }
        let config = self.config_bytes()?;
        let config_digest = Digest::of(&config);
        let manifest = self.manifest_bytes(&config_digest, config.len() as u64);
        let pushed = ext_oci::registry::push_image(target, &manifest, media::OCI_MANIFEST, &config, &layers, opts)?;
        Ok(WrittenImage {
            manifest_digest: pushed.digest.to_string(),
            manifest_size: pushed.size,
            config_digest: config_digest.to_string(),
            layers: self.layer_descriptors(),
        })
    }

    /// Commits the image into the layout `writer` was opened on, tagged `tag`. The new layer
    /// blobs must already be in `writer.staging_blobs()` (the session wrote them there).
    pub fn write_layout(&self, mut writer: LayoutWriter, tag: &str) -> Result<WrittenImage> {
        for (d, desc) in self.base.layer_digests()?.iter().zip(self.base.layers()) {
            writer.add_blob_from(&self.base.store, d, desc.size())?;
        }
        self.commit_layout(writer, tag)
    }

    /// Like [`ExtendedImage::write_layout`], but the layout holds only the new layer blobs
    /// (plus manifest and config): the CNB extender's `<extended>/run` output, whose base
    /// layers the exporter takes from the run image itself.
    pub fn write_layout_sparse(&self, writer: LayoutWriter, tag: &str) -> Result<WrittenImage> {
        self.commit_layout(writer, tag)
    }

    fn commit_layout(&self, mut writer: LayoutWriter, tag: &str) -> Result<WrittenImage> {
        for layer in &self.new_layers {
            writer.add_blob_file(&layer.path, &layer.digest)?;
        }
        let config = self.config_bytes()?;
        let config_digest = writer.add_blob_bytes(&config)?;
        let manifest = self.manifest_bytes(&config_digest, config.len() as u64);
        let desc = writer.commit(&manifest, media::OCI_MANIFEST, tag)?;
        Ok(WrittenImage {
            manifest_digest: desc.digest().to_string(),
            manifest_size: desc.size(),
            config_digest: config_digest.to_string(),
            layers: self.layer_descriptors(),
        })
    }
}
