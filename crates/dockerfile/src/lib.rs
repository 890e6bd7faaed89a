//! The Dockerfile front end of ext-extend: parse a Dockerfile (with `parse-dockerfile`), check
//! that it stays inside the CNB image-extension subset, expand words the way Docker/BuildKit do,
//! and produce a typed [`Plan`] that keeps source lines for errors and history. No I/O.

pub mod checks;
pub mod chmod;
pub mod error;
pub mod expand;
pub mod heredoc;
pub mod mount;
pub mod parse;
pub mod plan;
pub mod words;

pub use checks::{CheckInputs, CheckReport};
pub use chmod::Chmod;
pub use error::{DockerfileError, Location};
pub use mount::{FileOwner, MountKind, RunMount, Sharing};
pub use parse::{Dockerfile, Warning};
pub use plan::{
    ConfigOp, CopyOp, CopySource, Healthcheck, Op, Plan, ResolvedFrom, RunCommand, RunOp, Step, UndefinedVar,
};
