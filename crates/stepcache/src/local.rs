//! The local store: a directory on this machine (`<cache-dir>/steps`, or
//! `<kaniko-dir>/cache/layers` for the drop-in extender).
//!
//! ```text
//! <dir>/entries/<key hex>.json            an entry's manifest; its mtime is its last use
//! <dir>/blobs/sha256/<hex>                configs and layer blobs (content-addressed)
//! <dir>/parents/<parent hex>/<key hex>    empty markers: which entries continue from an image,
//!                                         so a miss can say which component changed
//! <dir>/contexts/<hash of a context dir>  COPY source fingerprints (written by the executor)
//! ```
//!
//! Every file appears by rename (or hard link) when complete, so concurrent builds sharing the
//! directory see whole entries or none; an entry is written after its blobs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ext_oci::{BlobStore, Digest};

use crate::entry::{Entry, ManifestRefs};
use crate::error::{Result, StepCacheError};
use crate::key::StepKey;

/// Blobs no entry names are kept this long: a concurrent build writes its blobs before the
/// entry that names them.
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// Entries compared with a missed key to explain the miss.
const MAX_SIBLINGS: usize = 32;

pub struct LocalStore {
    root: PathBuf,
    blobs: BlobStore,
}

/// An entry found in a store, with its layer blob on this machine.
#[derive(Debug, Clone)]
pub struct Found {
    pub entry: Entry,
    /// The layer blob (verified against its digest), if the step made a layer.
    pub layer_path: Option<PathBuf>,
    /// For an entry from a registry: the blob store of its repository, from which a push to
    /// another repository of the same registry can mount the layer instead of uploading it.
    pub origin: Option<BlobStore>,
}

/// What `cache prune` (or the size bound after a build) removed and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub entries_removed: usize,
    pub blobs_removed: usize,
    pub bytes_freed: u64,
    pub entries_kept: usize,
    pub bytes_kept: u64,
}

/// What to prune.
#[derive(Debug, Clone, Copy)]
pub struct PrunePolicy {
    /// Entries created longer ago than this go.
    pub ttl: Option<Duration>,
    /// Then least recently used entries go until the blobs take at most this many bytes.
    pub max_size: Option<u64>,
    /// Everything goes.
    pub all: bool,
}

struct Listed {
    hex: String,
    path: PathBuf,
    last_used: SystemTime,
    created: u64,
    blobs: Vec<Digest>,
}

