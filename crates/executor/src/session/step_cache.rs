//! The session's use of the step cache: each COPY/ADD, RUN and WORKDIR is looked up by its key
//! before it runs; a hit joins the image as if the step had written its layer, a miss runs the
//! step and stores what it made.

use ext_dockerfile::{Location, RunOp};
use ext_oci::{Digest, LayerBlob};
use ext_stepcache::{CachedLayer, Hit, Miss, StepKey, StepOutcome};

use super::{RunExecutor, Session, SessionTree, StepReport, add_blob_to_rootfs, rootfs_error};
use crate::context::BuildContext;
use crate::error::{ExecError, Result};
use crate::step_key::{self, RunInputs, Stamped};

impl Session {
    /// The image this session has made so far, as step cache keys name it.
    pub(super) fn parent(&self) -> Digest {
        step_key::parent_digest(&self.base.manifest_digest, &self.layers)
    }

    pub(super) fn workdir_key(&self, dir: &str) -> Option<(StepKey, Vec<Stamped>)> {
        self.opts.step_cache.as_ref()?;
        let layer = step_key::layer_format(&self.opts.layer);
        Some((step_key::workdir_key(&self.parent(), &layer, dir, self.config.user()), Vec::new()))
    }

    pub(super) fn copy_key(
        &mut self,
        op: &ext_dockerfile::CopyOp,
        context: &BuildContext,
        downloads: &[crate::copy::Downloaded],
    ) -> Option<(StepKey, Vec<Stamped>)> {
        self.opts.step_cache.as_ref()?;
        let parent = self.parent();
        step_key::copy_key(&parent, &self.opts.layer, op, &self.workdir(), context, downloads, &mut self.hasher)
    }

    pub(super) fn run_key(&mut self, op: &RunOp, context: &BuildContext) -> Option<(StepKey, Vec<Stamped>)> {
        self.opts.step_cache.as_ref()?;
        let (mounts, stamps) = self.mount_key_parts(op, context)?;
        let inputs = RunInputs {
            mounts: &mounts,
            op,
            env: &self.config.env(),
            user: self.config.user(),
            workdir: &self.workdir(),
            shell: &self.config.shell(),
            executor: match self.opts.executor {
                RunExecutor::Sandbox => "sandbox",
                RunExecutor::LiveRoot(_) => "live root",
            },
            ignore_paths: &self.opts.ignore_paths,
        };
        Some((step_key::run_key(&self.parent(), &step_key::layer_format(&self.opts.layer), &inputs), stamps))
    }

    /// What a RUN's mounts put into its key: each mount's settings and, for a bind mount, the
    /// content of what it binds (hashed as a COPY of it would be). Not in it: what a cache or
    /// tmpfs holds, and secrets (BuildKit keys them the same way).
    fn mount_key_parts(&mut self, op: &RunOp, context: &BuildContext) -> Option<(Vec<String>, Vec<Stamped>)> {
        let mut parts = Vec::with_capacity(op.mounts.len());
        let mut stamps = Vec::new();
        let workdir = self.workdir();
        for m in &op.mounts {
            let target = m.target.as_deref().map(|t| crate::run_mounts::absolute_target(t, &workdir));
            let mut part = format!("{} target={target:?} ro={}", m.kind.type_name(), m.readonly);
            match &m.kind {
                ext_dockerfile::MountKind::Bind { source } => {
                    let copy = ext_dockerfile::CopyOp {
                        add: false,
                        sources: vec![ext_dockerfile::CopySource::Path(if source.is_empty() {
                            ".".into()
                        } else {
                            source.clone()
                        })],
                        dest: "/".into(),
                        ..Default::default()
                    };
                    let parent = Digest::of(b"bind mount");
                    let (key, s) =
                        step_key::copy_key(&parent, &self.opts.layer, &copy, "/", context, &[], &mut self.hasher)?;
                    part.push_str(&format!(" source={source:?} content={}", key.digest()));
                    stamps.extend(s);
                }
                other => part.push_str(&format!(" {other:?}")),
            }
            parts.push(part);
        }
        Some((parts, stamps))
    }

    /// Runs a step that makes a layer through the step cache: a hit reuses the stored layer
    /// without running anything; a miss runs the step (`run`) and stores what it made.
    pub(super) fn cached_step(
        &mut self,
        key: Option<(StepKey, Vec<Stamped>)>,
        report: &mut StepReport,
        run: impl FnOnce(&mut Self) -> Result<Option<(LayerBlob, Vec<String>)>>,
    ) -> Result<()> {
        let (at, text) = (report.location.clone(), report.text.clone());
        let (Some(cache), Some((key, stamps))) = (self.opts.step_cache.clone(), key) else {
            let made = run(self)?;
            report.set(made);
            return Ok(());
        };
        match cache.lookup(&key).and_then(usable) {
            Ok(hit) => {
                let layer = match &hit.entry.outcome.layer {
                    Some(l) => format!("layer {} ({} bytes)", l.digest.short(), l.size),
                    None => "no layer".into(),
                };
                tracing::info!("{at} {text}: step cache hit ({}, key {}): {layer}", hit.store, key.digest().short());
                self.cache_hits += 1;
                let made = self.apply_hit(&hit, &at)?;
                report.set(made);
                report.path_count = hit.entry.outcome.path_count as usize;
                report.cached = Some(hit.store);
            }
            Err(miss) => {
                tracing::info!("{at} {text}: step cache miss ({}; key {})", describe_miss(&miss), key.digest().short());
                self.cache_misses += 1;
                let made = run(self)?;
                if stamps.iter().all(Stamped::unchanged) {
                    let (layer, paths) = match &made {
                        Some((l, paths)) => (Some(cached_layer(l)), paths.as_slice()),
                        None => (None, &[][..]),
                    };
                    cache.store(&key, StepOutcome::new(layer, paths), made.as_ref().map(|(l, _)| l.path.as_path()));
                } else {
                    tracing::warn!("{at}: a source file changed while the step ran; its result is not cached");
                }
                report.set(made);
            }
        }
        Ok(())
    }

