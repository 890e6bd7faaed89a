//! The Cloud Native Buildpacks phases around image extension, without Kaniko:
//! - [`generate`]: runs each extension's `bin/generate` with its own extension layer
//!   (`CNB_EXT_LAYER_DIR`), collects Dockerfiles, `extend-config.toml` and RFC 0127 context
//!   folders under `<generated>/<id>/`, and selects the run image in `<analyzed>`;
//! - [`extend`]: applies every extension's Dockerfile in one executor session and writes the
//!   sparse `<extended>/run/<digest>/` layout the exporter reads;
//! - [`export`]: builds the app image from the (extended) run image, the app and the launch
//!   layers, never including extension layers.

pub mod build_phase;
pub mod error;
pub mod export;
pub mod extend;
pub mod extension_layer;
pub mod files;
pub mod generate;

pub use build_phase::{BuilderHandoff, exec_builder};
pub use error::{LifecycleError, Phase};
pub use export::{ExportOptions, ExportReport, export};
pub use extend::{ExtendOptions, ExtendReport, Kind, extend};
pub use extension_layer::ExtensionLayer;
pub use generate::{GenerateOptions, GenerateReport, generate};
