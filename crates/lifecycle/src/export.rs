//! The export phase: the app image = the (extended) run image + one app layer + the launch
//! layers buildpacks made. Extension layers (`[types] extension = true`) and generated build
//! contexts are never exported; the layers the extender wrote are reused byte for byte (no
//! gunzip, re-tar or re-hash, unlike the lifecycle's exporter).

use std::fs;
use std::path::{Path, PathBuf};

use ext_executor::{ExtendedImage, OutputTarget, WrittenImage};
use ext_oci::{
    Digest, HistoryEntry, ImageRef, LayerBlob, LayerOptions, LayerWriter, OciLayout, Platform, StoreOptions,
};
use ext_rootfs::{Change, Snapshot};
use serde_json::{Map, Value, json};

use crate::error::{LifecycleError, Result};
use crate::extend::{REBASABLE_LABEL, image_ref};
use crate::files::{self, Analyzed, Group, LayerMetadata, escape_id};

pub const LIFECYCLE_METADATA_LABEL: &str = "io.buildpacks.lifecycle.metadata";

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub analyzed: PathBuf,
    pub app: PathBuf,
    pub layers: PathBuf,
    pub group: PathBuf,
    pub extended: PathBuf,
    pub output: ImageRef,
    pub store: StoreOptions,
    pub target_platform: Platform,
    pub layer: LayerOptions,
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub written: WrittenImage,
    pub extension_layers: usize,
    /// `<buildpack id>/<layer name>` of every exported launch layer.
    pub launch_layers: Vec<String>,
    /// Layers skipped because they are extension layers.
    pub skipped_extension_layers: Vec<String>,
}

/// Files in a buildpack's layers dir that are not layer metadata.
const NOT_LAYERS: &[&str] = &["launch", "build", "store"];

pub fn export(opts: &ExportOptions) -> Result<ExportReport> {
    let analyzed = Analyzed::read(&opts.analyzed)?;
    let reference = analyzed
        .run_image_reference()
        .or(analyzed.run_image_name())
        .ok_or_else(|| LifecycleError::file(&opts.analyzed, "no run-image to export onto"))?
        .to_string();
    let base = ext_oci::open_image(&image_ref(&reference)?, &opts.target_platform, &opts.store)?;
    let base_diff_ids = base.config.diff_ids();
    let top_layer = base_diff_ids.last().cloned().unwrap_or_default();

    let (mut config, mut new_layers, rebasable) = if analyzed.run_image_extend() {
        let (config, layers) = extended_run_image(opts, &base)?;
        let rebasable = config.labels().get(REBASABLE_LABEL).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        (config, layers, rebasable)
    } else {
        (base.config.clone(), Vec::new(), false)
    };
    let extension_layers = new_layers.len();
    tracing::info!(
        "exporting onto {} ({} run image layers, {} extension layers)",
        base.name,
        base.layers().len(),
        extension_layers
    );

    let target = OutputTarget::begin(&opts.output, &opts.store)?;
    let blob_dir = target.blob_dir();
    let created = ext_oci::layer::rfc3339(opts.layer.mtime.created_seconds());

    // Buildpack launch layers, in group order.
    let group: Group = files::read_toml(&opts.group)?;
    let mut buildpacks_meta = Vec::new();
    let mut launch_layers = Vec::new();
    let mut skipped = Vec::new();
    for bp in &group.group {
        let dir = opts.layers.join(escape_id(&bp.id));
        let mut layers_meta = Map::new();
        for (name, meta) in layer_tomls(&dir)? {
            if meta.types.extension {
                tracing::warn!("{}/{name} is an extension layer: not exported", bp.id);
                skipped.push(format!("{}/{name}", bp.id));
                continue;
            }
            let layer_dir = dir.join(&name);
            if !meta.types.launch || !layer_dir.is_dir() {
                continue;
            }
            let blob = write_dir_layer(&layer_dir, &blob_dir, opts.layer)?;
            tracing::info!("launch layer {}/{name}: {} ({} bytes)", bp.id, blob.digest.short(), blob.size);
            let mut entry = Map::new();
            entry.insert("sha".into(), json!(blob.diff_id.to_string()));
            entry.insert(
                "data".into(),
                serde_json::to_value(meta.metadata.clone().unwrap_or_default()).unwrap_or(json!({})),
            );
            entry.insert("launch".into(), json!(true));
            entry.insert("build".into(), json!(meta.types.build));
            entry.insert("cache".into(), json!(meta.types.cache));
            layers_meta.insert(name.clone(), Value::Object(entry));
            config.push_layer(
                &blob.diff_id,
                &created,
                HistoryEntry { created_by: format!("Buildpack Layer: {}", bp.id), ..Default::default() },
            );
            launch_layers.push(format!("{}/{name}", bp.id));
            new_layers.push(blob);
        }
        buildpacks_meta.push(json!({"key": bp.id, "version": bp.version, "layers": layers_meta}));
    }

    // The application directory, at its own path.
    let app_blob = write_dir_layer(&opts.app, &blob_dir, opts.layer)?;
    tracing::info!("app layer: {} ({} bytes)", app_blob.digest.short(), app_blob.size);
    config.push_layer(
        &app_blob.diff_id,
        &created,
        HistoryEntry { created_by: "Application Layer".into(), ..Default::default() },
    );
    let app_diff_id = app_blob.diff_id.to_string();
    new_layers.push(app_blob);

    let app = opts.app.display().to_string();
    let layers_dir = opts.layers.display().to_string();
    config.set_working_dir(&app);
    config.set_env("CNB_LAYERS_DIR", &layers_dir);
    config.set_env("CNB_APP_DIR", &app);
    let path = config.env().into_iter().find(|(k, _)| k == "PATH").map(|(_, v)| v).unwrap_or_default();
    if !path.split(':').any(|p| p == "/cnb/process") {
        config.set_env(
            "PATH",
            &if path.is_empty() { "/cnb/process".to_string() } else { format!("/cnb/process:{path}") },
        );
    }
    let metadata = json!({
        "app": [{"sha": app_diff_id}],
        "buildpacks": buildpacks_meta,
        "runImage": {
            "image": analyzed.run_image_name().unwrap_or(&reference),
            "reference": format!("{}@{}", reference.split('@').next().unwrap_or(&reference), base.manifest_digest),
            "topLayer": top_layer,
        },
    });
    config.set_label(LIFECYCLE_METADATA_LABEL, &serde_json::to_string(&metadata).expect("JSON serializes"));
    // Spec: true only if extensions extended the run image and said it is rebasable.
    config.set_label(REBASABLE_LABEL, if rebasable { "true" } else { "false" });
    config.set_created(&created);

    let image = ExtendedImage { base, config, new_layers, layer_stores: Default::default() };
    let written = image.write(target, &opts.store)?;
    Ok(ExportReport { written, extension_layers, launch_layers, skipped_extension_layers: skipped })
}

