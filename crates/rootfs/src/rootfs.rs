//! A private root filesystem for RUN, materialized once per session from the image's layers,
//! and the loop "run a command, collect what changed".
//!
//! Two strategies, chosen by probing (or forced with [`SnapshotMode`]):
//! - **overlay**: every layer is unpacked into its own directory in overlayfs format
//!   (whiteouts as 0/0 devices, opaque markers as xattrs); each RUN mounts them as lower
//!   layers with a fresh upper directory, and the upper directory is the diff. The upper then
//!   becomes one more lower layer. Cost per RUN: proportional to what changed.
//! - **stat**: the layers are unpacked into one directory with whiteouts applied; a stat index
//!   taken before each RUN is compared with a walk after it. Cost per RUN: one `lstat` per
//!   file of the image, no file contents read.
//!
//! Mount points the sandbox needs (`/proc`, `/dev`, `/sys`, `/etc/resolv.conf`, `/etc/hosts`)
//! that the image lacks are provided without ever appearing in a layer.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::diff::{self, IgnoreSet, Snapshot, StatIndex};
use crate::error::RootfsError;
use crate::safe_path::{LowerSymlink, LowerView};
use crate::sandbox::{self, OverlaySpec, RunSpec, SandboxFs, SandboxMount};
use crate::unpack::{UnpackOptions, UnpackStats, WhiteoutMode, unpack_layer_over};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SnapshotMode {
    /// overlayfs if it works here, else the stat index.
    #[default]
    Auto,
    Overlay,
    Stat,
}

impl std::str::FromStr for SnapshotMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SnapshotMode::Auto),
            "overlay" => Ok(SnapshotMode::Overlay),
            "stat" => Ok(SnapshotMode::Stat),
            _ => Err(format!("`{s}`: expected auto, overlay or stat")),
        }
    }
}

/// Mount points the sandbox mounts over; kept out of every layer.
const MOUNT_DIRS: &[&str] = &["proc", "dev", "sys"];
const MOUNT_FILES: &[&str] = &["etc/resolv.conf", "etc/hosts"];

#[derive(Debug)]
enum Strategy {
    Overlay {
        /// Layer directories, bottom first, relative to the scratch dir.
        layers: Vec<String>,
    },
    Stat {
        index: Option<StatIndex>,
    },
}

/// The scratch root filesystem of a session.
#[derive(Debug)]
pub struct Rootfs {
    scratch: PathBuf,
    strategy: Strategy,
    ignore: IgnoreSet,
    runs: usize,
    layers_added: usize,
    /// `<cache>/unpacked`: base layers unpacked once per machine (overlay strategy only).
    layer_cache: Option<PathBuf>,
    cache_hits: usize,
    /// Layers this session just unpacked into the cache (not hits when they are added).
    just_filled: std::collections::HashSet<String>,
    /// RUN in a user namespace over idmapped mounts (image root is not host root).
    user_namespace: bool,
    /// Overlay strategy: per layer (same order as its `layers`), the directories it has only
    /// as parents of its entries. Their metadata comes from the layers below (as when the
    /// layers are applied to one tree), which each RUN's mount layer restores on top.
    implicit_dirs: Vec<HashSet<PathBuf>>,
}

/// One layer for [`Rootfs::fill_layer_cache`]: its digest, a name for messages, and how to
/// open its uncompressed tar stream (called on the unpacking thread).
pub struct CacheFill<'a> {
    pub digest_hex: String,
    /// The diffID the image config lists; `open` must verify the stream against it.
    pub diff_id: String,
    pub name: String,
    #[allow(clippy::type_complexity)]
    pub open: Box<dyn FnOnce() -> Result<Box<dyn Read + Send>, RootfsError> + Send + 'a>,
}

/// What one RUN did.
#[derive(Debug)]
pub struct RunOutcome {
    pub status: std::process::ExitStatus,
    /// The changes, if the command succeeded.
    pub snapshot: Option<Snapshot>,
    /// From spawning the sandbox to the command's exit (namespaces, mounts and the command).
    pub command_time: std::time::Duration,
    /// Finding the changes afterwards.
    pub diff_time: std::time::Duration,
}

