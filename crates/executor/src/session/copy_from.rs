//! `COPY --from=IMAGE`: files out of another image. The image is opened through the same store
//! as the base (cache, auth, TLS, platform) before the first step runs; on a step cache miss
//! only the paths the COPY reads are unpacked from its layers (found from their tar headers,
//! symlinks on the way included) into a scratch directory, which is then read as that image's
//! root filesystem. Owners are kept unless `--chown` (BuildKit, moby#38599).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ext_dockerfile::{CopyOp, CopySource, Location, Op, Plan};
use ext_oci::layer::decompress_verified;
use ext_oci::{Digest, Image, ImageRef, LayerBlob};
use ext_rootfs::{PathFilter, UnpackOptions, WhiteoutMode};
use ext_stepcache::StepKey;

use super::Session;
use crate::context::BuildContext;
use crate::error::{ExecError, Result};
use crate::paths::clean_clamped;
use crate::tree::{ImageTree, Node, NodeKind, TreeView, join};

/// Unpacks of a source image are repeated at most this often to add hard-link targets the
/// first one left out (each pass adds all it found; a target is never itself a link).
const MAX_UNPACK_PASSES: usize = 3;

impl Session {
    /// Opens every image the plan's `COPY --from` names, so a missing or malformed one fails
    /// the build before any step has run.
    pub(super) fn open_copy_sources(&mut self, plan: &Plan) -> Result<()> {
        for step in &plan.steps {
            if let Op::Copy(CopyOp { from: Some(from), .. }) = &step.op {
                self.source_image(from, &step.location(&plan.file))?;
            }
        }
        Ok(())
    }

    /// The image `COPY --from=<from>` names, opened once per session.
    pub(super) fn source_image(&mut self, from: &str, at: &Location) -> Result<Image> {
        let reference =
            ImageRef::from_docker_name(from).map_err(|e| ExecError::step(at, format!("COPY --from: {e}")))?;
        let name = reference.to_string();
        if let Some(image) = self.sources.get(&name) {
            return Ok(image.clone());
        }
        let images = &self.opts.images;
        let image = ext_oci::open_image(&reference, &images.platform, &images.store)
            .map_err(|e| ExecError::step(at, format!("COPY --from={from}: {e}")))?;
        tracing::info!(
            "{at}: COPY --from={from}: {} ({}, {} layers)",
            image.name,
            image.manifest_digest.short(),
            image.layers().len()
        );
        self.sources.insert(name, image.clone());
        Ok(image)
    }

    pub(super) fn copy_from_key(
        &self,
        op: &CopyOp,
        source: &Image,
    ) -> Option<(StepKey, Vec<crate::step_key::Stamped>)> {
        self.opts.step_cache.as_ref()?;
        let key = crate::step_key::copy_from_key(
            &self.parent(),
            &self.opts.layer,
            op,
            &self.workdir(),
            &source.manifest_digest,
        );
        Some((key, Vec::new()))
    }

    /// Runs `COPY --from`: the paths it reads unpacked from `source`, then copied as from a
    /// build context that is that image's root.
    pub(super) fn copy_from(
        &mut self,
        op: &CopyOp,
        at: &Location,
        source: &Image,
    ) -> Result<Option<(LayerBlob, Vec<String>)>> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            // The files are unpacked with their owners, which needs root.
            return Err(ExecError::step(
                at,
                format!("COPY --from={}: unpacking files of another image needs root", source.name),
            ));
        }
        let dir = self.opts.scratch.join(format!("from-{}", self.copies));
        let started = std::time::Instant::now();
        let unpacked = unpack_sources(source, op, &dir, self.opts.cache_dir.as_deref(), at);
        let copied = unpacked.and_then(|entries| {
            tracing::debug!(
                "{at}: unpacked {entries} entries of {} in {:.2}s",
                source.name,
                started.elapsed().as_secs_f64()
            );
            let context = BuildContext::open_image_root(&dir, &source.name)?;
            self.copy_with(op, at, &context, true, &[])
        });
        let _ = std::fs::remove_dir_all(&dir);
        copied
    }
}

