//! An extend session: one base image, any number of Dockerfiles applied in order (one per
//! extension), each instruction turned into config edits and/or one new layer.
//!
//! Base layers are never touched: the result is the base manifest's layers, by digest, plus
//! the layers this session wrote into its blob directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ext_dockerfile::{ConfigOp, Dockerfile, Location, Op, Plan, RunCommand, RunOp, Step};
use ext_oci::layer::{decompress, decompress_verified, rfc3339};
use ext_oci::{Digest, HistoryEntry, Image, ImageConfig, LayerBlob, LayerOptions, LayerWriter};
use ext_rootfs::{CacheFill, LiveRoot, Network, Rootfs, RootfsError, RunRoot, RunSpec, SnapshotMode};
use ext_stepcache::StepCache;
use serde_json::{Value, json};

use crate::context::BuildContext;
use crate::copy::{CopyInput, CopyPlan};
use crate::error::{ExecError, Result};
use crate::paths::clean_clamped;
use crate::step_key::SourceHasher;
use crate::tree::{ImageTree, LiveTree, TreeView};
use crate::users::{self, GroupDefault};

mod add_url;
mod copy_from;
mod step_cache;

/// How history entries name the instruction that made them.
#[derive(Debug, Clone, Default)]
pub enum Provenance {
    /// `created_by` is the instruction text; `comment` says ext-extend made it.
    #[default]
    Standalone,
    /// The CNB extender's format: `Layer: '<instruction>', Created by extension: <id>`.
    Extension(String),
}

/// Where RUN happens, and where COPY learns what the image holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RunExecutor {
    /// A private rootfs unpacked from the base image's layers; each RUN in a namespace
    /// sandbox (needs root with `CAP_SYS_ADMIN`). COPY reads the layers' tar headers.
    #[default]
    Sandbox,
    /// The filesystem at this path (`/`) already is the base image: ext-extend runs inside a
    /// container of it, as CNB platforms run the extender. COPY/ADD also write their files
    /// there, RUN is a plain child process on it, and no base layer is ever read.
    LiveRoot(PathBuf),
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub layer: LayerOptions,
    /// Private scratch space (ADD archive extraction, the RUN rootfs).
    pub scratch: PathBuf,
    /// How RUN changes are found (overlayfs upper dir or stat index).
    pub snapshot: SnapshotMode,
    /// Image paths whose changes never go into a layer (the CNB extender ignores `<app>`,
    /// `<layers>` and `<platform>`).
    pub ignore_paths: Vec<String>,
    /// Where per-layer work that only depends on a layer's digest is kept between builds
    /// (header indexes, unpacked layers). `None`: nothing is kept.
    pub cache_dir: Option<PathBuf>,
    pub executor: RunExecutor,
    /// `-q`: a RUN's output is kept in the scratch dir and shown only if the command fails.
    pub quiet: bool,
    /// Where COPY/ADD, RUN and WORKDIR results are looked up before the step runs, and stored
    /// after it ran. `None`: every step runs.
    pub step_cache: Option<Arc<StepCache>>,
    /// Secrets and SSH agents `RUN --mount=type=secret|ssh` may use.
    pub mount_sources: crate::run_mounts::MountSources,
    /// How `COPY --from=IMAGE` opens images.
    pub images: ImageSources,
}

/// Where `COPY --from=IMAGE` finds other images: the base image's store settings (blob cache,
/// insecure registries, timeouts; credentials come from the same Docker config) and platform.
#[derive(Debug, Clone)]
pub struct ImageSources {
    pub store: ext_oci::StoreOptions,
    pub platform: ext_oci::Platform,
}

impl Default for ImageSources {
    fn default() -> ImageSources {
        ImageSources { store: ext_oci::StoreOptions::default(), platform: ext_oci::Platform::host() }
    }
}

impl SessionOptions {
    pub fn new(scratch: &Path) -> SessionOptions {
        SessionOptions {
            layer: LayerOptions::default(),
            scratch: scratch.to_path_buf(),
            snapshot: SnapshotMode::Auto,
            ignore_paths: Vec::new(),
            cache_dir: None,
            executor: RunExecutor::Sandbox,
            quiet: false,
            step_cache: None,
            mount_sources: Default::default(),
            images: ImageSources::default(),
        }
    }
}

