//! Errors of the step cache. A cache that cannot be read is never fatal to a build (the step
//! runs instead); these errors reach the user from `cache prune` and from bad flags.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StepCacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Oci(#[from] ext_oci::OciError),

    #[error("step cache entry {key}: {reason}")]
    Malformed { key: String, reason: String },

    #[error("duration `{0}`: expected a Go duration such as 336h, 90m, 1h30m or 45s (or days: 14d)")]
    BadDuration(String),

    #[error("size `{0}`: expected bytes with an optional K, M, G or T suffix (powers of 1024), e.g. 10G")]
    BadSize(String),

    #[error("--cache-repo `{0}`: expected docker://HOST[:PORT]/REPO (no tag or digest: entries are tagged by key)")]
    BadRepository(String),
}

impl StepCacheError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StepCacheError {
        let path = path.into();
        move |source| StepCacheError::Io { path, source }
    }

    /// The entry itself is bad (not ours, inconsistent, a blob that does not match its digest),
    /// as opposed to a store that cannot be reached.
    pub fn is_damaged_entry(&self) -> bool {
        use ext_oci::OciError;
        matches!(
            self,
            StepCacheError::Malformed { .. }
                | StepCacheError::Oci(
                    OciError::RemoteDigestMismatch { .. }
                        | OciError::RemoteSizeMismatch { .. }
                        | OciError::DigestMismatch { .. }
                        | OciError::SizeMismatch { .. }
                        | OciError::MissingBlob { .. }
                )
        )
    }

    /// Bad flags are the user's to fix (exit 2); the rest is the machine's.
    pub fn is_user_error(&self) -> bool {
        matches!(self, StepCacheError::BadDuration(_) | StepCacheError::BadSize(_) | StepCacheError::BadRepository(_))
    }
}

pub type Result<T, E = StepCacheError> = std::result::Result<T, E>;
