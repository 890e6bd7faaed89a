//! A cache entry as an ordinary OCI artifact: an image manifest (artifact type
//! [`ARTIFACT_TYPE`]) whose config is the entry's description (key components, creation time,
//! the layer's diffID) and whose one layer, if the step made one, is the layer blob itself. The
//! same bytes are a file in the local store and a manifest tagged `<key hex>` in a registry
//! repository, where the layer blob can be mounted into any other repository of the registry.

use std::collections::BTreeMap;

use ext_oci::{Digest, media};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{Result, StepCacheError};
use crate::key::StepKey;

pub const ARTIFACT_TYPE: &str = "application/vnd.ext-extend.step-cache.v1";
pub const CONFIG_TYPE: &str = "application/vnd.ext-extend.step-cache.config.v1+json";

/// At most this many of a COPY's paths are kept (for the log, which lists 20).
pub const MAX_KEPT_PATHS: usize = 20;

/// The layer a step made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedLayer {
    pub digest: Digest,
    #[serde(rename = "diffID")]
    pub diff_id: Digest,
    pub size: u64,
    pub uncompressed_size: u64,
    pub media_type: String,
    pub entries: u64,
}

/// What a step produced, as the session needs it again on a hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepOutcome {
    /// `None`: the step added no layer (a RUN that changed nothing, an existing WORKDIR).
    pub layer: Option<CachedLayer>,
    /// The first [`MAX_KEPT_PATHS`] image paths a COPY/ADD/WORKDIR layer holds.
    pub paths: Vec<String>,
    pub path_count: u64,
}

impl StepOutcome {
    pub fn new(layer: Option<CachedLayer>, paths: &[String]) -> StepOutcome {
        StepOutcome {
            layer,
            paths: paths.iter().take(MAX_KEPT_PATHS).cloned().collect(),
            path_count: paths.len() as u64,
        }
    }
}

/// One cached step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Digest,
    pub components: BTreeMap<String, String>,
    /// Unix seconds when the step ran (the TTL counts from here, wherever the entry travels).
    pub created: u64,
    pub outcome: StepOutcome,
}

#[derive(Serialize, Deserialize)]
struct Config {
    key: Digest,
    components: BTreeMap<String, String>,
    created: u64,
    #[serde(flatten)]
    outcome: StepOutcome,
}

impl Entry {
    pub fn new(key: &StepKey, created: u64, outcome: StepOutcome) -> Entry {
        Entry { key: key.digest().clone(), components: key.components().clone(), created, outcome }
    }

    /// The config blob (canonical JSON).
    pub fn config_bytes(&self) -> Vec<u8> {
        let config = Config {
            key: self.key.clone(),
            components: self.components.clone(),
            created: self.created,
            outcome: self.outcome.clone(),
        };
        let value = serde_json::to_value(&config).expect("the config serializes");
        serde_json::to_vec(&value).expect("JSON serializes")
    }

    /// The manifest naming the config and the layer.
    pub fn manifest_bytes(&self, config: &[u8]) -> Vec<u8> {
        let layers: Vec<Value> = self
            .outcome
            .layer
            .iter()
            .map(|l| json!({"mediaType": l.media_type, "digest": l.digest.to_string(), "size": l.size}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": ARTIFACT_TYPE,
            "config": {"mediaType": CONFIG_TYPE, "digest": Digest::of(config).to_string(), "size": config.len()},
            "layers": layers,
        });
        serde_json::to_vec(&manifest).expect("JSON serializes")
    }