/// The PATH Docker gives RUN when the image sets none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What one instruction did.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub location: Location,
    pub text: String,
    /// The layer it added, if any.
    pub layer: Option<LayerBlob>,
    /// Image paths the layer holds (COPY/ADD/WORKDIR), for reporting; from the step cache,
    /// only the first few.
    pub paths: Vec<String>,
    /// How many paths the layer holds.
    pub path_count: usize,
    /// The step cache store the result came from (`local`, `registry HOST/REPO`), if it did.
    pub cached: Option<String>,
}

pub struct Session {
    base: Image,
    config: ImageConfig,
    layers: Vec<LayerBlob>,
    blob_dir: PathBuf,
    opts: SessionOptions,
    tree: Option<SessionTree>,
    rootfs: Option<Box<dyn RunRoot>>,
    created: String,
    copies: usize,
    /// Content digests of COPY sources, remembered across builds in the step cache.
    hasher: SourceHasher,
    cache_hits: usize,
    cache_misses: usize,
    /// New layers that step cache hits found in a registry repository.
    layer_stores: BTreeMap<Digest, ext_oci::BlobStore>,
    /// Images `COPY --from` names, by normalized reference.
    sources: BTreeMap<String, Image>,
}

/// The result of a session: the base image plus new layers and the final config.
#[derive(Debug, Clone)]
pub struct ExtendedImage {
    pub base: Image,
    pub config: ImageConfig,
    pub new_layers: Vec<LayerBlob>,
    /// New layers that are also in a registry repository (step cache hits from a registry): a
    /// push to another repository of that registry mounts them instead of uploading them.
    pub layer_stores: BTreeMap<Digest, ext_oci::BlobStore>,
}

impl Session {
    /// Starts a session on `base`; new layer blobs are written into `blob_dir`.
    pub fn new(base: Image, blob_dir: &Path, opts: SessionOptions) -> Session {
        let created = rfc3339(opts.layer.mtime.created_seconds());
        let hasher = SourceHasher::new(opts.step_cache.as_ref().map(|c| c.dir().join("contexts")));
        Session {
            config: base.config.clone(),
            base,
            layers: Vec::new(),
            blob_dir: blob_dir.to_path_buf(),
            opts,
            tree: None,
            rootfs: None,
            created,
            copies: 0,
            hasher,
            cache_hits: 0,
            cache_misses: 0,
            layer_stores: BTreeMap::new(),
            sources: BTreeMap::new(),
        }
    }

    pub fn base(&self) -> &Image {
        &self.base
    }

    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut ImageConfig {
        &mut self.config
    }

    pub fn new_layers(&self) -> &[LayerBlob] {
        &self.layers
    }

    /// Plans `dockerfile` against the current config and applies it.
    pub fn apply(
        &mut self,
        dockerfile: &Dockerfile,
        build_args: &BTreeMap<String, String>,
        context: &BuildContext,
        provenance: &Provenance,
    ) -> Result<Vec<StepReport>> {
        let plan = dockerfile.plan(build_args, &self.config.env())?;
        self.run_checks(dockerfile, &plan, build_args)?;
        self.apply_plan(&plan, context, provenance)
    }

