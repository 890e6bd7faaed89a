//! The registry store (`--cache-repo docker://HOST/REPO`): each entry is a manifest tagged with
//! its key's hex digits in that repository, pushed with ext-oci's registry client (HEAD before
//! every blob, the tag last) and read through it (blobs downloaded, verified, into the local
//! store's blob directory, so a hit from the registry is a local hit next time).

use std::path::{Path, PathBuf};

use ext_oci::registry::{LayerSource, PushLayer};
use ext_oci::{BlobStore, Digest, ImageRef, RegistryRef, StoreOptions, media};

use crate::entry::Entry;
use crate::error::{Result, StepCacheError};
use crate::local::Found;

pub struct RegistryStore {
    repository: RegistryRef,
    opts: StoreOptions,
    blobs: BlobStore,
}

impl RegistryStore {
    /// `reference`: `docker://HOST[:PORT]/REPO`; blobs are downloaded into `blob_root`
    /// (`<blob_root>/blobs/sha256/`), normally the local store's directory.
    pub fn open(reference: &str, blob_root: &Path, opts: &StoreOptions) -> Result<RegistryStore> {
        let bad = || StepCacheError::BadRepository(reference.to_string());
        let repository = match reference.parse::<ImageRef>().map_err(|_| bad())? {
            ImageRef::Registry(r) if r.tag.is_none() && r.digest.is_none() => r,
            _ => return Err(bad()),
        };
        let blobs = ext_oci::registry::remote_store(&repository, blob_root, opts)?;
        Ok(RegistryStore { repository, opts: opts.clone(), blobs })
    }

    /// `HOST/REPO`, for log lines.
    pub fn name(&self) -> String {
        format!("{}/{}", self.repository.registry, self.repository.repository)
    }

    pub fn repository(&self) -> &RegistryRef {
        &self.repository
    }

    /// The entry tagged with `key`'s hex digits, its config and layer downloaded (verified).
    pub fn get(&self, key: &Digest) -> Result<Option<Found>> {
        let Some(manifest) = ext_oci::registry::find_manifest(&self.repository, key.hex(), &self.opts)? else {
            return Ok(None);
        };
        let (entry, refs) = Entry::parse(key, &manifest, |d, s| Ok(self.blobs.read_verified(d, Some(s))?))?;
        let layer_path: Option<PathBuf> = match &refs.layer {
            Some((digest, size)) => {
                self.blobs.ensure(digest, Some(*size))?;
                Some(self.blobs.blob_path(digest))
            }
            None => None,
        };
        Ok(Some(Found { entry, layer_path, origin: Some(self.blobs.clone()) }))
    }

    /// Pushes `entry` (its layer from `layer`), tagged with its key.
    pub fn put(&self, entry: &Entry, layer: Option<&Path>) -> Result<()> {
        let config = entry.config_bytes();
        let manifest = entry.manifest_bytes(&config);
        let mut layers = Vec::new();
        if let (Some(l), Some(path)) = (&entry.outcome.layer, layer) {
            layers.push(PushLayer { digest: l.digest.clone(), size: l.size, source: LayerSource::File(path.into()) });
        }
        let target = RegistryRef { tag: Some(entry.key.hex().to_string()), ..self.repository.clone() };
        ext_oci::registry::push_image(&target, &manifest, media::OCI_MANIFEST, &config, &layers, &self.opts)?;
        Ok(())
    }
}