impl LocalStore {
    pub fn open(root: &Path) -> LocalStore {
        LocalStore { root: root.to_path_buf(), blobs: BlobStore::new(root) }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The content-addressed blobs (a registry store downloads into the same directory).
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn entries_dir(&self) -> PathBuf {
        self.root.join("entries")
    }

    fn entry_path(&self, hex: &str) -> PathBuf {
        self.entries_dir().join(format!("{hex}.json"))
    }

    fn parents_dir(&self) -> PathBuf {
        self.root.join("parents")
    }

    /// The entry stored for `key`, with its blobs verified; `None` if there is none.
    pub fn get(&self, key: &Digest) -> Result<Option<Found>> {
        let path = self.entry_path(key.hex());
        let manifest = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StepCacheError::Io { path, source: e }),
        };
        let (entry, refs) = Entry::parse(key, &manifest, |d, s| Ok(self.blobs.read_verified(d, Some(s))?))?;
        let layer_path = match &refs.layer {
            Some((digest, size)) => {
                // A hit's layer goes into outputs as it is: a damaged cached blob must be a miss,
                // not a corrupt image.
                self.blobs.verify(digest, Some(*size))?;
                Some(self.blobs.blob_path(digest))
            }
            None => None,
        };
        // The last use, for the size bound's least-recently-used order.
        if let Ok(f) = fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Ok(Some(Found { entry, layer_path, origin: None }))
    }

    /// Removes the entry for `key` (a damaged one, so the next build stores a fresh one).
    pub fn remove(&self, key: &Digest) {
        let _ = fs::remove_file(self.entry_path(key.hex()));
    }

    /// Stores `entry`; `layer` is the layer blob's file (hard-linked, or copied across
    /// filesystems, into the store unless it is there already).
    pub fn put(&self, entry: &Entry, layer: Option<&Path>) -> Result<()> {
        let blobs_dir = self.blobs.blobs_dir();
        fs::create_dir_all(&blobs_dir).map_err(StepCacheError::io(&blobs_dir))?;
        if let (Some(l), Some(path)) = (&entry.outcome.layer, layer) {
            self.add_blob_file(path, &l.digest)?;
        }
        let config = entry.config_bytes();
        self.add_blob_bytes(&config)?;
        let manifest = entry.manifest_bytes(&config);
        let entries = self.entries_dir();
        fs::create_dir_all(&entries).map_err(StepCacheError::io(&entries))?;
        write_atomically(&self.entry_path(entry.key.hex()), &manifest)?;
        if let Some(parent) = entry.components.get(crate::key::PARENT).and_then(|p| p.parse::<Digest>().ok()) {
            let dir = self.parents_dir().join(parent.hex());
            fs::create_dir_all(&dir).map_err(StepCacheError::io(&dir))?;
            let marker = dir.join(entry.key.hex());
            fs::write(&marker, b"").map_err(StepCacheError::io(&marker))?;
        }
        Ok(())
    }

    /// Adds a blob we hold as a file (hard link, else a copy under a temporary name renamed
    /// into place).
    pub fn add_blob_file(&self, path: &Path, digest: &Digest) -> Result<()> {
        let dest = self.blobs.blob_path(digest);
        if dest.exists() || path == dest {
            return Ok(());
        }
        link_or_copy(path, &dest)
    }

    fn add_blob_bytes(&self, bytes: &[u8]) -> Result<()> {
        let dest = self.blobs.blob_path(&Digest::of(bytes));
        if dest.exists() {
            return Ok(());
        }
        write_atomically(&dest, bytes)
    }

    /// Entries that continue from the same image as `key` (most recently used first): what a
    /// miss is compared with.
    pub fn siblings(&self, key: &StepKey) -> Vec<Entry> {
        let Ok(parent) = key.parent().parse::<Digest>() else { return Vec::new() };
        let Ok(markers) = fs::read_dir(self.parents_dir().join(parent.hex())) else { return Vec::new() };
        let mut found: Vec<(SystemTime, String)> = markers
            .flatten()
            .filter_map(|m| {
                let hex = m.file_name().into_string().ok()?;
                let used = fs::metadata(self.entry_path(&hex)).and_then(|md| md.modified()).ok()?;
                Some((used, hex))
            })
            .collect();
        found.sort_by(|a, b| b.cmp(a));
        found
            .into_iter()
            .take(MAX_SIBLINGS)
            .filter_map(|(_, hex)| {
                let digest: Digest = format!("sha256:{hex}").parse().ok()?;
                let manifest = fs::read(self.entry_path(&hex)).ok()?;
                let (entry, _) =
                    Entry::parse(&digest, &manifest, |d, s| Ok(self.blobs.read_verified(d, Some(s))?)).ok()?;
                Some(entry)
            })
            .collect()
    }

    /// The bytes the blobs take (configs and layers).
    pub fn blob_bytes(&self) -> u64 {
        let Ok(dir) = fs::read_dir(self.blobs.blobs_dir()) else { return 0 };
        dir.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
    }

    fn list(&self) -> Vec<Result<Listed, PathBuf>> {
        let Ok(dir) = fs::read_dir(self.entries_dir()) else { return Vec::new() };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let path = e.path();
            let Some(hex) = e.file_name().to_str().and_then(|n| n.strip_suffix(".json")).map(String::from) else {
                continue;
            };
            let listed = (|| {
                let digest: Digest = format!("sha256:{hex}").parse().ok()?;
                let last_used = e.metadata().ok()?.modified().ok()?;
                let manifest = fs::read(&path).ok()?;
                let (entry, refs) =
                    Entry::parse(&digest, &manifest, |d, s| Ok(self.blobs.read_verified(d, Some(s))?)).ok()?;
                let ManifestRefs { config, layer } = refs;
                let blobs = std::iter::once(config.0).chain(layer.map(|l| l.0)).collect();
                Some(Listed { hex: hex.clone(), path: path.clone(), last_used, created: entry.created, blobs })
            })();
            out.push(listed.ok_or(path));
        }
        out
    }

    /// Removes expired entries, then least recently used ones until the blobs fit `max_size`,
    /// then blobs no entry names (unless they are younger than a few minutes: a concurrent
    /// build writes blobs before its entry), markers of removed entries, and old COPY source
    /// fingerprints. A directory that also holds an OCI layout's `index.json` (Kaniko's cache)
    /// keeps blobs no entry of ours names.
    pub fn prune(&self, policy: &PrunePolicy, now: SystemTime) -> Result<PruneReport> {
        let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let mut report = PruneReport::default();
        let mut kept: Vec<Listed> = Vec::new();
        let mut removed: Vec<Listed> = Vec::new();
        for listed in self.list() {
            match listed {
                Err(damaged) => {
                    let _ = fs::remove_file(&damaged);
                    report.entries_removed += 1;
                }
                Ok(l) => {
                    let expired = policy.ttl.is_some_and(|ttl| l.created.saturating_add(ttl.as_secs()) < now_secs);
                    if policy.all || expired { removed.push(l) } else { kept.push(l) }
                }
            }
        }
        let blob_size = |d: &Digest| fs::metadata(self.blobs.blob_path(d)).map(|m| m.len()).unwrap_or(0);
        let mut refs: HashMap<Digest, usize> = HashMap::new();
        for l in &kept {
            for b in &l.blobs {
                *refs.entry(b.clone()).or_default() += 1;
            }
        }
        let mut total: u64 = refs.keys().map(blob_size).sum();
        if let Some(max) = policy.max_size {
            // Least recently used last, so pop() takes it.
            kept.sort_by_key(|l| std::cmp::Reverse(l.last_used));
            while total > max {
                let Some(l) = kept.pop() else { break };
                for b in &l.blobs {
                    let n = refs.get_mut(b).expect("counted above");
                    *n -= 1;
                    if *n == 0 {
                        refs.remove(b);
                        total = total.saturating_sub(blob_size(b));
                    }
                }
                removed.push(l);
            }
        }
        for l in &removed {
            fs::remove_file(&l.path).or_else(ignore_missing).map_err(StepCacheError::io(&l.path))?;
            report.entries_removed += 1;
        }
        let freed_now: HashSet<&Digest> =
            removed.iter().flat_map(|l| &l.blobs).filter(|b| !refs.contains_key(*b)).collect();
        let shared_with_layout = self.root.join("index.json").exists();
        if let Ok(dir) = fs::read_dir(self.blobs.blobs_dir()) {
            for e in dir.flatten() {
                let Some(digest) = e.file_name().to_str().and_then(|h| format!("sha256:{h}").parse::<Digest>().ok())
                else {
                    continue;
                };
                if refs.contains_key(&digest) {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                let old =
                    md.modified().ok().and_then(|m| now.duration_since(m).ok()).is_some_and(|age| age > ORPHAN_GRACE);
                let ours = freed_now.contains(&digest);
                if ours || (!shared_with_layout && (policy.all || old)) {
                    fs::remove_file(e.path()).or_else(ignore_missing).map_err(StepCacheError::io(e.path()))?;
                    report.blobs_removed += 1;
                    report.bytes_freed += md.len();
                }
            }
        }
        self.prune_markers();
        self.prune_contexts(policy, now);
        report.entries_kept = kept.len();
        report.bytes_kept = total;
        Ok(report)
    }

    fn prune_markers(&self) {
        let Ok(parents) = fs::read_dir(self.parents_dir()) else { return };
        for p in parents.flatten() {
            if let Ok(markers) = fs::read_dir(p.path()) {
                for m in markers.flatten() {
                    let hex = m.file_name().to_string_lossy().into_owned();
                    if !self.entry_path(&hex).exists() {
                        let _ = fs::remove_file(m.path());
                    }
                }
            }
            // Only succeeds when empty.
            let _ = fs::remove_dir(p.path());
        }
    }

    fn prune_contexts(&self, policy: &PrunePolicy, now: SystemTime) {
        let Ok(dir) = fs::read_dir(self.root.join("contexts")) else { return };
        for e in dir.flatten() {
            let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|m| now.duration_since(m).ok());
            if policy.all || policy.ttl.zip(age).is_some_and(|(ttl, age)| age > ttl) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// Entry counts by creation time, for `cache prune`'s report and the tests.
    pub fn entry_times(&self) -> BTreeMap<String, u64> {
        self.list().into_iter().flatten().map(|l| (l.hex, l.created)).collect()
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

/// Writes `bytes` to a temporary file beside `dest` and renames it into place.
pub(crate) fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest.parent().expect("a file in a directory");
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(StepCacheError::io(dir))?;
    tmp.write_all(bytes).map_err(StepCacheError::io(tmp.path()))?;
    tmp.persist(dest).map_err(|e| StepCacheError::Io { path: dest.to_path_buf(), source: e.error })?;
    Ok(())
}

/// Hard-links `src` to `dest`, or copies it under a temporary name and renames it (another
/// filesystem). An existing `dest` (a concurrent build linked it first) is fine: blobs are
/// content-addressed.
pub fn link_or_copy(src: &Path, dest: &Path) -> Result<()> {
    match fs::hard_link(src, dest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(_) => {
            let dir = dest.parent().expect("a file in a directory");
            let tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(StepCacheError::io(dir))?;
            fs::copy(src, tmp.path()).map_err(StepCacheError::io(src))?;
            tmp.persist(dest).map_err(|e| StepCacheError::Io { path: dest.to_path_buf(), source: e.error })?;
            Ok(())
        }
    }
}
