//! The step cache: what a Dockerfile step (COPY/ADD, RUN, WORKDIR) produced, kept under a key
//! made of everything that decides its result, so a later build with the same inputs reuses
//! the layer without running anything. Entries are OCI artifacts (a manifest per key, the layer
//! as a blob), kept in a local directory and optionally shared through a registry repository.
//!
//! This crate stores and finds entries; the executor decides what goes into a key.

pub mod cache;
pub mod entry;
pub mod error;
pub mod key;
pub mod local;
pub mod remote;
pub mod units;

pub use cache::{DEFAULT_MAX_SIZE, DEFAULT_TTL, EntryStore, Hit, Miss, StepCache, StepCacheOptions};
pub use entry::{CachedLayer, Entry, StepOutcome, known_layer_type};
pub use error::{Result, StepCacheError};
pub use key::StepKey;
pub use local::{LocalStore, PrunePolicy, PruneReport};
pub use remote::RegistryStore;