    /// BuildKit's build checks on `dockerfile` against the image so far: findings logged as
    /// warnings, an error if the file says `# check=error=true` and there are any.
    pub fn run_checks(
        &self,
        dockerfile: &Dockerfile,
        plan: &Plan,
        build_args: &BTreeMap<String, String>,
    ) -> Result<()> {
        let inputs = ext_dockerfile::CheckInputs { build_args, base_has_shell: self.config.has_shell() };
        let report = dockerfile.check(plan, inputs)?;
        for w in &report.warnings {
            tracing::warn!("{w}");
        }
        match report.failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    pub fn apply_plan(
        &mut self,
        plan: &Plan,
        context: &BuildContext,
        provenance: &Provenance,
    ) -> Result<Vec<StepReport>> {
        self.open_copy_sources(plan)?;
        let mut reports = Vec::with_capacity(plan.steps.len());
        let mut cmd_set = false;
        for step in &plan.steps {
            let at = step.location(&plan.file);
            let mut report = StepReport {
                location: at.clone(),
                text: step.text.clone(),
                layer: None,
                paths: Vec::new(),
                path_count: 0,
                cached: None,
            };
            match &step.op {
                Op::Arg(_) => {}
                Op::Env(pairs) => pairs.iter().for_each(|(k, v)| self.config.set_env(k, v)),
                Op::Label(pairs) => pairs.iter().for_each(|(k, v)| self.config.set_label(k, v)),
                Op::User(u) => self.config.set_user(u),
                Op::Workdir(w) => {
                    let dir = self.resolve_workdir(w);
                    self.config.set_working_dir(&dir);
                    let key = self.workdir_key(&dir);
                    self.cached_step(key, &mut report, |s| s.make_workdir(&dir, &at))?;
                }
                Op::Shell(s) => self.config.set_shell(s),
                Op::Copy(op) => match &op.from {
                    Some(from) => {
                        let source = self.source_image(from, &at)?;
                        let key = self.copy_from_key(op, &source);
                        self.cached_step(key, &mut report, |s| s.copy_from(op, &at, &source))?;
                    }
                    None => {
                        let has_urls = op.sources.iter().any(|s| matches!(s, ext_dockerfile::CopySource::Url(_)));
                        // Without --checksum the key needs the download's digest; with it, a
                        // hit needs no download (see add_url.rs).
                        let early = has_urls && op.checksum.is_none() && self.opts.step_cache.is_some();
                        let done = (|| {
                            let downloads = if early { self.download_urls(op, &at)? } else { Vec::new() };
                            let key = self.copy_key(op, context, &downloads);
                            self.cached_step(key, &mut report, |s| {
                                let downloads = if has_urls && !early { s.download_urls(op, &at)? } else { downloads };
                                s.copy(op, &at, context, &downloads)
                            })
                        })();
                        if has_urls {
                            let _ = std::fs::remove_dir_all(self.downloads_dir());
                        }
                        done?;
                    }
                },
                Op::Run(run) => {
                    let key = self.run_key(run, context);
                    self.cached_step(key, &mut report, |s| {
                        Ok(s.run(run, &at, &step.text, context)?.map(|l| (l, Vec::new())))
                    })?;
                }
                Op::Config(c) => self.apply_config(c, &mut cmd_set),
            }
            log_layer(&report);
            self.record_history(step, &report, provenance);
            if let Some(size) = self.config.size_over(ext_oci::config::MAX_CONFIG_BYTES) {
                return Err(ExecError::step(
                    &at,
                    format!(
                        "{} makes the image config {size} bytes, more than the {} MiB container tools accept",
                        step.text.split_whitespace().next().unwrap_or("this instruction").to_uppercase(),
                        ext_oci::config::MAX_CONFIG_BYTES >> 20
                    ),
                ));
            }
            reports.push(report);
        }
        Ok(reports)
    }

    fn record_history(&mut self, step: &Step, report: &StepReport, provenance: &Provenance) {
        let (created_by, comment) = match provenance {
            Provenance::Standalone => (step.text.clone(), Some("ext-extend".to_string())),
            Provenance::Extension(id) => (format!("Layer: '{}', Created by extension: {id}", step.text), None),
        };
        let entry = HistoryEntry { created_by, comment, empty_layer: report.layer.is_none() };
        match &report.layer {
            Some(layer) => self.config.push_layer(&layer.diff_id, &self.created, entry),
            None => self.config.push_history(&self.created, entry),
        }
    }

    /// WORKDIR: relative paths join the current one; the result is absolute and clean.
    fn resolve_workdir(&self, w: &str) -> String {
        let joined = if w.starts_with('/') { w.to_string() } else { format!("{}/{w}", self.workdir()) };
        format!("/{}", clean_clamped(&joined))
    }

    /// The WORKDIR in effect (`/` if the image sets none).
    pub fn workdir(&self) -> String {
        match self.config.working_dir() {
            "" => "/".to_string(),
            w => w.to_string(),
        }
    }

    fn tree(&mut self) -> Result<&mut SessionTree> {
        if self.tree.is_none()
            && let RunExecutor::LiveRoot(root) = &self.opts.executor
        {
            self.tree = Some(SessionTree::Live(LiveTree::new(root)));
        }
        if self.tree.is_none() {
            let started = std::time::Instant::now();
            let mut tree = ImageTree::from_image(&self.base, self.opts.cache_dir.as_deref())?;
            for layer in &self.layers {
                tree.apply_blob(&layer.path, &layer.digest)?;
            }
            tracing::debug!(
                entries = tree.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "indexed base image"
            );
            self.tree = Some(SessionTree::Image(tree));
        }
        Ok(self.tree.as_mut().expect("just built"))
    }

    /// WORKDIR creates its directory (and missing parents) as the USER in effect, in a layer
    /// of its own, as BuildKit does; nothing when it exists.
    fn make_workdir(&mut self, dir: &str, at: &Location) -> Result<Option<(LayerBlob, Vec<String>)>> {
        let user = match self.config.user() {
            "" => "0".to_string(),
            u => u.to_string(),
        };
        if self.is_live() {
            // The directory must land on the live root too, for later RUNs and the build phase.
            self.rootfs(at)?;
        }
        let tree = self.tree()?.view();
        let (passwd, group) = (tree.captured("etc/passwd"), tree.captured("etc/group"));
        let owner = users::resolve(&user, passwd.as_deref(), group.as_deref(), GroupDefault::Chown)
            .map_err(|m| ExecError::step(at, format!("WORKDIR as USER {user}: {m}")))?;
        let plan = CopyPlan::workdir(tree, dir, owner, at)?;
        if plan.is_empty() {
            return Ok(None);
        }
        self.commit_plan(&plan, at).map(Some)
    }

    /// Writes a planned COPY/ADD/WORKDIR layer and makes it part of the image (metadata tree,
    /// RUN rootfs).
    fn commit_plan(&mut self, plan: &CopyPlan, at: &Location) -> Result<(LayerBlob, Vec<String>)> {
        let mut writer = LayerWriter::create(&self.blob_dir, self.opts.layer).map_err(ExecError::io(&self.blob_dir))?;
        plan.write(&mut writer)?;
        let blob = writer.finish().map_err(ExecError::io(&self.blob_dir))?;
        if let SessionTree::Image(tree) = self.tree()? {
            plan.apply_to(tree)?;
        }
        if let Some(rootfs) = &mut self.rootfs {
            // A later RUN must see what this layer added.
            add_blob_to_rootfs(rootfs.as_mut(), &blob.path, &blob.digest).map_err(|e| rootfs_error(at, e))?;
        }
        tracing::debug!("{at}: layer {} has {} entries", blob.digest.short(), blob.entries);
        self.layers.push(blob.clone());
        Ok((blob, plan.paths().map(|p| format!("/{p}")).collect()))
    }

    fn copy(
        &mut self,
        op: &ext_dockerfile::CopyOp,
        at: &Location,
        context: &BuildContext,
        downloads: &[crate::copy::Downloaded],
    ) -> Result<Option<(LayerBlob, Vec<String>)>> {
        self.copy_with(op, at, context, false, downloads)
    }

    /// COPY/ADD from `context`; `keep_owners`: its entries keep their owners unless `--chown`.
    fn copy_with(
        &mut self,
        op: &ext_dockerfile::CopyOp,
        at: &Location,
        context: &BuildContext,
        keep_owners: bool,
        downloads: &[crate::copy::Downloaded],
    ) -> Result<Option<(LayerBlob, Vec<String>)>> {
        let workdir = self.workdir();
        let scratch = self.opts.scratch.join(format!("copy-{}", self.copies));
        self.copies += 1;
        if self.is_live() {
            // The files must land on the live root too, for later RUNs and the build phase.
            self.rootfs(at)?;
        }
        self.tree()?;
        // Borrowed, not cloned: a COPY must not cost a copy of the whole image's index.
        let tree = self.tree.as_ref().expect("just built").view();
        let owner = match &op.chown {
            Some(spec) => {
                let (passwd, group) = (tree.captured("etc/passwd"), tree.captured("etc/group"));
                Some(
                    users::resolve(spec, passwd.as_deref(), group.as_deref(), GroupDefault::Chown)
                        .map_err(|m| ExecError::step(at, format!("--chown={spec}: {m}")))?,
                )
            }
            None => None,
        };
        let plan = CopyPlan::new(&CopyInput {
            op,
            at,
            workdir: &workdir,
            context,
            tree,
            owner,
            scratch: &scratch,
            keep_owners,
            downloads,
        });
        let committed = match plan {
            // Only wildcards that matched nothing: no layer (BuildKit drops the empty one).
            Ok(plan) if plan.is_empty() => Ok(None),
            Ok(plan) => self.commit_plan(&plan, at).map(Some),
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_dir_all(&scratch);
        committed
    }

    /// The error for a base layer that failed to unpack: a damaged blob shows up as a gzip,
    /// tar or unpack error before its digest is checked at the end, so the root cause is named
    /// when there is one (a damaged blob first, then a config whose diffID is wrong).
    fn layer_error(&self, at: &Location, digest: &Digest, size: u64, e: RootfsError) -> ExecError {
        if let Err(damaged) = self.base.store.verify(digest, Some(size)) {
            return ExecError::Image(damaged);
        }
        if let RootfsError::DiffIdMismatch { recorded, expected, .. } = &e
            && let (Ok(actual), Ok(expected)) = (recorded.parse(), expected.parse())
        {
            return ExecError::Image(ext_oci::OciError::DiffIdMismatch {
                image: self.base.name.clone(),
                layer: digest.clone(),
                failure: ext_oci::digest::BlobCheckFailure::DiffId { expected, actual },
            });
        }
        match self.base.diff_id_failure(digest, &e) {
            Some(mismatch) => ExecError::Image(mismatch),
            None => rootfs_error(at, e),
        }
    }

    fn is_live(&self) -> bool {
        matches!(self.opts.executor, RunExecutor::LiveRoot(_))
    }

    /// Where RUN happens, set up on first use (once per session).
    fn rootfs(&mut self, at: &Location) -> Result<&mut dyn RunRoot> {
        if self.rootfs.is_none() {
            let root: Box<dyn RunRoot> = match &self.opts.executor {
                RunExecutor::LiveRoot(dir) => {
                    // Our own files never belong to a layer: caches, and the blobs being written
                    // (an output next to `/` in a build stages them there).
                    let mut ignore = self.opts.ignore_paths.clone();
                    let step_cache = self.opts.step_cache.as_ref().map(|c| c.dir().to_path_buf());
                    let ours = self.opts.cache_dir.iter().chain([&self.blob_dir]).chain(step_cache.as_ref());
                    ignore.extend(ours.filter_map(|p| std::path::absolute(p).ok()).map(|p| p.display().to_string()));
                    let live = LiveRoot::open(dir, &ignore, &self.opts.scratch).map_err(|e| rootfs_error(at, e))?;
                    tracing::info!("RUN on the live root {} (stat-index snapshots)", dir.display());
                    // Layers written so far are on the live root already (COPY applies them).
                    Box::new(live)
                }
                RunExecutor::Sandbox => Box::new(self.unpack_rootfs(at)?),
            };
            self.rootfs = Some(root);
        }
        Ok(self.rootfs.as_mut().expect("just created").as_mut())
    }

    /// The sandbox's rootfs, unpacked from every layer so far.
    fn unpack_rootfs(&mut self, at: &Location) -> Result<Rootfs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            // Unpacking the image's files with their owners and entering namespaces both need
            // root; without this, the first chown of the unpacking fails obscurely.
            return Err(ExecError::step(
                at,
                "RUN needs root for its sandbox: run ext-extend as root (or, inside a container of the image being extended, with --live-root)",
            ));
        }
        let started = std::time::Instant::now();
        let dir = self.opts.scratch.join("rootfs");
        let mut rootfs =
            Rootfs::create(&dir, self.opts.snapshot, &self.opts.ignore_paths).map_err(|e| rootfs_error(at, e))?;
        if let Some(cache) = &self.opts.cache_dir {
            rootfs = rootfs.with_layer_cache(cache);
        }
        let mut bytes = 0u64;
        // Layers missing from the unpacked-layer cache unpack on every core at once (each
        // into a directory of its own); the loop below then adds all layers in order.
        let mut fills = Vec::new();
        if rootfs.has_layer_cache() {
            for (i, desc) in self.base.layers().iter().enumerate() {
                let digest = Digest::try_from(desc.digest())?;
                if rootfs.is_cached(digest.hex()) {
                    continue;
                }
                // Downloads (if any) happen here, one at a time, before the parallel part.
                self.base.store.ensure(&digest, Some(desc.size()))?;
                let (store, size, diff_id) = (self.base.store.clone(), desc.size(), self.base.diff_id(i)?);
                fills.push(CacheFill {
                    digest_hex: digest.hex().to_string(),
                    diff_id: diff_id.to_string(),
                    name: digest.to_string(),
                    open: Box::new(move || open_layer(&store, &digest, size, diff_id)),
                });
            }
        }
        if fills.len() > 1 {
            let stats = rootfs.fill_layer_cache(fills).map_err(|(hex, e)| {
                let failed =
                    self.base.layers().iter().find_map(|d| {
                        Digest::try_from(d.digest()).ok().filter(|g| g.hex() == hex).map(|g| (g, d.size()))
                    });
                match failed {
                    Some((digest, size)) => self.layer_error(at, &digest, size, e),
                    None => rootfs_error(at, e),
                }
            })?;
            bytes += stats.bytes;
        }
        for (i, desc) in self.base.layers().iter().enumerate() {
            let digest = Digest::try_from(desc.digest())?;
            let diff_id = self.base.diff_id(i)?;
            let store = &self.base.store;
            let open = || open_layer(store, &digest, desc.size(), diff_id.clone());
            let stats = rootfs
                .add_layer_by_digest(digest.hex(), diff_id.as_str(), digest.as_str(), open)
                .map_err(|e| self.layer_error(at, &digest, desc.size(), e))?;
            bytes += stats.bytes;
        }
        for layer in &self.layers {
            add_blob_to_rootfs(&mut rootfs, &layer.path, &layer.digest).map_err(|e| rootfs_error(at, e))?;
        }
        tracing::info!(
            "unpacked {} layers ({:.1} MB, {} from the unpacked-layer cache) for RUN in {:.2}s ({})",
            rootfs.layers_added(),
            bytes as f64 / 1e6,
            rootfs.cache_hits(),
            started.elapsed().as_secs_f64(),
            RunRoot::snapshot_kind(&rootfs)
        );
        Ok(rootfs)
    }

