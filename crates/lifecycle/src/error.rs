//! Errors of the CNB phases, with the exit codes the platform spec gives them.

use std::path::PathBuf;

use ext_executor::ExecError;
use ext_oci::OciError;

#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("extension {id}: bin/generate failed with exit code {code}")]
    GenerateFailed { id: String, code: i32 },

    #[error("extension {id}: {message}")]
    Extension { id: String, message: String },

    #[error("extension {id}: {source}")]
    Apply {
        id: String,
        #[source]
        source: Box<ExecError>,
    },

    #[error(transparent)]
    Image(#[from] OciError),

    #[error(transparent)]
    Exec(Box<ExecError>),

    #[error("{0}")]
    Invalid(String),
}

impl From<ExecError> for LifecycleError {
    fn from(e: ExecError) -> Self {
        LifecycleError::Exec(Box::new(e))
    }
}

/// Which phase failed, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Generate,
    Extend,
    Export,
}

impl LifecycleError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LifecycleError {
        let path = path.into();
        move |source| LifecycleError::Io { path, source }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> LifecycleError {
        LifecycleError::File { path: path.into(), message: message.into() }
    }

    /// The exit code the platform spec assigns: 91 for a failed `bin/generate` and 92-99 for
    /// other generate errors; 100-109 for extend errors; 60-69 for export errors.
    pub fn exit_code(&self, phase: Phase) -> u8 {
        match (phase, self) {
            (_, LifecycleError::GenerateFailed { .. }) => 91,
            (Phase::Generate, _) => 92,
            (Phase::Extend, _) => 102,
            (Phase::Export, _) => 62,
        }
    }
}

pub type Result<T, E = LifecycleError> = std::result::Result<T, E>;
