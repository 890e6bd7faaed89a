//! Errors of the Dockerfile front end. Every error carries the file name and line, because the
//! user has to find the place to fix; the CLI prints them as `file:line: message`.

use std::fmt;

/// Where in a Dockerfile something went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    /// 1-based line; 0 when the problem is the file as a whole.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 { write!(f, "{}", self.file) } else { write!(f, "{}:{}", self.file, self.line) }
    }
}

/// The instructions a CNB `run.Dockerfile`/`build.Dockerfile` may use (buildpacks/spec
/// image_extension.md), quoted in errors so the user sees the allowed set.
pub const ALLOWED_INSTRUCTIONS: &str = "FROM (once), ADD, ARG, COPY, ENV, LABEL, RUN, SHELL, USER, WORKDIR";

#[derive(Debug, thiserror::Error)]
pub enum DockerfileError {
    #[error("{at}: syntax error: {message}")]
    Syntax { at: Location, message: String },

    #[error("{at}: the Dockerfile has no instructions")]
    Empty { at: Location },

    #[error(
        "{at}: a second FROM starts a multi-stage build, which image extensions may not use; allowed: {ALLOWED_INSTRUCTIONS}"
    )]
    MultiStage { at: Location },

    #[error(
        "{at}: `COPY --from={stage}` names a build stage, and multi-stage builds are not allowed in image extensions (an image reference such as `busybox`, `docker://HOST/REPO:TAG` or `oci:DIR:TAG` is)"
    )]
    CopyFromStage { at: Location, stage: String },

    #[error("{at}: {instruction} does not support the flag `--{flag}` (supported: {supported})")]
    UnsupportedFlag { at: Location, instruction: &'static str, flag: String, supported: &'static str },

    #[error("{at}: {message}")]
    Invalid { at: Location, message: String },

    #[error("{at}: cannot expand `{word}`: {source}")]
    Expand {
        at: Location,
        word: String,
        #[source]
        source: crate::expand::ExpandError,
    },
}

impl DockerfileError {
    pub fn location(&self) -> &Location {
        match self {
            DockerfileError::Syntax { at, .. }
            | DockerfileError::Empty { at }
            | DockerfileError::MultiStage { at }
            | DockerfileError::CopyFromStage { at, .. }
            | DockerfileError::UnsupportedFlag { at, .. }
            | DockerfileError::Invalid { at, .. }
            | DockerfileError::Expand { at, .. } => at,
        }
    }
}