    fn run(&mut self, op: &RunOp, at: &Location, text: &str, context: &BuildContext) -> Result<Option<LayerBlob>> {
        let shell = self.config.shell();
        let (argv, script) = match &op.command {
            RunCommand::Shell(cmd) => (shell.iter().cloned().chain([cmd.clone()]).collect::<Vec<_>>(), None),
            RunCommand::Exec(argv) if argv.is_empty() => return Err(ExecError::step(at, "RUN [] has no command")),
            RunCommand::Exec(argv) => (argv.clone(), None),
            RunCommand::Script(body) => {
                (vec![ext_rootfs::sandbox::SCRIPT_PATH.to_string()], Some(body.clone().into_bytes()))
            }
        };
        let workdir = self.workdir();
        let user_spec = self.config.user().to_string();
        let mut env = self.config.env();
        let output = self.opts.quiet.then(|| self.opts.scratch.join("run-output"));
        let cache_root = match &self.opts.cache_dir {
            Some(dir) => dir.join("run-mounts"),
            None => self.opts.scratch.join("run-mounts"),
        };
        let mounts = crate::run_mounts::prepare(
            &op.mounts,
            &crate::run_mounts::MountInputs {
                at,
                workdir: &self.workdir(),
                context,
                cache_root: &cache_root,
                scratch: &self.opts.scratch,
                sources: &self.opts.mount_sources,
            },
        )?;
        let rootfs = self.rootfs(at)?;
        let passwd = rootfs.read_file("etc/passwd");
        let group = rootfs.read_file("etc/group");
        let user = if user_spec.is_empty() { "0".to_string() } else { user_spec };
        let ids = users::resolve(&user, passwd.as_deref(), group.as_deref(), GroupDefault::Primary)
            .map_err(|m| ExecError::step(at, format!("USER {user}: {m}")))?;
        let groups = users::supplementary_groups(&user, ids.gid, passwd.as_deref(), group.as_deref());
        for (k, v) in op.args_env.iter().chain(&op.proxy_env) {
            if !env.iter().any(|(ek, _)| ek == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        for (k, v) in &mounts.env {
            match env.iter_mut().find(|(ek, _)| ek == k) {
                Some(e) => e.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), users::home(ids.uid, passwd.as_deref())));
        }
        let spec = RunSpec {
            argv,
            env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            uid: ids.uid,
            gid: ids.gid,
            groups,
            workdir,
            network: if op.network.as_deref() == Some("none") { Network::None } else { Network::Host },
            script,
            output,
            mounts: mounts.mounts.clone(),
        };
        tracing::info!("{at} {}", ext_oci::escape::for_terminal(text));
        let started = std::time::Instant::now();
        let outcome = rootfs.run(&spec).map_err(|e| match e {
            RootfsError::Spawn { program, source } if source.kind() == std::io::ErrorKind::NotFound => ExecError::step(
                at,
                format!("RUN: `{program}` is not in the image (an image without a shell cannot RUN shell commands; COPY files prepared in the extension layer instead)"),
            ),
            other => rootfs_error(at, other),
        })?;
        if let Some(path) = &spec.output {
            // Quiet: the output of a command that failed is what the user needs to see.
            if !outcome.status.success() {
                let mut stderr = std::io::stderr().lock();
                let _ = std::io::copy(&mut std::fs::File::open(path).map_err(ExecError::io(path))?, &mut stderr);
            }
            let _ = std::fs::remove_file(path);
        }
        if !outcome.status.success() {
            return Err(ExecError::RunFailed {
                at: at.clone(),
                command: text.to_string(),
                code: outcome.status.code().unwrap_or(-1),
            });
        }
        let snapshot = outcome.snapshot.expect("a successful RUN has a snapshot");
        let (command, diff) = (outcome.command_time.as_secs_f64(), outcome.diff_time.as_secs_f64());
        if snapshot.is_empty() {
            tracing::info!("{at}: no changes (no layer); sandbox+command {command:.3}s, diff {diff:.3}s");
            return Ok(None);
        }
        let writing = std::time::Instant::now();
        let mut writer = LayerWriter::create(&self.blob_dir, self.opts.layer).map_err(ExecError::io(&self.blob_dir))?;
        ext_rootfs::write_snapshot(&snapshot, &mut writer).map_err(ExecError::io(&snapshot.source))?;
        let blob = writer.finish().map_err(ExecError::io(&self.blob_dir))?;
        tracing::info!(
            "{at}: {} changes -> layer {} ({} bytes); sandbox+command {command:.3}s, diff {diff:.3}s, layer {:.3}s, step {:.3}s",
            snapshot.changes.len(),
            blob.digest.short(),
            blob.size,
            writing.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64(),
        );
        if let Some(SessionTree::Image(tree)) = &mut self.tree {
            tree.apply_blob(&blob.path, &blob.digest)?;
        }
        self.layers.push(blob.clone());
        Ok(Some(blob))
    }