    /// Makes a cached layer part of the image, as if the step had written it: the blob joins
    /// the new layers, and whatever already exists of the image (the COPY metadata tree, the
    /// RUN root; always the live root) gets its files. A scratch rootfs not made yet is not
    /// made for it: it will be unpacked with this layer if a later step needs it.
    fn apply_hit(&mut self, hit: &Hit, at: &Location) -> Result<Option<(LayerBlob, Vec<String>)>> {
        let (Some(cached), Some(path)) = (&hit.entry.outcome.layer, &hit.layer_path) else { return Ok(None) };
        std::fs::create_dir_all(&self.blob_dir).map_err(ExecError::io(&self.blob_dir))?;
        let dest = self.blob_dir.join(cached.digest.hex());
        ext_stepcache::local::link_or_copy(path, &dest).map_err(|e| ExecError::step(at, format!("step cache: {e}")))?;
        let blob = LayerBlob {
            digest: cached.digest.clone(),
            diff_id: cached.diff_id.clone(),
            size: cached.size,
            uncompressed_size: cached.uncompressed_size,
            media_type: ext_stepcache::known_layer_type(&cached.media_type).expect("checked by usable()"),
            path: dest,
            entries: cached.entries,
        };
        if self.is_live() {
            // Later steps and the build phase must see the files on the live root.
            self.rootfs(at)?;
        }
        if let Some(SessionTree::Image(tree)) = &mut self.tree {
            tree.apply_blob(&blob.path, &blob.digest)?;
        }
        if let Some(rootfs) = &mut self.rootfs {
            add_blob_to_rootfs(rootfs.as_mut(), &blob.path, &blob.digest).map_err(|e| rootfs_error(at, e))?;
        }
        if let Some(origin) = &hit.origin {
            self.layer_stores.insert(blob.digest.clone(), origin.clone());
        }
        self.layers.push(blob.clone());
        Ok(Some((blob, hit.entry.outcome.paths.clone())))
    }
}

impl StepReport {
    pub(super) fn set(&mut self, made: Option<(LayerBlob, Vec<String>)>) {
        if let Some((layer, paths)) = made {
            self.layer = Some(layer);
            self.path_count = paths.len();
            self.paths = paths;
        }
    }
}

/// A hit is usable if its layer's media type is one a layer blob can have.
fn usable(hit: Hit) -> std::result::Result<Hit, Miss> {
    match &hit.entry.outcome.layer {
        Some(l) if ext_stepcache::known_layer_type(&l.media_type).is_none() => {
            Err(Miss::Unusable(format!("its layer has the unknown media type {}", l.media_type)))
        }
        _ => Ok(hit),
    }
}

fn cached_layer(l: &LayerBlob) -> CachedLayer {
    CachedLayer {
        digest: l.digest.clone(),
        diff_id: l.diff_id.clone(),
        size: l.size,
        uncompressed_size: l.uncompressed_size,
        media_type: l.media_type.to_string(),
        entries: l.entries,
    }
}

/// Why a step missed, for its log line.
fn describe_miss(miss: &Miss) -> String {
    match miss {
        Miss::Disabled => "--no-cache".into(),
        Miss::Expired { age, ttl } => format!(
            "expired: the entry is {} old, the TTL is {}",
            ext_stepcache::units::human_duration(*age),
            ext_stepcache::units::human_duration(*ttl)
        ),
        Miss::Changed(names) => {
            let names: Vec<&str> = names.iter().map(|n| component_name(n)).collect();
            format!("changed: {}", names.join(", "))
        }
        Miss::NewParent => {
            "nothing cached on top of this image yet: a new base, an earlier step changed, or a first build".into()
        }
        Miss::Unusable(why) => format!("the entry was unusable: {why}"),
    }
}

/// What each key component is, in the user's words.
fn component_name(name: &str) -> &str {
    match name {
        "instruction" => "the instruction",
        "sources" => "the COPY/ADD source files",
        "env" => "ENV",
        "args" => "the build args in scope",
        "user" => "USER",
        "workdir" => "WORKDIR",
        "shell" => "SHELL",
        "network" => "--network",
        "executor" => "the RUN executor (sandbox or live root)",
        "ignore" => "the ignored paths",
        "layer" => "the layer format (compression, SOURCE_DATE_EPOCH)",
        "format" => "the ext-extend version",
        other => other,
    }
}
