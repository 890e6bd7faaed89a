//! Media types, and the OCI equivalents of Docker's.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The annotation that names a manifest's tag in an OCI layout's index.json.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

pub fn is_manifest(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// The OCI media type for a layer, so an OCI manifest never lists Docker layer types (the blob
/// bytes are the same: Docker's `rootfs.diff.tar.gzip` is a gzipped tar).
pub fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER_TAR => OCI_LAYER_TAR,
        other => other,
    }
}

/// The layer media types a [`crate::LayerBlob`] can have (a static string), from a descriptor's.
pub fn known_layer_type(media_type: &str) -> Option<&'static str> {
    [OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_LAYER_TAR].into_iter().find(|t| *t == oci_layer_type(media_type))
}
