//! OCI image layouts: reading images (tag, image index -> platform manifest -> config) with
//! every small blob verified, and writing images atomically.
//!
//! Atomicity: a new layout is assembled in a temporary sibling directory and renamed into place;
//! an existing layout receives its new blobs first (content-addressed, so harmless if we stop
//! there) and `index.json` last, replaced by rename. A failed or killed run leaves the previous
//! `index.json` - and so every image in the layout - exactly as it was.

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde_json::{Value, json};

use crate::config::ImageConfig;
use crate::digest::{BlobCheckFailure, Digest, VerifyingReader};
use crate::error::{OciError, Result};
use crate::media;
use crate::platform::Platform;
use crate::reference::RegistryRef;

/// Manifests, indexes and configs larger than this are refused (they are a few KiB in practice;
/// the limit stops a hostile layout from making us allocate without bound).
const MAX_JSON_BLOB: u64 = 16 << 20;

/// Downloads blobs a [`BlobStore`] lacks (the registry blob cache fetches from its registry).
pub trait BlobFetcher: Send + Sync {
    /// Writes the blob `digest` into the new file `dest`, verifying its digest (and its size,
    /// when known) while it streams; on error `dest` may hold a partial download.
    fn fetch(&self, digest: &Digest, size: Option<u64>, dest: &Path) -> Result<()>;

    /// The registry repository blobs come from, for cross-repository mounts and messages.
    fn origin(&self) -> Option<&RegistryRef>;
}

/// A directory of content-addressed blobs (`<root>/blobs/sha256/<hex>`): an OCI layout, or the
/// registry blob cache. A store with a [`BlobFetcher`] downloads missing blobs when they are
/// first opened (or [`BlobStore::ensure`]d), so registry layers are fetched lazily, once.
#[derive(Clone)]
pub struct BlobStore {
    root: PathBuf,
    fetcher: Option<Arc<dyn BlobFetcher>>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("BlobStore");
        d.field("root", &self.root);
        if let Some(origin) = self.origin() {
            d.field("origin", &format!("{}/{}", origin.registry, origin.repository));
        }
        d.finish()
    }
}

/// Temporary download directories in a fetching store: `<root>/tmp/.fetch-<pid>-<random>`.
const FETCH_PREFIX: &str = ".fetch-";
/// Prefix of a [`LayoutWriter`]'s staging directory beside its target (`<prefix><pid>-...`).
pub const STAGING_PREFIX: &str = ".ext-extend-staging-";

impl BlobStore {
    pub fn new(root: impl Into<PathBuf>) -> BlobStore {
        BlobStore { root: root.into(), fetcher: None }
    }

    /// The same directory, downloading missing blobs with `fetcher`.
    pub fn with_fetcher(self, fetcher: Arc<dyn BlobFetcher>) -> BlobStore {
        BlobStore { fetcher: Some(fetcher), ..self }
    }

    /// Where missing blobs come from, if anywhere.
    pub fn origin(&self) -> Option<&RegistryRef> {
        self.fetcher.as_deref().and_then(|f| f.origin())
    }

    /// Makes sure the blob is in the store, downloading it (verified, to a temporary file, then
    /// renamed into place) if the store has a fetcher; without one a missing blob is an error.
    ///
    /// A fetching store is a cache whose blobs are passed into outputs without being read, so
    /// it records, per blob, the file's stat (size, mtime, ctime, inode) at which its content was
    /// last verified: a blob whose stat changed since (edited, replaced, restored from a backup)
    /// is hashed again, and downloaded again if it no longer matches.
    pub fn ensure(&self, digest: &Digest, size: Option<u64>) -> Result<()> {
        let Some(fetcher) = &self.fetcher else {
            if self.has(digest) {
                return Ok(());
            }
            return Err(OciError::MissingBlob { digest: digest.clone(), store: self.root.clone() });
        };
        if self.has(digest) {
            if self.verified_stat_unchanged(digest) {
                return Ok(());
            }
            match self.verify(digest, size) {
                Ok(()) => {
                    self.record_verified(digest);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!("cached blob {digest} changed since it was verified ({e}); downloading it again");
                    let _ = fs::remove_file(self.blob_path(digest));
                    let _ = fs::remove_file(self.record_path(digest));
                }
            }
        }
        let tmp_root = self.root.join("tmp");
        fs::create_dir_all(&tmp_root).map_err(OciError::io(&tmp_root))?;
        let (tmp, _owner) = crate::cleanup::owned_tempdir(&tmp_root, FETCH_PREFIX).map_err(OciError::io(&tmp_root))?;
        let _cleanup = crate::cleanup::register_path(tmp.path());
        let part = tmp.path().join(digest.hex());
        fetcher.fetch(digest, size, &part)?;
        let blobs = self.blobs_dir();
        fs::create_dir_all(&blobs).map_err(OciError::io(&blobs))?;
        let dest = self.blob_path(digest);
        fs::rename(&part, &dest).map_err(OciError::io(&dest))?;
        self.record_verified(digest);
        Ok(())
    }