    /// Reads an entry back: `manifest` as stored for `key`, its config from `read_config` (which
    /// must verify the blob against the digest it is given). Anything that does not fit (another
    /// artifact, another key, a layer the config does not describe) is an error, never a hit.
    pub fn parse(
        key: &Digest,
        manifest: &[u8],
        read_config: impl FnOnce(&Digest, u64) -> Result<Vec<u8>>,
    ) -> Result<(Entry, ManifestRefs)> {
        let bad = |reason: String| StepCacheError::Malformed { key: key.to_string(), reason };
        let doc: Value = serde_json::from_slice(manifest).map_err(|e| bad(format!("manifest: {e}")))?;
        let config_desc = &doc["config"];
        if doc["artifactType"] != ARTIFACT_TYPE || config_desc["mediaType"] != CONFIG_TYPE {
            return Err(bad("not an ext-extend step cache entry".into()));
        }
        let digest_of = |d: &Value| -> Result<(Digest, u64)> {
            let digest: Digest =
                d["digest"].as_str().unwrap_or_default().parse().map_err(|e| bad(format!("descriptor: {e}")))?;
            let size = d["size"].as_u64().ok_or_else(|| bad("descriptor without a size".into()))?;
            Ok((digest, size))
        };
        let (config_digest, config_size) = digest_of(config_desc)?;
        let config_bytes = read_config(&config_digest, config_size)?;
        let config: Config = serde_json::from_slice(&config_bytes).map_err(|e| bad(format!("config: {e}")))?;
        if config.key != *key {
            return Err(bad(format!("its config is the entry of {}", config.key)));
        }
        if StepKey::digest_of(&config.components) != *key {
            return Err(bad("its components do not hash to its key".into()));
        }
        let layers = doc["layers"].as_array().cloned().unwrap_or_default();
        let layer = match (layers.as_slice(), &config.outcome.layer) {
            ([], None) => None,
            ([d], Some(l)) => {
                let (digest, size) = digest_of(d)?;
                if digest != l.digest || size != l.size {
                    return Err(bad(format!("its layer {digest} is not the layer its config describes")));
                }
                Some((digest, size))
            }
            _ => return Err(bad("its layers do not match its config".into())),
        };
        let entry =
            Entry { key: config.key, components: config.components, created: config.created, outcome: config.outcome };
        Ok((entry, ManifestRefs { config: (config_digest, config_size), layer }))
    }
}

/// The blobs an entry's manifest names.
#[derive(Debug, Clone)]
pub struct ManifestRefs {
    pub config: (Digest, u64),
    pub layer: Option<(Digest, u64)>,
}

/// Layer media types the session can reuse (a static string, as `LayerBlob` keeps it).
pub fn known_layer_type(media_type: &str) -> Option<&'static str> {
    media::known_layer_type(media_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(layer: bool) -> (StepKey, Entry) {
        let key = StepKey::builder(&Digest::of(b"base")).with("instruction", "RUN x").build();
        let layer = layer.then(|| CachedLayer {
            digest: Digest::of(b"gz"),
            diff_id: Digest::of(b"tar"),
            size: 2,
            uncompressed_size: 3,
            media_type: media::OCI_LAYER_GZIP.into(),
            entries: 1,
        });
        let e = Entry::new(&key, 1_700_000_000, StepOutcome::new(layer, &["/a".to_string()]));
        (key, e)
    }

    #[test]
    fn round_trip() {
        for with_layer in [true, false] {
            let (key, e) = entry(with_layer);
            let config = e.config_bytes();
            let manifest = e.manifest_bytes(&config);
            let (back, refs) = Entry::parse(key.digest(), &manifest, |d, s| {
                assert_eq!((d, s), (&Digest::of(&config), config.len() as u64));
                Ok(config.clone())
            })
            .unwrap();
            assert_eq!(back, e);
            assert_eq!(refs.layer.is_some(), with_layer);
        }
    }

    #[test]
    fn mismatches_are_errors() {
        let (key, e) = entry(true);
        let config = e.config_bytes();
        let manifest = e.manifest_bytes(&config);
        let other = Digest::of(b"other key");
        let err = Entry::parse(&other, &manifest, |_, _| Ok(config.clone())).unwrap_err().to_string();
        assert!(err.contains("is the entry of"), "{err}");
        let tampered =
            String::from_utf8(manifest.clone()).unwrap().replace(&Digest::of(b"gz").to_string(), &other.to_string());
        let err = Entry::parse(key.digest(), tampered.as_bytes(), |_, _| Ok(config.clone())).unwrap_err().to_string();
        assert!(err.contains("not the layer"), "{err}");
        let forged = String::from_utf8(config.clone()).unwrap().replace("RUN x", "RUN y").into_bytes();
        let err = Entry::parse(key.digest(), &e.manifest_bytes(&forged), |_, _| Ok(forged.clone())).unwrap_err();
        assert!(err.to_string().contains("do not hash to its key"), "{err}");
        let image = br#"{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json"}}"#;
        assert!(Entry::parse(key.digest(), image, |_, _| Ok(config.clone())).is_err());
    }
}
