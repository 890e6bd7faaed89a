//! Errors of the image store. Each names the blob (digest), file or reference at fault.

use std::path::PathBuf;

use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("downloading {url}: {message}")]
    Download { url: String, message: String },

    #[error("{url}: checksum mismatch: --checksum says {expected}, the download is {actual}")]
    ChecksumMismatch { url: String, expected: Digest, actual: Digest },

    #[error("{path}: not an OCI image layout ({reason})")]
    NotALayout { path: PathBuf, reason: String },

    #[error("{path}: malformed {what}: {reason}")]
    Malformed { path: PathBuf, what: &'static str, reason: String },

    #[error("blob {digest} is missing from {store}")]
    MissingBlob { digest: Digest, store: PathBuf },

    #[error("blob {digest} in {store} is corrupt: its content hashes to {actual}")]
    DigestMismatch { digest: Digest, actual: Digest, store: PathBuf },

    #[error("blob {digest} in {store} has {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64, store: PathBuf },

    #[error("{layout}: no image tagged `{tag}` (tags: {available})")]
    TagNotFound { layout: PathBuf, tag: String, available: String },

    #[error("{layout}: holds {count} images and no tag was given; pick one with oci:DIR:TAG (tags: {available})")]
    AmbiguousImage { layout: PathBuf, count: usize, available: String },

    #[error("{image}: no manifest for platform {platform} (available: {available})")]
    PlatformNotFound { image: String, platform: String, available: String },

    #[error("invalid image reference `{reference}`: {reason}")]
    BadReference { reference: String, reason: String },

    #[error("invalid digest `{0}`: expected sha256:<64 hex digits>")]
    BadDigest(String),

    #[error("invalid platform `{0}`: expected os/arch[/variant], e.g. linux/amd64")]
    BadPlatform(String),

    #[error("layer {digest}: unsupported media type {media_type}")]
    UnsupportedMediaType { digest: Digest, media_type: String },

    #[error("layer {digest}: {source}")]
    Layer {
        digest: Digest,
        #[source]
        source: std::io::Error,
    },

    #[error("registry {registry}: {message}")]
    Registry { registry: String, message: String },

    /// 401 or 403: missing, wrong or insufficient credentials.
    #[error("registry {registry}: {reason} for {repository} ({hint})")]
    RegistryAuth { registry: String, repository: String, reason: &'static str, hint: String },

    /// The repository, tag or digest does not exist.
    #[error("registry {registry}: no image {registry}/{repository}{reference}")]
    ImageNotFound { registry: String, repository: String, reference: String },

    /// Connection errors or 5xx answers that outlasted every retry.
    #[error("registry {registry} unreachable after {attempts} attempts: {reason}")]
    RegistryUnreachable { registry: String, attempts: u32, reason: String },

    /// A blob downloaded from a registry does not match its digest (nothing is kept).
    #[error("blob {digest} from {origin} is corrupt: its content hashes to {actual}")]
    RemoteDigestMismatch { digest: Digest, actual: Digest, origin: String },

    #[error("blob {digest} from {origin} has {actual} bytes, but its descriptor says {expected}")]
    RemoteSizeMismatch { digest: Digest, expected: u64, actual: u64, origin: String },

    /// A layer's uncompressed content does not match its diffID in the image config.
    #[error("{image}: layer {layer} is corrupt or mislabelled: {failure}")]
    DiffIdMismatch { image: String, layer: Digest, failure: crate::digest::BlobCheckFailure },

    /// The config to write is larger than [`crate::config::MAX_CONFIG_BYTES`].
    #[error("the image config would be {size} bytes, more than the {} MiB container tools accept", crate::config::MAX_CONFIG_BYTES >> 20)]
    ConfigTooLarge { size: usize },

    /// Malformed `CNB_REGISTRY_AUTH` or Docker config.
    #[error("{source_name}: {reason}")]
    BadCredentials { source_name: String, reason: String },
}

impl OciError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> OciError {
        let path = path.into();
        move |source| OciError::Io { path, source }
    }

    /// True when the error is about what the user gave us (a bad reference, a missing tag or
    /// platform), not about the machine or a damaged store.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            OciError::NotALayout { .. }
                | OciError::TagNotFound { .. }
                | OciError::AmbiguousImage { .. }
                | OciError::PlatformNotFound { .. }
                | OciError::BadReference { .. }
                | OciError::BadDigest(_)
                | OciError::BadPlatform(_)
                | OciError::RegistryAuth { .. }
                | OciError::ImageNotFound { .. }
                | OciError::BadCredentials { .. }
                | OciError::ConfigTooLarge { .. }
        )
    }
}

pub type Result<T, E = OciError> = std::result::Result<T, E>;