    /// `<root>/verified/sha256/<hex>`: the stat of the blob when its content was last verified.
    fn record_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("verified").join("sha256").join(digest.hex())
    }

    fn stat_key(&self, digest: &Digest) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let md = fs::symlink_metadata(self.blob_path(digest)).ok().filter(fs::Metadata::is_file)?;
        Some(format!(
            "size={} mtime={}.{:09} ctime={}.{:09} ino={} dev={}\n",
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            md.ino(),
            md.dev()
        ))
    }

    fn verified_stat_unchanged(&self, digest: &Digest) -> bool {
        match (self.stat_key(digest), fs::read_to_string(self.record_path(digest))) {
            (Some(now), Ok(recorded)) => now == recorded,
            _ => false,
        }
    }

    /// Records that the blob's current content was verified (a failure only costs a re-hash).
    pub fn record_verified(&self, digest: &Digest) {
        let Some(key) = self.stat_key(digest) else { return };
        let path = self.record_path(digest);
        let Some(dir) = path.parent() else { return };
        let written = fs::create_dir_all(dir).and_then(|_| {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            tmp.write_all(key.as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = written {
            tracing::debug!("cannot record the verification of {digest}: {e}");
        }
    }

    /// Hashes every blob of the store: corrupt ones are removed (a cache downloads them again
    /// when needed), good ones get a fresh verification record.
    pub fn verify_all(&self) -> Result<VerifyReport> {
        let dir = self.blobs_dir();
        let mut good = Vec::new();
        let mut removed = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(VerifyReport { good, removed }),
            Err(e) => return Err(OciError::Io { path: dir, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(OciError::io(&dir))?;
            let Ok(digest) = format!("sha256:{}", entry.file_name().to_string_lossy()).parse::<Digest>() else {
                continue;
            };
            match self.verify(&digest, None) {
                Ok(()) => {
                    self.record_verified(&digest);
                    good.push(digest);
                }
                Err(e) => {
                    fs::remove_file(entry.path()).map_err(OciError::io(entry.path()))?;
                    let _ = fs::remove_file(self.record_path(&digest));
                    removed.push((digest, e));
                }
            }
        }
        Ok(VerifyReport { good, removed })
    }

    /// Removes download directories left by runs that were killed outright (their lock is free).
    pub fn remove_stale_downloads(&self) {
        crate::cleanup::remove_stale(&self.root.join("tmp"), FETCH_PREFIX);
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.hex())
    }

    pub fn has(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a blob for streaming; the reader fails at the end if the content does not match.
    pub fn open(&self, digest: &Digest, size: Option<u64>) -> Result<VerifyingReader<BufReader<File>>> {
        if self.fetcher.is_some() {
            self.ensure(digest, size)?;
        }
        self.open_local(digest, size)
    }

    /// Opens the blob file as it is, never downloading.
    fn open_local(&self, digest: &Digest, size: Option<u64>) -> Result<VerifyingReader<BufReader<File>>> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => OciError::MissingBlob { digest: digest.clone(), store: self.root.clone() },
            _ => OciError::Io { path: path.clone(), source: e },
        })?;
        Ok(VerifyingReader::new(BufReader::with_capacity(256 * 1024, file), digest.clone(), size))
    }

    /// Reads a small JSON blob completely, verified.
    pub fn read_verified(&self, digest: &Digest, size: Option<u64>) -> Result<Vec<u8>> {
        if let Some(s) = size
            && s > MAX_JSON_BLOB
        {
            return Err(OciError::Malformed {
                path: self.blob_path(digest),
                what: "descriptor",
                reason: format!("{s} bytes is too large for a manifest or config"),
            });
        }
        let mut out = Vec::new();
        let reader = self.open(digest, size)?;
        reader.take(MAX_JSON_BLOB + 1).read_to_end(&mut out).map_err(|e| self.read_error(digest, e))?;
        Ok(out)
    }

    /// Hashes a whole blob and checks it against its digest and size.
    pub fn verify(&self, digest: &Digest, size: Option<u64>) -> Result<()> {
        let reader = self.open_local(digest, size)?;
        reader.finish().map_err(|e| self.read_error(digest, e))
    }

    /// Turns an I/O error from a [`VerifyingReader`] into an error that names the blob.
    pub fn read_error(&self, digest: &Digest, e: std::io::Error) -> OciError {
        match BlobCheckFailure::find(&e) {
            Some(BlobCheckFailure::Digest { actual }) => {
                OciError::DigestMismatch { digest: digest.clone(), actual: actual.clone(), store: self.root.clone() }
            }
            Some(BlobCheckFailure::Size { expected, actual }) => OciError::SizeMismatch {
                digest: digest.clone(),
                expected: *expected,
                actual: *actual,
                store: self.root.clone(),
            },
            Some(f @ BlobCheckFailure::DiffId { .. }) => OciError::DiffIdMismatch {
                image: self.root.display().to_string(),
                layer: digest.clone(),
                failure: f.clone(),
            },
            None => OciError::Io { path: self.blob_path(digest), source: e },
        }
    }
}