/// Unpacks what `op` reads of `image` into `dir` (made fresh); returns the entries applied.
fn unpack_sources(image: &Image, op: &CopyOp, dir: &Path, cache: Option<&Path>, at: &Location) -> Result<u64> {
    let tree = ImageTree::from_image(image, cache)?;
    let mut filter = source_filter(op, &tree);
    for _ in 0..MAX_UNPACK_PASSES {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(ExecError::io(dir))?;
        let opts = UnpackOptions {
            whiteouts: WhiteoutMode::Apply,
            layer_name: String::new(),
            filter: Some(Arc::new(filter.clone())),
        };
        let mut entries = 0;
        let mut left_out = Vec::new();
        for (i, desc) in image.layers().iter().enumerate() {
            let digest = Digest::try_from(desc.digest())?;
            let diff_id = image.diff_id(i)?;
            let reader = image.store.open(&digest, Some(desc.size()))?;
            let tar = decompress_verified(reader, diff_id).map_err(|e| image.store.read_error(&digest, e))?;
            let opts = UnpackOptions { layer_name: format!("{} of {}", digest, image.name), ..opts.clone() };
            let stats = ext_rootfs::unpack_layer(dir, tar, &opts)
                .map_err(|e| ExecError::step(at, format!("COPY --from={}: {e}", image.name)))?;
            entries += stats.entries;
            left_out.extend(stats.left_out_link_targets);
        }
        if left_out.is_empty() {
            return Ok(entries);
        }
        tracing::debug!("{at}: {} hard-link targets to add from {}; unpacking again", left_out.len(), image.name);
        for target in left_out {
            filter.add_exact(target);
        }
    }
    Err(ExecError::step(at, format!("COPY --from={}: hard links still lead out of what was unpacked", image.name)))
}

/// The paths of the source image `op` can read: each source's literal prefix (the part before
/// its first wildcard, a `--parents` pivot read through) resolved through the image's
/// symlinks, every path on the way kept too; for a wildcard, the targets of the symlinks it
/// may match.
fn source_filter(op: &CopyOp, tree: &ImageTree) -> PathFilter {
    let mut roots: Vec<String> = Vec::new();
    let mut exact: Vec<String> = Vec::new();
    for source in &op.sources {
        let CopySource::Path(p) = source else { continue };
        let cleaned = clean_clamped(p);
        let components: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
        let literal = components.iter().position(|c| c.contains(['*', '?', '['])).unwrap_or(components.len());
        let prefix = resolve_visiting(tree, &components[..literal].join("/"), &mut exact);
        let depth = components.len() - literal;
        if depth > 0 {
            // A wildcard's match is followed if it is a symlink; what it leads to is read.
            let skip = if prefix.is_empty() { 0 } else { prefix.len() + 1 };
            let links: Vec<String> = tree
                .below(&prefix)
                .filter(|(path, node)| {
                    matches!(node.kind, NodeKind::Symlink(_)) && path[skip..].matches('/').count() + 1 == depth
                })
                .map(|(path, _)| path.clone())
                .collect();
            for link in links {
                let target = resolve_visiting(tree, &link, &mut exact);
                roots.push(target);
            }
        }
        roots.push(prefix);
    }
    PathFilter::new(roots.into_iter().map(PathBuf::from), exact.into_iter().map(PathBuf::from))
}

/// Resolves `path` through the tree's symlinks (as [`TreeView::resolve`] does, the last
/// component followed), recording each path it looks at.
fn resolve_visiting(tree: &ImageTree, path: &str, visited: &mut Vec<String>) -> String {
    const MAX_HOPS: usize = 40;
    let mut resolved = String::new();
    let mut pending: Vec<String> =
        path.split('/').filter(|c| !c.is_empty() && *c != ".").rev().map(String::from).collect();
    let mut hops = 0;
    while let Some(c) = pending.pop() {
        if c == ".." {
            resolved = resolved.rsplit_once('/').map_or("", |(d, _)| d).to_string();
            continue;
        }
        let candidate = join(&resolved, &c);
        visited.push(candidate.clone());
        match tree.node(&candidate) {
            Some(Node { kind: NodeKind::Symlink(target), .. }) if hops < MAX_HOPS => {
                hops += 1;
                if target.starts_with('/') {
                    resolved.clear();
                }
                pending.extend(target.split('/').filter(|c| !c.is_empty() && *c != ".").rev().map(String::from));
            }
            _ => resolved = candidate,
        }
    }
    resolved
}
