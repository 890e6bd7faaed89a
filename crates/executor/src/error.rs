//! Errors of the executor. Each names the Dockerfile line, the context path or the layer at
//! fault; [`ExecError::is_user_error`] tells the CLI whether to exit 2 (bad input) or 1.

use std::path::PathBuf;

use ext_dockerfile::{DockerfileError, Location};
use ext_oci::OciError;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Dockerfile(#[from] DockerfileError),

    #[error(transparent)]
    Image(#[from] OciError),

    #[error("build context {dir}: {message}")]
    Context { dir: PathBuf, message: String },

    #[error("{at}: {message}")]
    Step { at: Location, message: String },

    #[error("{at}: `{command}` failed with exit code {code}")]
    RunFailed { at: Location, command: String, code: i32 },

    #[error("{at}: {source}")]
    Rootfs {
        at: Location,
        #[source]
        source: Box<ext_rootfs::RootfsError>,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ExecError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ExecError {
        let path = path.into();
        move |source| ExecError::Io { path, source }
    }

    pub(crate) fn step(at: &Location, message: impl Into<String>) -> ExecError {
        ExecError::Step { at: at.clone(), message: message.into() }
    }

    /// Bad input (Dockerfile, context, reference) rather than a failure of the machine or store.
    pub fn is_user_error(&self) -> bool {
        match self {
            ExecError::Dockerfile(_)
            | ExecError::Context { .. }
            | ExecError::Step { .. }
            | ExecError::RunFailed { .. } => true,
            ExecError::Image(e) => e.is_user_error(),
            ExecError::Rootfs { source, .. } => source.is_user_error(),
            _ => false,
        }
    }
}

pub type Result<T, E = ExecError> = std::result::Result<T, E>;