/// What [`BlobStore::verify_all`] found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    pub good: Vec<Digest>,
    /// Corrupt blobs, removed, with what was wrong.
    pub removed: Vec<(Digest, OciError)>,
}

/// A resolved single-platform image: manifest and config, plus where its blobs are.
#[derive(Debug, Clone)]
pub struct Image {
    /// How the user named it, for messages.
    pub name: String,
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub store: BlobStore,
}

impl Image {
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// Layer digests in order.
    pub fn layer_digests(&self) -> Result<Vec<Digest>> {
        self.layers().iter().map(|l| Digest::try_from(l.digest())).collect()
    }

    /// The diffID the config lists for layer `index` (validated on read: one per layer).
    pub fn diff_id(&self, index: usize) -> Result<Digest> {
        let ids = self.config.diff_ids();
        ids.get(index).map_or_else(
            || {
                Err(OciError::Malformed {
                    path: self.store.blob_path(&self.config_digest),
                    what: "image config",
                    reason: format!("no diff_id for layer {index}"),
                })
            },
            |d| d.parse(),
        )
    }

    /// The error to report when reading layer `layer` failed with `e`: the diffID mismatch it
    /// carries, if any.
    pub fn diff_id_failure(&self, layer: &Digest, e: &(dyn std::error::Error + 'static)) -> Option<OciError> {
        match crate::digest::BlobCheckFailure::find_in(e)? {
            f @ crate::digest::BlobCheckFailure::DiffId { .. } => {
                Some(OciError::DiffIdMismatch { image: self.name.clone(), layer: layer.clone(), failure: f.clone() })
            }
            _ => None,
        }
    }
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    store: BlobStore,
}

impl OciLayout {
    pub fn open(dir: &Path) -> Result<OciLayout> {
        let marker = dir.join("oci-layout");
        let text = fs::read_to_string(&marker).map_err(|e| OciError::NotALayout {
            path: dir.to_path_buf(),
            reason: format!("cannot read oci-layout: {e}"),
        })?;
        let v: Value = serde_json::from_str(&text).map_err(|e| OciError::Malformed {
            path: marker.clone(),
            what: "oci-layout",
            reason: e.to_string(),
        })?;
        if v.get("imageLayoutVersion").and_then(Value::as_str).is_none() {
            return Err(OciError::Malformed {
                path: marker,
                what: "oci-layout",
                reason: "no imageLayoutVersion".into(),
            });
        }
        Ok(OciLayout { store: BlobStore::new(dir) })
    }