impl Rootfs {
    /// Prepares an empty rootfs in `scratch` (which must be private to this session).
    /// `ignore` lists image paths never to include in a layer (e.g. the CNB `<app>` dir).
    pub fn create(scratch: &Path, mode: SnapshotMode, ignore: &[String]) -> Result<Rootfs, RootfsError> {
        fs::create_dir_all(scratch).map_err(RootfsError::io(scratch))?;
        let use_overlay = match mode {
            SnapshotMode::Stat => false,
            SnapshotMode::Overlay => {
                if !sandbox::overlay_supported(scratch) {
                    return Err(RootfsError::Unsupported(format!(
                        "overlayfs cannot be mounted with an upper dir in {} (use --snapshot stat)",
                        scratch.display()
                    )));
                }
                true
            }
            SnapshotMode::Auto => sandbox::overlay_supported(scratch),
        };
        let mut ignore = IgnoreSet::new(ignore);
        for p in MOUNT_DIRS.iter().chain(MOUNT_FILES) {
            ignore.add(p);
        }
        let strategy = if use_overlay {
            Strategy::Overlay { layers: Vec::new() }
        } else {
            let flat = scratch.join("rootfs");
            fs::create_dir_all(&flat).map_err(RootfsError::io(&flat))?;
            Strategy::Stat { index: None }
        };
        let policy = crate::userns::UsernsPolicy::from_env().map_err(RootfsError::Setting)?;
        let user_namespace =
            crate::userns::decide(scratch, sandbox::overlay_extra_options(), policy).map_err(RootfsError::Setting)?;
        tracing::debug!(overlay = use_overlay, user_namespace, "rootfs strategy");
        Ok(Rootfs {
            scratch: scratch.to_path_buf(),
            strategy,
            ignore,
            runs: 0,
            layers_added: 0,
            layer_cache: None,
            cache_hits: 0,
            just_filled: Default::default(),
            user_namespace,
            implicit_dirs: Vec::new(),
        })
    }

    /// Keeps unpacked layers in `<cache>/unpacked/<digest hex>/` and reuses them as read-only
    /// overlay lower directories in later sessions (overlay strategy only: overlayfs never
    /// writes to a lower directory, so sharing them is safe).
    pub fn with_layer_cache(mut self, cache: &Path) -> Rootfs {
        if self.uses_overlay() {
            let unpacked = cache.join("unpacked");
            // Layers half-unpacked by builds killed outright would otherwise pile up here.
            ext_oci::cleanup::remove_stale(&unpacked, crate::scratch::UNPACKING_PREFIX);
            self.layer_cache = Some(unpacked);
        }
        self
    }

    /// Layers taken from the unpacked-layer cache instead of being unpacked.
    pub fn cache_hits(&self) -> usize {
        self.cache_hits
    }

    /// Adds a layer identified by `digest_hex`: from the unpacked-layer cache if it is there,
    /// otherwise by unpacking the stream `open` returns (into the cache when there is one).
    /// `open` must verify the stream against `diff_id` (the config's); a cache entry records
    /// the diffID it was verified against and is used only for the same one.
    pub fn add_layer_by_digest<R: Read>(
        &mut self,
        digest_hex: &str,
        diff_id: &str,
        name: &str,
        open: impl Fn() -> Result<R, RootfsError>,
    ) -> Result<UnpackStats, RootfsError> {
        let (Some(cache), Strategy::Overlay { layers }) = (&self.layer_cache, &self.strategy) else {
            return self.add_layer(open()?, name);
        };
        let cached = cache.join(digest_hex);
        let below = layers.clone();
        let mut stats = UnpackStats::default();
        let implicit: HashSet<PathBuf> =
            match (cached_diff_id(cache, digest_hex), read_implicit_dirs(cache, digest_hex)) {
                (Some(recorded), _) if recorded != diff_id => {
                    return Err(RootfsError::DiffIdMismatch {
                        layer: name.to_string(),
                        recorded,
                        expected: diff_id.to_string(),
                    });
                }
                (Some(_), Some(implicit)) => {
                    if !self.just_filled.remove(digest_hex) {
                        self.cache_hits += 1;
                    }
                    implicit
                }
                _ => {
                    stats = unpack_into_cache(cache, digest_hex, diff_id, name, &open)?;
                    stats.implicit_dirs.iter().cloned().collect()
                }
            };
        // A cached layer was unpacked on its own. If it has entries below a directory that it
        // only implies and the layers below have as a symlink, those entries belong where the
        // symlink leads: this stack gets a copy of its own, unpacked over the layers below.
        let view = LowerLayers { rootfs: self, layers: &below, layer: cached.clone() };
        let mut by_depth: Vec<&PathBuf> = implicit.iter().collect();
        by_depth.sort_by_key(|p| p.components().count());
        if let Some(link) = by_depth.into_iter().find(|p| view.symlink_at(p).is_some()) {
            tracing::debug!(layer = name, dir = %link.display(), "layer writes below a symlink of the layers below; unpacking it for this image");
            return self.add_layer(open()?, name);
        }
        self.implicit_dirs.push(implicit);
        let Strategy::Overlay { layers } = &mut self.strategy else { unreachable!("checked above") };
        let rel = format!("l/{}", layers.len());
        let link = self.scratch.join(&rel);
        fs::create_dir_all(self.scratch.join("l")).map_err(RootfsError::io(&self.scratch))?;
        std::os::unix::fs::symlink(&cached, &link).map_err(RootfsError::io(&link))?;
        layers.push(rel);
        self.layers_added += 1;
        Ok(stats)
    }

