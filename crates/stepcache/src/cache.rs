//! The step cache a build uses: the local store first, then the registry store if any (a hit
//! there is copied into the local store), with the TTL, `--no-cache` and the size bound.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use ext_oci::{Digest, StoreOptions};

use crate::entry::{Entry, StepOutcome};
use crate::error::Result;
use crate::key::StepKey;
use crate::local::{Found, LocalStore, PrunePolicy, PruneReport};
use crate::remote::RegistryStore;

/// Kaniko's and the lifecycle's default TTL: two weeks.
pub const DEFAULT_TTL: Duration = Duration::from_secs(14 * 24 * 3600);

/// The local store's default size bound.
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;

/// Where entries are kept: the two implementations of one job.
pub trait EntryStore: Send + Sync {
    /// For log lines: `local` or `registry HOST/REPO`.
    fn name(&self) -> String;
    /// The entry for `key` with its layer blob on this machine, or `None`.
    fn get(&self, key: &Digest) -> Result<Option<Found>>;
    /// Stores `entry`, whose layer blob is the file `layer`.
    fn put(&self, entry: &Entry, layer: Option<&Path>) -> Result<()>;
}

impl EntryStore for LocalStore {
    fn name(&self) -> String {
        "local".into()
    }
    fn get(&self, key: &Digest) -> Result<Option<Found>> {
        LocalStore::get(self, key)
    }
    fn put(&self, entry: &Entry, layer: Option<&Path>) -> Result<()> {
        LocalStore::put(self, entry, layer)
    }
}

impl EntryStore for RegistryStore {
    fn name(&self) -> String {
        format!("registry {}", RegistryStore::name(self))
    }
    fn get(&self, key: &Digest) -> Result<Option<Found>> {
        RegistryStore::get(self, key)
    }
    fn put(&self, entry: &Entry, layer: Option<&Path>) -> Result<()> {
        RegistryStore::put(self, entry, layer)
    }
}

#[derive(Debug, Clone)]
pub struct StepCacheOptions {
    /// The local store's directory.
    pub dir: PathBuf,
    /// `docker://HOST/REPO` to share entries through.
    pub repository: Option<String>,
    /// Entries older than this are not used (and `cache prune` removes them).
    pub ttl: Duration,
    /// The local store's size bound, enforced after each build.
    pub max_size: u64,
    /// `--no-cache`: no lookups; results are still stored, as `docker build --no-cache` does.
    pub no_cache: bool,
    /// Registry settings (credentials come from the environment, as for images).
    pub store: StoreOptions,
}

impl StepCacheOptions {
    pub fn new(dir: &Path) -> StepCacheOptions {
        StepCacheOptions {
            dir: dir.to_path_buf(),
            repository: None,
            ttl: DEFAULT_TTL,
            max_size: DEFAULT_MAX_SIZE,
            no_cache: false,
            store: StoreOptions::default(),
        }
    }
}

/// A hit: the entry, where its layer blob is, and which store had it.
#[derive(Debug, Clone)]
pub struct Hit {
    pub entry: Entry,
    pub layer_path: Option<PathBuf>,
    pub store: String,
    /// The registry repository's blob store, for a hit from the registry (see [`Found::origin`]).
    pub origin: Option<ext_oci::BlobStore>,
}

/// Why a lookup missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// `--no-cache`.
    Disabled,
    /// An entry exists but is older than the TTL.
    Expired { age: Duration, ttl: Duration },
    /// Entries continue from the same image, but these components differ from the closest one.
    Changed(Vec<String>),
    /// No entry continues from this image (a new base, an earlier step that changed, or the
    /// first build here).
    NewParent,
    /// An entry was there but could not be used (damaged, unreadable); it was removed.
    Unusable(String),
}

pub struct StepCache {
    local: LocalStore,
    remote: Option<Box<dyn EntryStore>>,
    /// Set after the registry fails once: a cache must not slow every step of a build with
    /// retries against a registry that is down.
    remote_failed: AtomicBool,
    opts: StepCacheOptions,
}