    pub fn dir(&self) -> &Path {
        self.store.root()
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    pub fn index(&self) -> Result<ImageIndex> {
        let path = self.dir().join("index.json");
        let bytes = fs::read(&path).map_err(OciError::io(&path))?;
        serde_json::from_slice(&bytes).map_err(|e| OciError::Malformed {
            path,
            what: "index.json",
            reason: e.to_string(),
        })
    }

    /// Tags (`org.opencontainers.image.ref.name`) of the images in index.json.
    pub fn tags(&self) -> Result<Vec<String>> {
        Ok(self.index()?.manifests().iter().filter_map(|d| ref_name(d).map(String::from)).collect())
    }

    /// Finds the image tagged `tag` (or the only image) for `platform`.
    pub fn resolve(&self, tag: Option<&str>, platform: &Platform) -> Result<Image> {
        let index = self.index()?;
        let manifests = index.manifests();
        let tags = || {
            let t: Vec<&str> = manifests.iter().filter_map(ref_name).collect();
            if t.is_empty() { "none".to_string() } else { t.join(", ") }
        };
        let desc = match tag {
            Some(tag) => manifests.iter().find(|d| ref_name(d) == Some(tag)).ok_or_else(|| OciError::TagNotFound {
                layout: self.dir().to_path_buf(),
                tag: tag.into(),
                available: tags(),
            })?,
            None => match manifests.as_slice() {
                [only] => only,
                [] => {
                    return Err(OciError::NotALayout {
                        path: self.dir().into(),
                        reason: "index.json lists no images".into(),
                    });
                }
                many => many.iter().find(|d| ref_name(d) == Some("latest")).ok_or_else(|| {
                    OciError::AmbiguousImage { layout: self.dir().to_path_buf(), count: many.len(), available: tags() }
                })?,
            },
        };
        let name = match tag {
            Some(t) => format!("oci:{}:{t}", self.dir().display()),
            None => format!("oci:{}", self.dir().display()),
        };
        resolve_descriptor(&self.store, desc, platform, &name)
    }
}

impl OciLayout {
    /// Finds the image whose manifest (or index) has `digest`: an entry of index.json, or any
    /// blob of the layout with that digest (layouts written by the CNB restorer into
    /// `<kaniko-dir>/cache/base/<digest>` may hold only the manifest and config).
    pub fn resolve_digest(&self, digest: &Digest, platform: &Platform) -> Result<Image> {
        let name = format!("oci:{}@{digest}", self.dir().display());
        let index = self.index()?;
        let listed = index.manifests().iter().find(|d| d.digest().to_string() == digest.to_string());
        let desc = match listed {
            Some(d) => d.clone(),
            None => {
                let bytes = self.store.read_verified(digest, None)?;
                let media_type = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(String::from))
                    .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
                oci_spec::image::DescriptorBuilder::default()
                    .media_type(oci_spec::image::MediaType::from(media_type.as_str()))
                    .digest(oci_spec::image::Digest::from(digest))
                    .size(bytes.len() as u64)
                    .build()
                    .map_err(|e| OciError::Malformed {
                        path: self.dir().into(),
                        what: "descriptor",
                        reason: e.to_string(),
                    })?
            }
        };
        resolve_descriptor(&self.store, &desc, platform, &name)
    }
}

/// The tag annotation of an index entry.
pub fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(media::REF_NAME).map(String::as_str)
}