    pub fn has_layer_cache(&self) -> bool {
        self.layer_cache.is_some()
    }

    /// Whether a layer is already in the unpacked-layer cache (always false without one).
    pub fn is_cached(&self, digest_hex: &str) -> bool {
        self.layer_cache
            .as_ref()
            .is_some_and(|c| cached_diff_id(c, digest_hex).is_some() && read_implicit_dirs(c, digest_hex).is_some())
    }

    /// Unpacks layers into the unpacked-layer cache on every core at once: each layer goes to a
    /// directory of its own, so independent layers unpack in parallel (a base's layers then
    /// join the rootfs in order with [`Rootfs::add_layer_by_digest`], as cache entries). On
    /// failure, returns the digest of the layer that failed.
    pub fn fill_layer_cache(&mut self, jobs: Vec<CacheFill<'_>>) -> Result<UnpackStats, (String, RootfsError)> {
        let Some(cache) = self.layer_cache.clone() else { return Ok(UnpackStats::default()) };
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let mut total = UnpackStats::default();
        let mut jobs = jobs.into_iter();
        loop {
            let wave: Vec<CacheFill<'_>> = jobs.by_ref().take(threads).collect();
            if wave.is_empty() {
                break;
            }
            let results: Vec<(String, Result<UnpackStats, RootfsError>)> = std::thread::scope(|scope| {
                let handles: Vec<_> = wave
                    .into_iter()
                    .map(|job| {
                        let cache = &cache;
                        scope.spawn(move || {
                            let r = unpack_into_cache(cache, &job.digest_hex, &job.diff_id, &job.name, job.open);
                            (job.digest_hex, r)
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("an unpack thread panicked")).collect()
            });
            for (hex, result) in results {
                let stats = result.map_err(|e| (hex.clone(), e))?;
                total.entries += stats.entries;
                total.bytes += stats.bytes;
                total.whiteouts += stats.whiteouts;
                self.just_filled.insert(hex);
            }
        }
        Ok(total)
    }

    pub fn uses_overlay(&self) -> bool {
        matches!(self.strategy, Strategy::Overlay { .. })
    }

    pub fn layers_added(&self) -> usize {
        self.layers_added
    }

    fn flat(&self) -> PathBuf {
        self.scratch.join("rootfs")
    }

    /// Applies one layer (an uncompressed tar stream) on top.
    pub fn add_layer(&mut self, tar: impl Read, name: &str) -> Result<UnpackStats, RootfsError> {
        self.layers_added += 1;
        match &mut self.strategy {
            Strategy::Overlay { layers } => {
                let below = layers.clone();
                let rel = format!("l/{}", below.len());
                let dir = self.scratch.join(&rel);
                fs::create_dir_all(&dir).map_err(RootfsError::io(&dir))?;
                let view = LowerLayers { rootfs: self, layers: &below, layer: dir.clone() };
                let stats = unpack_whole(&dir, tar, WhiteoutMode::Overlay, name, Some(&view))?;
                self.implicit_dirs.push(stats.implicit_dirs.iter().cloned().collect());
                if let Strategy::Overlay { layers } = &mut self.strategy {
                    layers.push(rel);
                }
                Ok(stats)
            }
            Strategy::Stat { index } => {
                // The stat index no longer describes the tree; rebuilt before the next RUN.
                *index = None;
                unpack_whole(&self.scratch.join("rootfs"), tar, WhiteoutMode::Apply, name, None)
            }
        }
    }

    /// Reads a file of the merged tree (e.g. `etc/passwd`), following no symlinks out of it.
    pub fn read_file(&self, rel: &str) -> Option<Vec<u8>> {
        match &self.strategy {
            Strategy::Stat { .. } => {
                let p = crate::resolve_in_root(&self.flat(), Path::new(rel)).ok()?;
                fs::read(p).ok()
            }
            Strategy::Overlay { layers } => {
                for layer in layers.iter().rev() {
                    let dir = self.scratch.join(layer);
                    let path = dir.join(rel);
                    match fs::symlink_metadata(&path) {
                        Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => return None,
                        Ok(md) if md.is_file() => return fs::read(&path).ok(),
                        Ok(_) => return None,
                        Err(_) => {
                            if hidden_below(&dir, rel) {
                                return None;
                            }
                        }
                    }
                }
                None
            }
        }
    }

    /// Metadata of a path in the merged layers below the current RUN (overlay strategy), as
    /// applying the layers to one tree gives it: a layer's implicit parent directory has none.
    fn lower_metadata(&self, layers: &[String], rel: &str) -> Option<fs::Metadata> {
        self.lower_entry(layers, rel).map(|(_, md)| md)
    }

    /// Where a path is in the merged layers below the current RUN, with its metadata.
    fn lower_entry(&self, layers: &[String], rel: &str) -> Option<(PathBuf, fs::Metadata)> {
        for (i, layer) in layers.iter().enumerate().rev() {
            let dir = self.scratch.join(layer);
            let path = dir.join(rel);
            match fs::symlink_metadata(&path) {
                Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => return None,
                Ok(md) if md.is_dir() && self.implicit_dirs.get(i).is_some_and(|s| s.contains(Path::new(rel))) => {
                    continue;
                }
                Ok(md) => return Some((path, md)),
                Err(_) if hidden_below(&dir, rel) => return None,
                Err(_) => {}
            }
        }
        None
    }

    /// Runs a command and returns its status and, on success, the changes it made.
    pub fn run(&mut self, spec: &RunSpec) -> Result<RunOutcome, RootfsError> {
        self.runs += 1;
        let run_dir = self.scratch.join(format!("r/{}", self.runs));
        let resolv = copy_host_file("/etc/resolv.conf", &run_dir.join("resolv.conf"))?;
        let hosts = copy_host_file("/etc/hosts", &run_dir.join("hosts"))?;
        let idmapped = run_dir.join("i");
        let user_namespace = match self.user_namespace {
            true => Some((
                std::sync::Arc::new(crate::userns::UserNamespace::create().map_err(RootfsError::io("user namespace"))?),
                idmapped.clone(),
            )),
            false => None,
        };
        match &mut self.strategy {
            Strategy::Overlay { layers } => {
                let layers = layers.clone();
                // The mount points live in a top layer of their own, copying the image's
                // metadata for the directories they need, so they never reach the upper dir.
                let mounts_rel = format!("r/{}/m", self.runs);
                let run_mounts = self.make_mount_layer(&self.scratch.join(&mounts_rel), &layers, &spec.mounts)?;
                // Siblings in a directory of their own: one idmapped mount covers both.
                let upper_rel = format!("r/{}/uw/u", self.runs);
                let work_rel = format!("r/{}/uw/w", self.runs);
                let merged = self.scratch.join(format!("r/{}/root", self.runs));
                for d in [&upper_rel, &work_rel] {
                    let p = self.scratch.join(d);
                    fs::create_dir_all(&p).map_err(RootfsError::io(&p))?;
                }
                fs::create_dir_all(&merged).map_err(RootfsError::io(&merged))?;
                fs::set_permissions(self.scratch.join(&upper_rel), fs::Permissions::from_mode(0o755))
                    .map_err(RootfsError::io(&run_dir))?;
                let mut lowers: Vec<String> = vec![mounts_rel.clone()];
                lowers.extend(layers.iter().rev().cloned());
                if layers.is_empty() {
                    // overlayfs needs at least one lower directory.
                    lowers.push(mounts_rel);
                }
                let fs_spec = SandboxFs {
                    root: merged,
                    overlay: Some(OverlaySpec {
                        base: self.scratch.clone(),
                        lowers,
                        upper: upper_rel.clone(),
                        work: work_rel.clone(),
                    }),
                    resolv_conf: resolv,
                    hosts,
                    user_namespace,
                    mounts: run_mounts,
                };
                let started = Instant::now();
                let status = sandbox::run(&fs_spec, spec)
                    .map_err(|e| RootfsError::Spawn { program: spec.argv[0].clone(), source: e })?;
                let command_time = started.elapsed();
                let _ = fs::remove_dir_all(&idmapped);
                let work = self.scratch.join(&work_rel);
                let _ = fs::remove_dir_all(&work);
                let upper = self.scratch.join(&upper_rel);
                if !status.success() {
                    let _ = fs::remove_dir_all(&run_dir);
                    return Ok(RunOutcome { status, snapshot: None, command_time, diff_time: Duration::ZERO });
                }
                let started = Instant::now();
                let snapshot = diff::diff_upper(&upper, &self.ignore, &|rel| self.lower_entry(&layers, rel))
                    .map_err(RootfsError::io(&upper))?;
                let diff_time = started.elapsed();
                if let Strategy::Overlay { layers } = &mut self.strategy {
                    layers.push(upper_rel);
                    // Copy-ups carry their metadata: an upper dir has none implicit.
                    self.implicit_dirs.push(HashSet::new());
                }
                Ok(RunOutcome { status, snapshot: Some(snapshot), command_time, diff_time })
            }
            Strategy::Stat { index } => {
                let flat = self.scratch.join("rootfs");
                for d in MOUNT_DIRS {
                    ensure_dir(&flat.join(d))?;
                }
                for f in MOUNT_FILES {
                    ensure_file(&flat, f)?;
                }
                // Mount points the image lacks are made before the "before" index, so they are
                // in both indexes, and removed after the "after" one.
                let (stubs, run_mounts) = crate::mount_points::make(&flat, &spec.mounts)?;
                let before = match index.take() {
                    Some(mut i) => {
                        i.refresh(&flat, stubs.touched());
                        i
                    }
                    None => StatIndex::build(&flat, &self.ignore).map_err(RootfsError::io(&flat))?,
                };
                let fs_spec = SandboxFs {
                    root: flat.clone(),
                    overlay: None,
                    resolv_conf: resolv,
                    hosts,
                    user_namespace,
                    mounts: run_mounts,
                };
                let started = Instant::now();
                let status = sandbox::run(&fs_spec, spec)
                    .map_err(|e| RootfsError::Spawn { program: spec.argv[0].clone(), source: e });
                let command_time = started.elapsed();
                let _ = fs::remove_dir_all(&run_dir);
                let status = match status {
                    Ok(s) if s.success() => s,
                    other => {
                        // A failed RUN fails the build: nothing else runs on this half-changed
                        // tree, but the mount points still go.
                        stubs.remove(&flat);
                        let status = other?;
                        return Ok(RunOutcome { status, snapshot: None, command_time, diff_time: Duration::ZERO });
                    }
                };
                let started = Instant::now();
                let mut after = StatIndex::build(&flat, &self.ignore).map_err(RootfsError::io(&flat))?;
                let snapshot = before.diff(&after, &flat);
                stubs.remove(&flat);
                after.refresh(&flat, stubs.touched());
                *index = Some(after);
                Ok(RunOutcome { status, snapshot: Some(snapshot), command_time, diff_time: started.elapsed() })
            }
        }
    }

    /// The top lower layer of a RUN, for the overlay strategy: the sandbox's mount points, and
    /// every directory that some layer has only as an implicit parent, with the metadata the
    /// layers below give it (overlayfs shows a directory's metadata from the topmost layer that
    /// has it, so `COPY x /tmp/` would otherwise turn `/tmp` 0755 root for the next RUN).
    /// `RUN --mount` targets get their mount points here too (resolved through the lower
    /// layers' symlinks); returns them resolved.
    fn make_mount_layer(
        &self,
        dir: &Path,
        layers: &[String],
        mounts: &[SandboxMount],
    ) -> Result<Vec<(PathBuf, SandboxMount)>, RootfsError> {
        fs::create_dir_all(dir).map_err(RootfsError::io(dir))?;
        let mut dirs: std::collections::BTreeSet<PathBuf> =
            MOUNT_DIRS.iter().copied().chain(["etc"]).map(PathBuf::from).collect();
        let mut resolved = Vec::with_capacity(mounts.len());
        for m in mounts {
            let rel = self.mount_point_in_layer(dir, layers, m)?;
            let parent = if m.source.is_file() { rel.parent().unwrap_or(Path::new("")) } else { rel.as_path() };
            dirs.extend(parent.ancestors().filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf));
            resolved.push((rel, m.clone()));
        }
        for p in self.implicit_dirs.iter().take(layers.len()).flatten() {
            let Some(rel) = p.to_str() else { continue };
            // Only what the merged tree has as a directory (a later layer may have deleted it).
            if self.lower_metadata(layers, rel).is_some_and(|m| m.is_dir()) {
                dirs.extend(p.ancestors().filter(|a| !a.as_os_str().is_empty()).map(Path::to_path_buf));
            }
        }
        for d in &dirs {
            let p = dir.join(d);
            fs::create_dir_all(&p).map_err(RootfsError::io(&p))?;
        }
        for f in MOUNT_FILES {
            let p = dir.join(f);
            fs::write(&p, b"").map_err(RootfsError::io(&p))?;
        }
        // Deepest first: setting a parent's times before its children exist would not last.
        for d in dirs.iter().rev() {
            let Some(rel) = d.to_str() else { continue };
            if let Some((source, md)) = self.lower_entry(layers, rel).filter(|(_, m)| m.is_dir()) {
                copy_metadata(&dir.join(d), &source, &md)?;
            }
        }
        Ok(resolved)
    }

    /// Makes the mount point of `m` in the mount layer `dir`: the target resolved as the merged
    /// layers below resolve it (their symlinks copied into `dir` and followed), the directories
    /// on the way created (their metadata is copied afterwards where the layers have them), an
    /// empty file at the end for a file source.
    fn mount_point_in_layer(&self, dir: &Path, layers: &[String], m: &SandboxMount) -> Result<PathBuf, RootfsError> {
        let err = |message: String| RootfsError::MountTarget { target: m.target.clone(), message };
        let rel = Path::new(m.target.trim_start_matches('/'));
        if rel.as_os_str().is_empty() {
            return Err(err("cannot mount over the root directory".into()));
        }
        let view = LowerLayers { rootfs: self, layers, layer: dir.to_path_buf() };
        let walked = if m.source.is_file() {
            let (parent, name) =
                crate::safe_path::resolve_parent_rel(dir, rel, true, Some(&view)).map_err(|e| err(e.to_string()))?;
            parent.rel.join(name)
        } else {
            crate::safe_path::resolve_dir_rel(dir, rel, true, Some(&view)).map_err(|e| err(e.to_string()))?.rel
        };
        if walked.as_os_str().is_empty() {
            return Err(err("resolves to the root directory".into()));
        }
        // What the merged layers have on the way must be directories (and a file source's
        // target must not be one): a mount point in this layer would otherwise hide it.
        let mut cur = PathBuf::new();
        let parts: Vec<_> = walked.iter().collect();
        for (i, part) in parts.iter().enumerate() {
            cur.push(part);
            let last = i + 1 == parts.len();
            let Some(md) = cur.to_str().and_then(|c| self.lower_metadata(layers, c)) else { continue };
            match (last, m.source.is_file(), md.is_dir()) {
                (_, _, true) if !(last && m.source.is_file()) => {}
                (true, true, false) => {}
                (true, _, _) => {
                    let want = if m.source.is_file() { "a file" } else { "a directory" };
                    return Err(err(format!("the image has something else than {want} there")));
                }
                (false, _, _) => return Err(err(format!("/{} is not a directory", cur.display()))),
            }
        }
        if m.source.is_file() {
            let p = dir.join(&walked);
            fs::write(&p, b"").map_err(RootfsError::io(&p))?;
        }
        Ok(walked)
    }

    /// The directory a RUN's snapshot reads from stays valid until the next RUN; this removes
    /// nothing else. Call [`Rootfs::remove`] (or drop the scratch dir) when done.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_dir_all(&self.scratch)
    }
}

impl crate::run_root::RunRoot for Rootfs {
    fn add_layer(&mut self, tar: &mut dyn Read, name: &str) -> Result<UnpackStats, RootfsError> {
        Rootfs::add_layer(self, tar, name)
    }

