//! The image store of ext-extend: digests, image references, image configs patched as JSON,
//! OCI image layouts (read with verification, written atomically), `docker://` registries
//! (pulled lazily into a content-addressed cache, pushed without re-uploading what the registry
//! has) and the deterministic [`LayerWriter`]. It knows nothing about Dockerfiles.

pub mod auth;
pub mod cleanup;
pub mod compression;
pub mod config;
pub mod digest;
pub mod error;
pub mod escape;
pub mod http;
pub mod layer;
pub mod layout;
pub mod media;
pub mod pgzip;
pub mod platform;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;
pub mod targuard;
pub mod tls;

pub use compression::Compression;
pub use config::{HistoryEntry, ImageConfig};
pub use digest::{Digest, HashingWriter, VerifyingReader};
pub use error::{OciError, Result};
pub use layer::{BUILD_TIME, DeviceKind, EntryMeta, LayerBlob, LayerOptions, LayerWriter, MtimePolicy};
pub use layout::{BlobFetcher, BlobStore, Image, LayoutWriter, OciLayout};
pub use platform::Platform;
pub use reference::{ImageRef, LayoutRef, RegistryRef};
pub use store::{StoreOptions, default_cache_dir, open_image};