/// Follows an index entry to a single-platform image, reading and verifying each JSON blob.
pub fn resolve_descriptor(store: &BlobStore, desc: &Descriptor, platform: &Platform, name: &str) -> Result<Image> {
    let mut desc = desc.clone();
    // Nested indexes are legal; a few levels is plenty and stops cycles.
    for _ in 0..4 {
        let digest = Digest::try_from(desc.digest())?;
        let bytes = store.read_verified(&digest, Some(desc.size()))?;
        let media_type = desc.media_type().to_string();
        let doc_type = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("mediaType").and_then(Value::as_str).map(String::from));
        let is_index = media::is_index(&media_type)
            || doc_type.as_deref().is_some_and(media::is_index)
            || (!media::is_manifest(&media_type) && looks_like_index(&bytes));
        if is_index {
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| OciError::Malformed {
                path: store.blob_path(&digest),
                what: "image index",
                reason: e.to_string(),
            })?;
            let found = index.manifests().iter().find(|m| {
                m.platform().as_ref().is_some_and(|p| {
                    platform.matches(&p.os().to_string(), &p.architecture().to_string(), p.variant().as_deref())
                })
            });
            match found {
                Some(m) => desc = m.clone(),
                None => {
                    let available: Vec<String> = index
                        .manifests()
                        .iter()
                        .filter_map(|m| m.platform().as_ref())
                        .map(|p| match p.variant() {
                            Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
                            None => format!("{}/{}", p.os(), p.architecture()),
                        })
                        .collect();
                    return Err(OciError::PlatformNotFound {
                        image: name.into(),
                        platform: platform.to_string(),
                        available: if available.is_empty() { "none".into() } else { available.join(", ") },
                    });
                }
            }
            continue;
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes).map_err(|e| OciError::Malformed {
            path: store.blob_path(&digest),
            what: "image manifest",
            reason: e.to_string(),
        })?;
        let config_digest = Digest::try_from(manifest.config().digest())?;
        let config_bytes = store.read_verified(&config_digest, Some(manifest.config().size()))?;
        let config = ImageConfig::from_slice(&config_bytes).map_err(|reason| OciError::Malformed {
            path: store.blob_path(&config_digest),
            what: "image config",
            reason,
        })?;
        let diff_ids = config.diff_ids().len();
        if diff_ids != manifest.layers().len() {
            return Err(OciError::Malformed {
                path: store.blob_path(&config_digest),
                what: "image config",
                reason: format!(
                    "`rootfs.diff_ids` lists {diff_ids} layers, but manifest {digest} has {}",
                    manifest.layers().len()
                ),
            });
        }
        for (i, l) in manifest.layers().iter().enumerate() {
            Digest::try_from(l.digest()).map_err(|_| OciError::Malformed {
                path: store.blob_path(&digest),
                what: "image manifest",
                reason: format!("layer {i} has the digest {}, not a sha256 digest", l.digest()),
            })?;
        }
        if !platform.matches(config.os(), config.architecture(), config.variant()) {
            return Err(OciError::PlatformNotFound {
                image: name.into(),
                platform: platform.to_string(),
                available: format!("{}/{}", config.os(), config.architecture()),
            });
        }
        return Ok(Image {
            name: name.into(),
            manifest_digest: digest,
            manifest,
            config_digest,
            config,
            store: store.clone(),
        });
    }
    Err(OciError::Malformed {
        path: store.root().into(),
        what: "image index",
        reason: "indexes nested too deep".into(),
    })
}

fn looks_like_index(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Value>(bytes).is_ok_and(|v| v.get("manifests").is_some() && v.get("layers").is_none())
}

/// Serializes any serde value with sorted keys (oci-spec's annotations are HashMaps).
pub fn canonical_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let v = serde_json::to_value(value).expect("manifest types serialize");
    serde_json::to_vec(&v).expect("a JSON value serializes")
}

/// Writes one image into an OCI layout, atomically. Blobs are staged next to the target and
/// moved in on [`LayoutWriter::commit`]; dropping the writer without committing removes them.
pub struct LayoutWriter {
    target: PathBuf,
    staging: tempfile::TempDir,
    exists: bool,
    _cleanup: crate::cleanup::PathGuard,
    /// After `staging`: the lock file goes once the staging directory is gone.
    _owner: crate::cleanup::OwnerLock,
}