    fn read_file(&self, rel: &str) -> Option<Vec<u8>> {
        Rootfs::read_file(self, rel)
    }

    fn run(&mut self, spec: &RunSpec) -> Result<RunOutcome, RootfsError> {
        Rootfs::run(self, spec)
    }

    fn layers_added(&self) -> usize {
        self.layers_added
    }

    fn snapshot_kind(&self) -> &'static str {
        if self.uses_overlay() { "overlayfs snapshots" } else { "stat-index snapshots" }
    }

    fn finish(self: Box<Self>) {
        let _ = self.remove();
    }
}

/// Unpacks a layer into `<cache>/<digest hex>/`: into a temporary directory first, renamed into
/// place only when complete (if another build got there first, its copy is as good as ours),
/// then records the diffID it was verified against in `<digest hex>.diffid`. An entry without
/// that record (an interrupted fill, an older version) counts as missing.
fn unpack_into_cache<R: Read>(
    cache: &Path,
    digest_hex: &str,
    diff_id: &str,
    name: &str,
    open: impl FnOnce() -> Result<R, RootfsError>,
) -> Result<UnpackStats, RootfsError> {
    fs::create_dir_all(cache).map_err(RootfsError::io(cache))?;
    let (tmp, _owner) =
        ext_oci::cleanup::owned_tempdir(cache, crate::scratch::UNPACKING_PREFIX).map_err(RootfsError::io(cache))?;
    let _cleanup = ext_oci::cleanup::register_path(tmp.path());
    let stats = unpack_whole(tmp.path(), open()?, WhiteoutMode::Overlay, name, None)?;
    // The list goes in first: a cached layer without one is unpacked again. The layer's bytes
    // decide both, so a list left by a build that lost the rename race below is still right.
    write_implicit_dirs(cache, digest_hex, &stats.implicit_dirs)?;
    let tmp = tmp.keep();
    if fs::rename(&tmp, cache.join(digest_hex)).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    let record = cache.join(format!("{digest_hex}.diffid"));
    let mut file = tempfile::NamedTempFile::new_in(cache).map_err(RootfsError::io(cache))?;
    io::Write::write_all(&mut file, diff_id.as_bytes()).map_err(RootfsError::io(&record))?;
    file.persist(&record).map_err(|e| RootfsError::Io { path: record.clone(), source: e.error })?;
    Ok(stats)
}