/// The single image under `<extended>/run`: its config, and its layers above the run image's.
fn extended_run_image(opts: &ExportOptions, base: &ext_oci::Image) -> Result<(ext_oci::ImageConfig, Vec<LayerBlob>)> {
    let run_dir = opts.extended.join("run");
    let dirs: Vec<PathBuf> = fs::read_dir(&run_dir)
        .map_err(|_| {
            LifecycleError::file(&run_dir, "missing extended run image (analyzed.toml says run-image.extend = true)")
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("oci-layout").is_file())
        .collect();
    let [dir] = dirs.as_slice() else {
        return Err(LifecycleError::file(
            &run_dir,
            format!("expected exactly one extended run image, found {}", dirs.len()),
        ));
    };
    let layout = OciLayout::open(dir)?;
    let image = layout.resolve(None, &opts.target_platform)?;
    let base_digests = base.layer_digests()?;
    let digests = image.layer_digests()?;
    if digests.len() < base_digests.len() || digests[..base_digests.len()] != base_digests[..] {
        return Err(LifecycleError::file(
            dir,
            format!("the extended run image was not built on {} (its base layers differ)", base.name),
        ));
    }
    let diff_ids = image.config.diff_ids();
    let mut layers = Vec::new();
    for (i, (desc, digest)) in image.layers().iter().zip(&digests).enumerate().skip(base_digests.len()) {
        let path = layout.store().blob_path(digest);
        if !path.is_file() {
            return Err(LifecycleError::file(dir, format!("extension layer {digest} is missing")));
        }
        let diff_id: Digest = diff_ids
            .get(i)
            .ok_or_else(|| LifecycleError::file(dir, "config has fewer diff_ids than layers"))?
            .parse()?;
        // The extend phase may have written zstd layers (`--compression zstd`): keep the type.
        let media_type = ext_oci::media::known_layer_type(desc.media_type().as_ref()).ok_or_else(|| {
            LifecycleError::file(dir, format!("extension layer {digest} has media type {}", desc.media_type()))
        })?;
        layers.push(LayerBlob {
            digest: digest.clone(),
            diff_id,
            size: desc.size(),
            uncompressed_size: 0,
            media_type,
            path,
            entries: 0,
        });
    }
    Ok((image.config, layers))
}

/// `<name>.toml` files of a buildpack's layers dir, sorted by name.
fn layer_tomls(dir: &Path) -> Result<Vec<(String, LayerMetadata)>> {
    let Ok(entries) = fs::read_dir(dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".toml") else { continue };
        if NOT_LAYERS.contains(&stem) || !e.path().is_file() {
            continue;
        }
        out.push((stem.to_string(), files::read_toml(&e.path())?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A directory as one layer at its own absolute path (with its parent directories).
fn write_dir_layer(dir: &Path, blob_dir: &Path, opts: LayerOptions) -> Result<LayerBlob> {
    let dir = fs::canonicalize(dir).map_err(LifecycleError::io(dir))?;
    let rel_root = dir.strip_prefix("/").expect("canonical paths are absolute").to_string_lossy().into_owned();
    let mut changes: Vec<String> = Vec::new();
    let mut acc = String::new();
    for c in rel_root.split('/').filter(|c| !c.is_empty()) {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(c);
        changes.push(acc.clone());
    }
    for e in walkdir::WalkDir::new(&dir).follow_links(false).min_depth(1) {
        let e = e.map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let rel = e.path().strip_prefix("/").expect("absolute").to_string_lossy().into_owned();
        changes.push(rel);
    }
    changes.sort();
    let snapshot = Snapshot { source: PathBuf::from("/"), changes: changes.into_iter().map(Change::Upsert).collect() };
    let mut writer = LayerWriter::create(blob_dir, opts).map_err(LifecycleError::io(blob_dir))?;
    ext_rootfs::write_snapshot(&snapshot, &mut writer).map_err(LifecycleError::io(&dir))?;
    writer.finish().map_err(LifecycleError::io(blob_dir))
}