    fn apply_config(&mut self, op: &ConfigOp, cmd_set: &mut bool) {
        let shell = self.config.shell();
        let argv = |args: &[String], prepend: bool| -> Value {
            if prepend { json!(shell.iter().chain(args).collect::<Vec<_>>()) } else { json!(args) }
        };
        match op {
            ConfigOp::Cmd { args, prepend_shell } => {
                self.config.set_field("Cmd", argv(args, *prepend_shell));
                *cmd_set = true;
            }
            ConfigOp::Entrypoint { args, prepend_shell } => {
                self.config.set_field("Entrypoint", argv(args, *prepend_shell));
                // Docker: an ENTRYPOINT resets a CMD inherited from the base image.
                if !*cmd_set {
                    self.config.set_field("Cmd", Value::Null);
                }
            }
            ConfigOp::Expose(ports) => self.config.add_to_set("ExposedPorts", ports),
            ConfigOp::Volume(v) => self.config.add_to_set("Volumes", v),
            ConfigOp::StopSignal(s) => self.config.set_field("StopSignal", json!(s)),
            ConfigOp::Healthcheck(h) => {
                let mut o = serde_json::Map::new();
                o.insert("Test".into(), json!(h.test));
                for (k, v) in [
                    ("Interval", h.interval_ns),
                    ("Timeout", h.timeout_ns),
                    ("StartPeriod", h.start_period_ns),
                    ("StartInterval", h.start_interval_ns),
                    ("Retries", h.retries),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), json!(v));
                    }
                }
                self.config.set_field("Healthcheck", Value::Object(o));
            }
            ConfigOp::Maintainer(m) => self.config.set_author(m),
            ConfigOp::Onbuild(t) => self.config.push_onbuild(t),
        }
    }

    /// The manifest digest the image would have if the session ended now. The lifecycle names
    /// the image each Dockerfile applies to `base@<this digest>` in its `base_image` arg.
    pub fn image_digest(&self) -> Digest {
        if self.layers.is_empty() && self.config == self.base.config {
            // Nothing applied yet: the base image, by the digest it has.
            return self.base.manifest_digest.clone();
        }
        let mut config = self.config.clone();
        config.set_created(&self.created);
        let bytes = config.to_canonical_bytes();
        let layers = crate::output::layer_descriptors(&self.base, &self.layers);
        Digest::of(&crate::output::manifest_bytes(&layers, &Digest::of(&bytes), bytes.len() as u64))
    }

    /// Ends the session: the final config (with `created` set) and the new layers.
    pub fn finish(mut self) -> ExtendedImage {
        self.config.set_created(&self.created);
        if let Some(rootfs) = self.rootfs.take() {
            rootfs.finish();
        }
        if let Some(cache) = &self.opts.step_cache {
            self.hasher.save();
            if self.cache_hits + self.cache_misses > 0 {
                tracing::info!(
                    "step cache {}: {} hits, {} misses",
                    cache.describe(),
                    self.cache_hits,
                    self.cache_misses
                );
            }
            match cache.enforce_bounds() {
                Ok(Some(r)) => tracing::info!(
                    "step cache over its size bound: removed {} entries ({:.1} MB), kept {} ({:.1} MB)",
                    r.entries_removed,
                    r.bytes_freed as f64 / 1e6,
                    r.entries_kept,
                    r.bytes_kept as f64 / 1e6
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("step cache: cannot enforce its size bound: {e}"),
            }
        }
        ExtendedImage { base: self.base, config: self.config, new_layers: self.layers, layer_stores: self.layer_stores }
    }
}