/// The diffID a cache entry was verified against, if the entry is complete.
fn cached_diff_id(cache: &Path, digest_hex: &str) -> Option<String> {
    if !cache.join(digest_hex).is_dir() {
        return None;
    }
    fs::read_to_string(cache.join(format!("{digest_hex}.diffid"))).ok()
}

/// `<cache>/../implicit-dirs/<digest hex>`: a cached layer's implicit directories,
/// NUL-separated.
fn implicit_dirs_file(cache: &Path, digest_hex: &str) -> PathBuf {
    cache.with_file_name("implicit-dirs").join(digest_hex)
}

fn write_implicit_dirs(cache: &Path, digest_hex: &str, dirs: &[PathBuf]) -> Result<(), RootfsError> {
    use std::os::unix::ffi::OsStrExt;
    let file = implicit_dirs_file(cache, digest_hex);
    let parent = file.parent().expect("a file in a directory");
    fs::create_dir_all(parent).map_err(RootfsError::io(parent))?;
    let mut data = Vec::new();
    for d in dirs {
        data.extend_from_slice(d.as_os_str().as_bytes());
        data.push(0);
    }
    let tmp = tempfile::NamedTempFile::new_in(parent).map_err(RootfsError::io(parent))?;
    fs::write(tmp.path(), &data).map_err(RootfsError::io(tmp.path()))?;
    tmp.persist(&file).map_err(|e| RootfsError::io(&file)(e.error))?;
    Ok(())
}