impl LayoutWriter {
    /// Prepares to write into `target`. An existing directory must be an OCI layout (we never
    /// write into some other directory by mistake) or be empty.
    pub fn begin(target: &Path) -> Result<LayoutWriter> {
        let exists = match fs::read_dir(target) {
            Ok(mut entries) => {
                if entries.next().is_none() {
                    fs::remove_dir(target).map_err(OciError::io(target))?;
                    false
                } else {
                    OciLayout::open(target)?.index()?;
                    true
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(OciError::Io { path: target.into(), source: e });
            }
        };
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(OciError::io(&parent))?;
        // Staging dirs of builds killed outright (SIGKILL) would otherwise pile up here.
        crate::cleanup::remove_stale(&parent, STAGING_PREFIX);
        let (staging, _owner) =
            crate::cleanup::owned_tempdir(&parent, STAGING_PREFIX).map_err(OciError::io(&parent))?;
        let blobs = staging.path().join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(OciError::io(&blobs))?;
        let _cleanup = crate::cleanup::register_path(staging.path());
        Ok(LayoutWriter { target: target.to_path_buf(), staging, exists, _cleanup, _owner })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Where new blobs (e.g. from a [`crate::LayerWriter`]) should be written.
    pub fn staging_blobs(&self) -> PathBuf {
        self.staging.path().join("blobs").join("sha256")
    }

    fn target_has(&self, digest: &Digest) -> bool {
        self.exists && BlobStore::new(&self.target).has(digest)
    }

    /// Carries a blob over from `source` by hard link, or by plain copy across filesystems: the
    /// bytes are neither decompressed nor re-hashed. A registry-backed `source` downloads the
    /// blob into its cache first (once). The size is checked (a `stat`, not a read), which
    /// catches truncated blobs; bit flips in a passed-through layer are found by whoever reads it.
    pub fn add_blob_from(&mut self, source: &BlobStore, digest: &Digest, size: u64) -> Result<()> {
        let dest = self.staging_blobs().join(digest.hex());
        if self.target_has(digest) || dest.exists() {
            return Ok(());
        }
        source.ensure(digest, Some(size))?;
        let src = source.blob_path(digest);
        let actual = fs::metadata(&src).map_err(OciError::io(&src))?.len();
        if actual != size {
            return Err(OciError::SizeMismatch {
                digest: digest.clone(),
                expected: size,
                actual,
                store: source.root().into(),
            });
        }
        link_or_copy(&src, &dest)?;
        if source.fetcher.is_some() {
            // The link changed the cached file's ctime; it is still the blob just verified.
            source.record_verified(digest);
        }
        Ok(())
    }

    /// Carries over a blob file we wrote ourselves (a new layer in some other staging area),
    /// by hard link or copy; a no-op when it is already staged here.
    pub fn add_blob_file(&mut self, path: &Path, digest: &Digest) -> Result<()> {
        let dest = self.staging_blobs().join(digest.hex());
        if self.target_has(digest) || dest.exists() || path == dest {
            return Ok(());
        }
        link_or_copy(path, &dest)
    }

    /// Adds a small blob (config or manifest) and returns its digest.
    pub fn add_blob_bytes(&mut self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of(bytes);
        if !self.target_has(&digest) {
            let path = self.staging_blobs().join(digest.hex());
            write_synced(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Makes the image visible: moves the staged blobs into the layout and points `tag` at the
    /// manifest (replacing only that tag's entry; other tags stay).
    ///
    /// Concurrent writers of one layout (other ext-extend processes) are serialized by an
    /// exclusive `flock` on the layout's parent directory, held around the read-modify-rename
    /// of `index.json` (and the creation of a new layout), so no writer's tag is lost and none
    /// fails on another's temporary file.
    pub fn commit(self, manifest: &[u8], media_type: &str, tag: &str) -> Result<Descriptor> {
        let mut this = self;
        let digest = this.add_blob_bytes(manifest)?;
        let mut annotations = std::collections::HashMap::new();
        annotations.insert(media::REF_NAME.to_string(), tag.to_string());
        let mut desc = Descriptor::new(oci_spec::image::MediaType::from(media_type), manifest.len() as u64, &digest);
        desc.set_annotations(Some(annotations));

        let parent = match this.target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let _lock = lock_dir(&parent)?;
        // Another writer may have created the layout since `begin`.
        if !this.exists && this.target.join("index.json").is_file() {
            OciLayout::open(&this.target)?;
            this.exists = true;
        }
        if this.exists {
            let blobs = this.target.join("blobs").join("sha256");
            fs::create_dir_all(&blobs).map_err(OciError::io(&blobs))?;
            let staged = this.staging_blobs();
            for entry in fs::read_dir(&staged).map_err(OciError::io(&staged))? {
                let entry = entry.map_err(OciError::io(&staged))?;
                let dest = blobs.join(entry.file_name());
                if !dest.exists() {
                    fs::rename(entry.path(), &dest).map_err(OciError::io(&dest))?;
                }
            }
            sync_dir(&blobs)?;
            let index_path = this.target.join("index.json");
            let bytes = fs::read(&index_path).map_err(OciError::io(&index_path))?;
            let mut index: Value = serde_json::from_slice(&bytes).map_err(|e| OciError::Malformed {
                path: index_path.clone(),
                what: "index.json",
                reason: e.to_string(),
            })?;
            let list = index.get_mut("manifests").and_then(Value::as_array_mut).ok_or_else(|| OciError::Malformed {
                path: index_path.clone(),
                what: "index.json",
                reason: "no manifests array".into(),
            })?;
            list.retain(|m| {
                m.pointer(&format!("/annotations/{}", media::REF_NAME.replace('/', "~1"))).and_then(Value::as_str)
                    != Some(tag)
            });
            list.push(serde_json::to_value(&desc).expect("descriptors serialize"));
            let mut tmp = tempfile::Builder::new()
                .prefix(".index.json.")
                .tempfile_in(&this.target)
                .map_err(OciError::io(&this.target))?;
            tmp.write_all(&serde_json::to_vec(&index).expect("JSON serializes"))
                .and_then(|_| tmp.as_file().sync_all())
                .map_err(OciError::io(tmp.path()))?;
            tmp.persist(&index_path).map_err(|e| OciError::Io { path: index_path.clone(), source: e.error })?;
            sync_dir(&this.target)?;
        } else {
            let root = this.staging.path();
            write_synced(&root.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            let index = json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX, "manifests": [desc]});
            write_synced(&root.join("index.json"), &serde_json::to_vec(&index).expect("JSON serializes"))?;
            sync_dir(&root.join("blobs").join("sha256"))?;
            let staged = this.staging.keep();
            fs::rename(&staged, &this.target).map_err(|e| {
                let _ = fs::remove_dir_all(&staged);
                OciError::Io { path: this.target.clone(), source: e }
            })?;
            if let Some(parent) = this.target.parent() {
                sync_dir(if parent.as_os_str().is_empty() { Path::new(".") } else { parent })?;
            }
        }
        Ok(desc)
    }
}

/// Holds an exclusive `flock` on a directory until dropped (released when the descriptor closes,
/// also when the process dies).
struct DirLock(#[allow(dead_code)] File);

fn lock_dir(dir: &Path) -> Result<DirLock> {
    let file = File::open(dir).map_err(OciError::io(dir))?;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) } == 0 {
            return Ok(DirLock(file));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(OciError::Io { path: dir.to_path_buf(), source: e });
        }
    }
}

/// Hard-links a blob into place, or copies it (synced, then renamed) across filesystems.
fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    if fs::hard_link(src, dest).is_err() {
        let tmp = dest.with_extension("tmp");
        fs::copy(src, &tmp).map_err(OciError::io(src))?;
        File::open(&tmp).and_then(|f| f.sync_all()).map_err(OciError::io(&tmp))?;
        fs::rename(&tmp, dest).map_err(OciError::io(dest))?;
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = File::create(path).map_err(OciError::io(path))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(OciError::io(path))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(OciError::io(dir))
}
