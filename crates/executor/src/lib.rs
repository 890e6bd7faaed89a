//! The executor: applies Dockerfile plans to a base image and produces new layers, config and
//! history. COPY/ADD layers are written straight from the build context without unpacking the
//! base image; config instructions only touch the config.

pub mod context;
pub mod copy;
pub mod copy_select;
pub mod dockerignore;
pub mod error;
pub mod output;
pub mod paths;
pub mod run_mounts;
pub mod session;
pub mod special_file;
pub mod step_key;
pub mod tree;
pub mod users;

pub use context::BuildContext;
pub use error::{ExecError, Result};
pub use output::{OutputTarget, WrittenImage, WrittenLayer};
pub use session::{ExtendedImage, ImageSources, Provenance, Session, SessionOptions, StepReport};