fn read_implicit_dirs(cache: &Path, digest_hex: &str) -> Option<HashSet<PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let data = fs::read(implicit_dirs_file(cache, digest_hex)).ok()?;
    Some(
        data.split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
            .collect(),
    )
}

/// Unpacks a layer and then reads its stream to the end: a verifying reader underneath checks
/// the blob's digest only at the end, and nothing may be trusted (or cached) before that.
fn unpack_whole(
    dir: &Path,
    mut tar: impl Read,
    mode: WhiteoutMode,
    name: &str,
    lower: Option<&dyn LowerView>,
) -> Result<UnpackStats, RootfsError> {
    let opts = UnpackOptions { whiteouts: mode, layer_name: name.to_string(), filter: None };
    let stats = unpack_layer_over(dir, &mut tar, &opts, lower).map_err(Box::new)?;
    io::copy(&mut tar, &mut io::sink()).map_err(|e| RootfsError::Io { path: PathBuf::from(name), source: e })?;
    Ok(stats)
}

/// The layers below an overlay layer directory, as [`LowerView`] sees them.
struct LowerLayers<'r> {
    rootfs: &'r Rootfs,
    /// Bottom first, as in [`Strategy::Overlay`].
    layers: &'r [String],
    /// The layer directory being unpacked (or checked): its whiteouts hide lower entries.
    layer: PathBuf,
}

