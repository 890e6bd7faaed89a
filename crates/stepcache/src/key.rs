//! A step's cache key: named components, each the value itself when short or its digest when
//! long, and one digest over all of them. Naming the components lets a miss say which of them
//! changed (compared with entries that continue from the same image).

use std::collections::BTreeMap;

use ext_oci::Digest;

/// The component every key has: the image the step starts from (base manifest digest and the
/// layers added since), so a change anywhere upstream reaches every later step.
pub const PARENT: &str = "parent";

/// The component naming the cache format and the ext-extend version: a new version may write
/// different bytes for the same step, so its entries are its own. Within a version, bump
/// [`FORMAT_VERSION`] with any change that makes a step write other bytes from the same inputs
/// (tar headers, compression, ordering), or a hit would keep giving the old bytes.
pub const FORMAT: &str = "format";

/// 2: the overlay differ keeps xattr-only changes, same-size edits and new hard links, and ADD
/// unpacks `.tar.zst`; `testdata/step-cache-golden.json` pins the layer digests of version 2.
pub const FORMAT_VERSION: u32 = 2;

/// Values longer than this are replaced by their digest.
const MAX_INLINE_VALUE: usize = 160;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepKey {
    digest: Digest,
    components: BTreeMap<String, String>,
}

impl StepKey {
    /// Starts a key for a step of the image `parent` (a digest naming the image so far).
    pub fn builder(parent: &Digest) -> KeyBuilder {
        let mut components = BTreeMap::new();
        components.insert(PARENT.to_string(), parent.to_string());
        components.insert(
            FORMAT.to_string(),
            format!("step cache v{FORMAT_VERSION}, ext-extend {}", env!("CARGO_PKG_VERSION")),
        );
        KeyBuilder { components }
    }

    /// The key's digest: sha256 of the canonical JSON of the components.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The 64 hex digits, as entries are named (file names, registry tags).
    pub fn hex(&self) -> &str {
        self.digest.hex()
    }

    pub fn parent(&self) -> &str {
        &self.components[PARENT]
    }

    pub fn components(&self) -> &BTreeMap<String, String> {
        &self.components
    }

    /// Names of the components whose values differ from `other`'s, or that only one side has.
    pub fn differing(&self, other: &BTreeMap<String, String>) -> Vec<String> {
        let mut names: Vec<String> = self
            .components
            .iter()
            .filter(|(k, v)| other.get(*k) != Some(*v))
            .map(|(k, _)| k.clone())
            .chain(other.keys().filter(|k| !self.components.contains_key(*k)).cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The digest of a set of components: sha256 of their JSON, keys sorted.
    pub fn digest_of(components: &BTreeMap<String, String>) -> Digest {
        Digest::of(&serde_json::to_vec(components).expect("a map of strings serializes"))
    }

    fn from_components(components: BTreeMap<String, String>) -> StepKey {
        StepKey { digest: Self::digest_of(&components), components }
    }
}

pub struct KeyBuilder {
    components: BTreeMap<String, String>,
}

impl KeyBuilder {
    /// Adds a component (replacing one of the same name); a long value is kept as its digest.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> KeyBuilder {
        let value = value.into();
        let value = if value.len() > MAX_INLINE_VALUE { Digest::of(value.as_bytes()).to_string() } else { value };
        self.components.insert(name.to_string(), value);
        self
    }

    /// Adds a component whose value is a list (each item on its own line before hashing), so
    /// `["a b"]` and `["a", "b"]` never collide.
    pub fn with_list<I, S>(self, name: &str, items: I) -> KeyBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let items: Vec<String> = items.into_iter().map(|s| s.as_ref().to_string()).collect();
        let encoded = serde_json::to_string(&items).expect("strings serialize");
        self.with(name, encoded)
    }

    pub fn build(self) -> StepKey {
        StepKey::from_components(self.components)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = StepKey::builder(&parent(1)).with("instruction", "RUN x").with_list("env", ["A=1", "B=2"]).build();
        let same = StepKey::builder(&parent(1)).with("instruction", "RUN x").with_list("env", ["A=1", "B=2"]).build();
        assert_eq!(base.digest(), same.digest(), "the same components give the same key");
        let variants = [
            StepKey::builder(&parent(2)).with("instruction", "RUN x").with_list("env", ["A=1", "B=2"]).build(),
            StepKey::builder(&parent(1)).with("instruction", "RUN y").with_list("env", ["A=1", "B=2"]).build(),
            StepKey::builder(&parent(1)).with("instruction", "RUN x").with_list("env", ["A=1 B=2"]).build(),
            StepKey::builder(&parent(1)).with("instruction", "RUN x").build(),
        ];
        let expected = [vec!["parent"], vec!["instruction"], vec!["env"], vec!["env"]];
        for (v, want) in variants.iter().zip(expected) {
            assert_ne!(v.digest(), base.digest());
            assert_eq!(v.differing(base.components()), want);
        }
    }

    #[test]
    fn long_values_are_hashed_but_still_compared() {
        let long = "x".repeat(1000);
        let k = StepKey::builder(&parent(1)).with("sources", long.clone()).build();
        assert!(k.components()["sources"].starts_with("sha256:"));
        let k2 = StepKey::builder(&parent(1)).with("sources", format!("{long}y")).build();
        assert_ne!(k.digest(), k2.digest());
        assert_eq!(k.parent(), parent(1).as_str());
    }
}