/// How many paths of a COPY/ADD/WORKDIR layer the log lists.
const MAX_LISTED_PATHS: usize = 20;

/// Logs what a COPY/ADD/WORKDIR layer holds, as the step ends, so the log follows the
/// Dockerfile's order (RUN steps log their own progress while they run).
fn log_layer(report: &StepReport) {
    let (Some(layer), false) = (&report.layer, report.paths.is_empty()) else { return };
    tracing::info!(
        "{} {} -> layer {} ({} bytes)",
        report.location,
        ext_oci::escape::for_terminal(&report.text),
        layer.digest.short(),
        layer.size
    );
    for p in report.paths.iter().take(MAX_LISTED_PATHS) {
        tracing::info!("  + {}", ext_oci::escape::text(p));
    }
    let count = report.path_count.max(report.paths.len());
    if count > MAX_LISTED_PATHS {
        tracing::info!("  ... and {} more", count - MAX_LISTED_PATHS);
    }
}

/// A base layer's uncompressed tar stream, verified against its diffID at the end, decoded
/// ahead of the unpacker on a thread of its own, with unpack progress (bars on terminals only).
fn open_layer(
    store: &ext_oci::BlobStore,
    digest: &Digest,
    size: u64,
    diff_id: Digest,
) -> std::result::Result<Box<dyn std::io::Read + Send>, RootfsError> {
    let reader = store.open(digest, Some(size)).map_err(|e| RootfsError::Unsupported(e.to_string()))?;
    let progress = ext_oci::progress::Progress::bar_only("unpacked", digest.short(), Some(size));
    let reader = ext_oci::progress::ProgressReader::new(reader, progress);
    // Decoded on a thread of its own while the unpacker creates files (README, cold RUN).
    decompress_verified(reader, diff_id)
        .map(ext_oci::compression::read_ahead)
        .map_err(|e| RootfsError::Io { path: PathBuf::from(digest.as_str()), source: e })
}

fn rootfs_error(at: &Location, e: RootfsError) -> ExecError {
    ExecError::Rootfs { at: at.clone(), source: Box::new(e) }
}

/// Applies one of this session's own layer blobs to the RUN root.
fn add_blob_to_rootfs(rootfs: &mut dyn RunRoot, path: &Path, digest: &Digest) -> std::result::Result<(), RootfsError> {
    let file = std::fs::File::open(path).map_err(|e| RootfsError::Io { path: path.to_path_buf(), source: e })?;
    let mut tar = decompress(std::io::BufReader::new(file))
        .map_err(|e| RootfsError::Io { path: path.to_path_buf(), source: e })?;
    rootfs.add_layer(&mut tar, digest.as_str())?;
    Ok(())
}

/// What COPY consults about the image: the base layers' headers plus this session's layers,
/// or the live root itself.
enum SessionTree {
    Image(ImageTree),
    Live(LiveTree),
}

impl SessionTree {
    fn view(&self) -> &dyn TreeView {
        match self {
            SessionTree::Image(t) => t,
            SessionTree::Live(t) => t,
        }
    }
}