impl LowerView for LowerLayers<'_> {
    fn symlink_at(&self, rel: &Path) -> Option<LowerSymlink> {
        let rel = rel.to_str()?;
        if masks_lower(&self.layer, rel) {
            return None;
        }
        let (path, md) = self.rootfs.lower_entry(self.layers, rel)?;
        if !md.file_type().is_symlink() {
            return None;
        }
        Some(LowerSymlink {
            target: fs::read_link(&path).ok()?,
            uid: md.uid(),
            gid: md.gid(),
            mtime: filetime::FileTime::from_last_modification_time(&md),
        })
    }
}

/// True if `layer` hides from the layers below what they have at `rel`, by a whiteout at `rel`
/// or above it or an opaque directory above it (whatever `layer` itself has at `rel`).
fn masks_lower(layer: &Path, rel: &str) -> bool {
    let mut prefix = PathBuf::new();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        prefix.push(part);
        match fs::symlink_metadata(layer.join(&prefix)) {
            Ok(md) if md.file_type().is_char_device() && md.rdev() == 0 => return true,
            Ok(md) if md.is_dir() && i + 1 < parts.len() => {
                if matches!(xattr::get(layer.join(&prefix), "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y") {
                    return true;
                }
            }
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

/// True if a whiteout or an opaque directory in `layer` hides `rel` from the layers below, and
/// `layer` has nothing of its own there (an entry at `rel` rules out a whiteout at or above it,
/// so only the opaque case needs the check).
fn hidden_below(layer: &Path, rel: &str) -> bool {
    masks_lower(layer, rel) && fs::symlink_metadata(layer.join(rel)).is_err()
}

/// Gives the directory `path` the owner, mode, xattrs and mtime of `source` (`md`).
fn copy_metadata(path: &Path, source: &Path, md: &fs::Metadata) -> Result<(), RootfsError> {
    for (name, value) in crate::diff::layer_xattrs(source) {
        xattr::set(path, &name, &value).map_err(RootfsError::io(path))?;
    }
    std::os::unix::fs::lchown(path, Some(md.uid()), Some(md.gid())).map_err(RootfsError::io(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(md.mode() & 0o7777)).map_err(RootfsError::io(path))?;
    let mtime = filetime::FileTime::from_last_modification_time(md);
    filetime::set_symlink_file_times(path, mtime, mtime).map_err(RootfsError::io(path))
}

fn ensure_dir(p: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => Ok(()),
        Ok(_) => Err(RootfsError::Unsupported(format!(
            "/{} in the image is not a directory; RUN needs to mount it",
            p.file_name().unwrap_or_default().to_string_lossy()
        ))),
        Err(_) => fs::create_dir_all(p).map_err(RootfsError::io(p)),
    }
}

/// Makes sure `rel` exists in `root` as a regular file to bind-mount over (through in-root
/// resolution, so an image's `/etc/hosts -> /x` symlink cannot send us outside).
fn ensure_file(root: &Path, rel: &str) -> Result<(), RootfsError> {
    let (dir, name) =
        crate::resolve_parent_in_root(root, Path::new(rel)).map_err(|e| RootfsError::Unsupported(e.to_string()))?;
    fs::create_dir_all(&dir).map_err(RootfsError::io(&dir))?;
    let p = dir.join(name);
    match fs::symlink_metadata(&p) {
        Ok(md) if md.is_file() => Ok(()),
        Ok(_) => {
            let _ = fs::remove_file(&p);
            fs::write(&p, b"").map_err(RootfsError::io(&p))
        }
        Err(_) => fs::write(&p, b"").map_err(RootfsError::io(&p)),
    }
}

/// A private copy of a host file for the sandbox (writes inside never reach the host).
fn copy_host_file(host: &str, dest: &Path) -> Result<Option<PathBuf>, RootfsError> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(RootfsError::io(parent))?;
    }
    match fs::read(host) {
        Ok(data) => {
            fs::write(dest, data).map_err(RootfsError::io(dest))?;
            Ok(Some(dest.to_path_buf()))
        }
        Err(_) => Ok(None),
    }
}