impl std::fmt::Debug for StepCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCache")
            .field("dir", &self.opts.dir)
            .field("remote", &self.remote.as_ref().map(|r| r.name()))
            .finish()
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl StepCache {
    pub fn open(opts: StepCacheOptions) -> Result<StepCache> {
        // Made now, before anything watches the filesystem for changes: on a live root a
        // directory created during the build would change its parent, which a RUN's snapshot
        // would then take for the command's doing. What is created inside it later is ignored.
        if let Err(e) = std::fs::create_dir_all(&opts.dir) {
            tracing::warn!("step cache {}: {e}", opts.dir.display());
        }
        let local = LocalStore::open(&opts.dir);
        let remote: Option<Box<dyn EntryStore>> = match &opts.repository {
            Some(r) => Some(Box::new(RegistryStore::open(r, &opts.dir, &opts.store)?)),
            None => None,
        };
        Ok(StepCache { local, remote, remote_failed: AtomicBool::new(false), opts })
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    pub fn local(&self) -> &LocalStore {
        &self.local
    }

    pub fn describe(&self) -> String {
        match &self.remote {
            Some(r) => format!("{} and {}", self.opts.dir.display(), r.name()),
            None => self.opts.dir.display().to_string(),
        }
    }

    fn expired(&self, entry: &Entry) -> Option<Miss> {
        let age = Duration::from_secs(now_secs().saturating_sub(entry.created));
        (age > self.opts.ttl).then_some(Miss::Expired { age, ttl: self.opts.ttl })
    }

    /// Looks `key` up: local store, then the registry.
    pub fn lookup(&self, key: &StepKey) -> std::result::Result<Hit, Miss> {
        if self.opts.no_cache {
            return Err(Miss::Disabled);
        }
        let mut unusable = None;
        match self.local.get(key.digest()) {
            Ok(Some(found)) => {
                if let Some(expired) = self.expired(&found.entry) {
                    return Err(expired);
                }
                return Ok(Hit {
                    entry: found.entry,
                    layer_path: found.layer_path,
                    store: "local".into(),
                    origin: None,
                });
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("step cache: entry {} is unusable, removing it: {e}", key.digest().short());
                self.local.remove(key.digest());
                unusable = Some(e.to_string());
            }
        }
        if let Some(remote) = self.remote.as_ref().filter(|_| !self.remote_failed.load(Ordering::Relaxed)) {
            match remote.get(key.digest()) {
                Ok(Some(found)) => {
                    if let Some(expired) = self.expired(&found.entry) {
                        return Err(expired);
                    }
                    // Blobs landed in the local store's directory; the entry follows, so the next
                    // build here is a local hit.
                    if let Err(e) = self.local.put(&found.entry, found.layer_path.as_deref()) {
                        tracing::warn!("step cache: cannot keep entry {} locally: {e}", key.digest().short());
                    }
                    return Ok(Hit {
                        entry: found.entry,
                        layer_path: found.layer_path,
                        store: remote.name(),
                        origin: found.origin,
                    });
                }
                Ok(None) => {}
                Err(e) if e.is_damaged_entry() => {
                    // One bad entry (another artifact under the tag, a corrupt blob) is a miss;
                    // the registry stays in use.
                    tracing::warn!("step cache: entry {} in {} is unusable: {e}", key.digest().short(), remote.name());
                    unusable.get_or_insert(e.to_string());
                }
                Err(e) => {
                    tracing::warn!("step cache: {} unusable for this build: {e}", remote.name());
                    self.remote_failed.store(true, Ordering::Relaxed);
                }
            }
        }
        if let Some(reason) = unusable {
            return Err(Miss::Unusable(reason));
        }
        Err(self.explain(key))
    }

    /// Compares a missed key with the entries that continue from the same image.
    fn explain(&self, key: &StepKey) -> Miss {
        let siblings = self.local.siblings(key);
        siblings
            .iter()
            .map(|e| key.differing(&e.components))
            .filter(|d| !d.is_empty())
            .min_by_key(|d| d.len())
            .map_or(Miss::NewParent, Miss::Changed)
    }

    /// Records what a step produced: in the local store, and pushed to the registry store.
    /// Failures are warnings: the build's result does not depend on its cache.
    pub fn store(&self, key: &StepKey, outcome: StepOutcome, layer: Option<&Path>) {
        let entry = Entry::new(key, now_secs(), outcome);
        if let Err(e) = self.local.put(&entry, layer) {
            tracing::warn!("step cache: cannot store entry {}: {e}", key.digest().short());
        }
        if let Some(remote) = self.remote.as_ref().filter(|_| !self.remote_failed.load(Ordering::Relaxed))
            && let Err(e) = remote.put(&entry, layer)
        {
            tracing::warn!("step cache: cannot push entry {} to {}: {e}", key.digest().short(), remote.name());
            self.remote_failed.store(true, Ordering::Relaxed);
        }
    }

    /// After a build: if the local store's blobs exceed the size bound, removes expired and
    /// then least recently used entries until they fit.
    pub fn enforce_bounds(&self) -> Result<Option<PruneReport>> {
        if self.local.blob_bytes() <= self.opts.max_size {
            return Ok(None);
        }
        let policy = PrunePolicy { ttl: Some(self.opts.ttl), max_size: Some(self.opts.max_size), all: false };
        self.local.prune(&policy, SystemTime::now()).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::CachedLayer;
    use ext_oci::media;

    fn key(parent: &[u8], instruction: &str) -> StepKey {
        StepKey::builder(&Digest::of(parent)).with("instruction", instruction).with("user", "0").build()
    }

    /// A layer blob file with `bytes`, and the outcome naming it.
    fn layer(dir: &Path, bytes: &[u8]) -> (PathBuf, StepOutcome) {
        let digest = Digest::of(bytes);
        let path = dir.join(digest.hex());
        std::fs::write(&path, bytes).unwrap();
        let l = CachedLayer {
            digest,
            diff_id: Digest::of(b"tar"),
            size: bytes.len() as u64,
            uncompressed_size: 3,
            media_type: media::OCI_LAYER_GZIP.into(),
            entries: 1,
        };
        (path, StepOutcome::new(Some(l), &["/a".into()]))
    }

    #[test]
    fn store_then_hit_and_the_layer_is_there() {
        let d = tempfile::tempdir().unwrap();
        let cache = StepCache::open(StepCacheOptions::new(&d.path().join("steps"))).unwrap();
        let k = key(b"base", "RUN x");
        assert_eq!(cache.lookup(&k).unwrap_err(), Miss::NewParent);
        let (path, outcome) = layer(d.path(), b"layer bytes");
        cache.store(&k, outcome.clone(), Some(&path));
        let hit = cache.lookup(&k).unwrap();
        assert_eq!(hit.entry.outcome, outcome);
        assert_eq!(std::fs::read(hit.layer_path.unwrap()).unwrap(), b"layer bytes");
        // A step that made no layer is an entry too.
        let empty = key(b"base", "RUN true");
        cache.store(&empty, StepOutcome::new(None, &[]), None);
        assert_eq!(cache.lookup(&empty).unwrap().layer_path, None);
    }

    #[test]
    fn a_miss_names_the_component_that_changed() {
        let d = tempfile::tempdir().unwrap();
        let cache = StepCache::open(StepCacheOptions::new(&d.path().join("steps"))).unwrap();
        cache.store(&key(b"base", "RUN x"), StepOutcome::new(None, &[]), None);
        assert_eq!(cache.lookup(&key(b"base", "RUN y")).unwrap_err(), Miss::Changed(vec!["instruction".into()]));
        assert_eq!(cache.lookup(&key(b"other base", "RUN x")).unwrap_err(), Miss::NewParent);
    }

    #[test]
    fn no_cache_ttl_and_damage() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("steps");
        let k = key(b"base", "RUN x");
        let (path, outcome) = layer(d.path(), b"layer");
        let cache = StepCache::open(StepCacheOptions::new(&dir)).unwrap();
        cache.store(&k, outcome, Some(&path));

        let no_cache = StepCache::open(StepCacheOptions { no_cache: true, ..StepCacheOptions::new(&dir) }).unwrap();
        assert_eq!(no_cache.lookup(&k).unwrap_err(), Miss::Disabled);

        let short_ttl =
            StepCache::open(StepCacheOptions { ttl: Duration::ZERO, ..StepCacheOptions::new(&dir) }).unwrap();
        // Created "now": not older than a zero TTL until a second has passed.
        std::thread::sleep(Duration::from_millis(1100));
        assert!(matches!(short_ttl.lookup(&k).unwrap_err(), Miss::Expired { .. }));
        assert!(cache.lookup(&k).is_ok(), "the default TTL still accepts it");

        // A damaged layer blob is a miss (never a corrupt output), and the entry goes.
        let blob = cache.lookup(&k).unwrap().layer_path.unwrap();
        std::fs::remove_file(&blob).unwrap();
        std::fs::write(&blob, b"LAYER").unwrap();
        assert!(matches!(cache.lookup(&k).unwrap_err(), Miss::Unusable(m) if m.contains("corrupt")));
        assert!(matches!(cache.lookup(&k).unwrap_err(), Miss::NewParent), "the damaged entry was removed");
    }

    #[test]
    fn prune_by_ttl_size_and_all() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("steps");
        let cache = StepCache::open(StepCacheOptions::new(&dir)).unwrap();
        let keys: Vec<StepKey> = (0..3).map(|i| key(b"base", &format!("RUN {i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            let (path, outcome) = layer(d.path(), &vec![i as u8; 1000]);
            cache.store(k, outcome, Some(&path));
            // Distinct last-use times: entry 0 is the least recently used.
            std::thread::sleep(Duration::from_millis(20));
        }
        let local = cache.local();
        assert_eq!(local.entry_times().len(), 3);
        // Use entry 0 again: now entry 1 is the least recently used.
        cache.lookup(&keys[0]).unwrap();
        let report =
            local.prune(&PrunePolicy { ttl: None, max_size: Some(3500), all: false }, SystemTime::now()).unwrap();
        assert_eq!((report.entries_removed, report.entries_kept), (1, 2), "{report:?}");
        assert!(report.bytes_kept <= 3500, "{report:?}");
        assert!(cache.lookup(&keys[1]).is_err() && cache.lookup(&keys[0]).is_ok() && cache.lookup(&keys[2]).is_ok());
        assert!(report.blobs_removed >= 2, "the layer and the config of the evicted entry: {report:?}");

        // An hour from now with a 30-minute TTL, everything has expired.
        let later = SystemTime::now() + Duration::from_secs(3600);
        let ttl = PrunePolicy { ttl: Some(Duration::from_secs(1800)), max_size: None, all: false };
        assert_eq!(local.prune(&ttl, later).unwrap().entries_removed, 2);
        assert!(local.entry_times().is_empty());
        // Blobs named by nothing, older than the grace period, are gone with them.
        assert_eq!(local.prune(&PrunePolicy { ttl: None, max_size: None, all: true }, later).unwrap().entries_kept, 0);
        assert_eq!(local.blob_bytes(), 0);
    }
}
