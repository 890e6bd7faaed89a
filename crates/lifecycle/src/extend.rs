//! The extend phase without Kaniko: every extension's `<kind>.Dockerfile` applied in group
//! order, in ONE executor session (the rootfs is unpacked once, only if a RUN needs it), on the
//! image `<analyzed>` names. For `run`, the result goes to `<extended>/run/<digest>/` as the
//! sparse OCI layout the exporter reads (manifest, config, and only the new layers).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ext_dockerfile::{Dockerfile, Op};
use ext_executor::session::RunExecutor;
use ext_executor::{BuildContext, OutputTarget, Provenance, Session, SessionOptions, WrittenImage};
use ext_oci::{Image, ImageRef, LayerOptions, LayoutWriter, OciLayout, Platform, StoreOptions};
use ext_rootfs::SnapshotMode;
use serde_json::Value;

use crate::error::{LifecycleError, Result};
use crate::extension_layer::ExtensionLayer;
use crate::files::{self, Analyzed, ExtendConfig, Group, escape_id};

pub const REBASABLE_LABEL: &str = "io.buildpacks.rebasable";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Build,
    Run,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Build => "build",
            Kind::Run => "run",
        }
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "build" => Ok(Kind::Build),
            "run" => Ok(Kind::Run),
            other => Err(format!("kind `{other}`: expected build or run")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExtendOptions {
    pub analyzed: PathBuf,
    pub app: PathBuf,
    pub extended: PathBuf,
    pub generated: PathBuf,
    pub group: PathBuf,
    pub kind: Kind,
    pub layers: PathBuf,
    pub platform: PathBuf,
    /// Also write the full extended image here.
    pub output: Option<ImageRef>,
    pub store: StoreOptions,
    pub target_platform: Platform,
    pub layer: LayerOptions,
    pub snapshot: SnapshotMode,
    pub scratch_dir: Option<PathBuf>,
    /// Where RUN happens: a sandbox on a scratch rootfs, or the live root of the container we
    /// run in (how platforms run the extender).
    pub executor: RunExecutor,
    /// The lifecycle's Kaniko directory: the restorer saves the base image's manifest and
    /// config in `<kaniko-dir>/cache/base/<digest>/`, which we read instead of the registry.
    pub kaniko_dir: Option<PathBuf>,
    /// The step cache (the lifecycle runs Kaniko with its layer cache on).
    pub step_cache: Option<std::sync::Arc<ext_stepcache::StepCache>>,
    /// `-q`: RUN output is kept and shown only when a command fails.
    pub quiet: bool,
    /// Secrets and SSH agents for `RUN --mount=type=secret|ssh`.
    pub mount_sources: ext_executor::run_mounts::MountSources,
}

#[derive(Debug, Clone)]
pub struct ExtendReport {
    /// Extensions whose Dockerfile was applied, in order.
    pub applied: Vec<String>,
    pub rebasable: bool,
    /// `<extended>/<kind>/<digest>/`, if anything was applied.
    pub layout: Option<PathBuf>,
    pub written: Option<WrittenImage>,
    pub output: Option<WrittenImage>,
    pub new_layers: usize,
    /// The extended image's `Env` (the build phase that follows `--kind build` runs with it).
    pub env: Vec<(String, String)>,
}

/// One Dockerfile to apply.
struct Job {
    id: String,
    dockerfile: PathBuf,
    config: Option<PathBuf>,
    context: PathBuf,
}

/// Converts an `analyzed.toml` reference to ours: `oci:`/`docker://` as given; a lifecycle
/// registry reference (`host/repo@sha256:...`, `repo:tag`) becomes `docker://`.
pub fn image_ref(reference: &str) -> std::result::Result<ImageRef, ext_oci::OciError> {
    if reference.starts_with("oci:") || reference.starts_with("docker://") {
        return reference.parse();
    }
    let first = reference.split('/').next().unwrap_or("");
    let has_host = reference.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let full = if has_host {
        reference.to_string()
    } else if reference.contains('/') {
        format!("index.docker.io/{reference}")
    } else {
        format!("index.docker.io/library/{reference}")
    };
    format!("docker://{full}").parse()
}

pub fn extend(opts: &ExtendOptions) -> Result<ExtendReport> {
    let analyzed = Analyzed::read(&opts.analyzed)?;
    let reference = match opts.kind {
        Kind::Run => analyzed.run_image_reference().or(analyzed.run_image_name()),
        Kind::Build => analyzed.build_image_reference(),
    }
    .ok_or_else(|| LifecycleError::file(&opts.analyzed, format!("no {}-image reference to extend", opts.kind.name())))?
    .to_string();
    let group: Group = files::read_toml(&opts.group)?;
    let jobs = find_dockerfiles(opts, &group)?;
    if jobs.is_empty() {
        tracing::info!("no {}.Dockerfile to apply", opts.kind.name());
        return Ok(ExtendReport {
            applied: vec![],
            rebasable: true,
            layout: None,
            written: None,
            output: None,
            new_layers: 0,
            env: Vec::new(),
        });
    }

    // Parse and validate everything first: a bad Dockerfile fails before any image work.
    let mut parsed = Vec::new();
    for job in &jobs {
        // An extension's output: a symlink to a host file or a FIFO is refused, not read.
        let text = ext_executor::special_file::read_text(
            &job.dockerfile,
            ext_executor::special_file::Symlinks::Refuse,
            ext_executor::special_file::MAX_DOCKERFILE,
        )
        .map_err(LifecycleError::io(&job.dockerfile))?;
        let df = Dockerfile::parse(&text, &job.dockerfile.display().to_string())
            .map_err(|e| LifecycleError::Extension { id: job.id.clone(), message: e.to_string() })?;
        for w in &df.warnings {
            tracing::warn!("extension {}: {w}", job.id);
        }
        if let Some(note) = df.syntax_note() {
            tracing::debug!("extension {}: {note}", job.id);
        }
        if opts.kind == Kind::Build {
            validate_build_dockerfile(&job.id, &job.dockerfile, &df)?;
        }
        let extra = match &job.config {
            Some(p) => {
                let c = ExtendConfig::read(p)?;
                match opts.kind {
                    Kind::Build => c.build.args,
                    Kind::Run => c.run.args,
                }
            }
            None => Vec::new(),
        };
        parsed.push((df, extra));
    }

    let base = open_base(opts, &reference)?;
    tracing::info!("extending {} image {} ({} layers)", opts.kind.name(), base.name, base.layers().len());
    let base_layer_count = base.layers().len();
    let base_history_len = base.config.history().len();

    fs::create_dir_all(&opts.extended).map_err(LifecycleError::io(&opts.extended))?;
    let blobs = tempfile::Builder::new()
        .prefix(".ext-extend-staging-")
        .tempdir_in(&opts.extended)
        .map_err(LifecycleError::io(&opts.extended))?;
    let _blobs_cleanup = ext_oci::cleanup::register_path(blobs.path());
    let scratch = ext_rootfs::Scratch::create(opts.scratch_dir.as_deref()).map_err(LifecycleError::io("scratch"))?;
    let live = matches!(opts.executor, RunExecutor::LiveRoot(_));
    let mut ignore_paths: Vec<String> =
        [&opts.app, &opts.layers, &opts.platform].iter().map(|p| p.display().to_string()).collect();
    if live {
        // The container also holds the lifecycle and Kaniko's directory: neither is the image.
        ignore_paths.push("/cnb".into());
        ignore_paths.extend(opts.kaniko_dir.iter().map(|k| k.display().to_string()));
        ignore_paths.push(opts.extended.display().to_string());
    }
    let session_opts = SessionOptions {
        layer: opts.layer,
        snapshot: opts.snapshot,
        ignore_paths,
        cache_dir: Some(opts.store.cache_dir()),
        executor: opts.executor.clone(),
        step_cache: opts.step_cache.clone(),
        quiet: opts.quiet,
        mount_sources: opts.mount_sources.clone(),
        images: ext_executor::ImageSources { store: opts.store.clone(), platform: opts.target_platform.clone() },
        ..SessionOptions::new(scratch.path())
    };
    let mut session = Session::new(base, blobs.path(), session_opts);
    let target = crate::files::Analyzed::target(&analyzed);
    let mut rebasable = true;
    let mut applied = Vec::new();
    for (job, (df, extra)) in jobs.iter().zip(&parsed) {
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        args.insert("build_id".into(), uuid::Uuid::new_v4().to_string());
        let user = session.config().user().to_string();
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u.to_string(), g.to_string()),
            None => (user.clone(), String::new()),
        };
        args.insert("user_id".into(), uid);
        args.insert("group_id".into(), gid);
        for (k, v) in crate::generate::target_env(&target) {
            args.insert(k.to_string(), v);
        }
        for a in extra {
            args.insert(a.name.clone(), a.value.clone());
        }
        // Last, as the lifecycle appends it after extend-config.toml's args: the image this
        // Dockerfile applies to, the previous Dockerfile's result from the second one on.
        args.insert("base_image".into(), format!("base@{}", session.image_digest()));
        let context = BuildContext::open(&job.context)?;
        tracing::info!(
            "extension {}: applying {} (context {})",
            job.id,
            job.dockerfile.display(),
            job.context.display()
        );
        // The FROM of a switching run.Dockerfile named the image generate selected, which is
        // the image we are extending: every Dockerfile applies to the current image.
        let plan = df
            .plan(&args, &session.config().env())
            .map_err(|e| LifecycleError::Extension { id: job.id.clone(), message: e.to_string() })?;
        session
            .run_checks(df, &plan, &args)
            .map_err(|source| LifecycleError::Apply { id: job.id.clone(), source: Box::new(source) })?;
        session
            .apply_plan(&plan, &context, &Provenance::Extension(job.id.clone()))
            .map_err(|source| LifecycleError::Apply { id: job.id.clone(), source: Box::new(source) })?;
        if opts.kind == Kind::Run {
            let says_rebasable = plan.steps.iter().rev().find_map(|s| match &s.op {
                Op::Label(pairs) => pairs.iter().rev().find(|(k, _)| k == REBASABLE_LABEL).map(|(_, v)| v.clone()),
                _ => None,
            });
            rebasable &= says_rebasable.as_deref().map(str::trim).is_some_and(|v| v.eq_ignore_ascii_case("true"));
            session.config_mut().set_label(REBASABLE_LABEL, if rebasable { "true" } else { "false" });
            let u = session.config().user().to_string();
            if is_root(&u) {
                tracing::warn!(
                    "extension {}: the user is root after its run.Dockerfile ({u:?}); it must not be the final user",
                    job.id
                );
            }
        }
        applied.push(job.id.clone());
    }

    if opts.kind == Kind::Run {
        let user = session.config().user().to_string();
        if is_root(&user) {
            return Err(LifecycleError::Invalid(format!(
                "the final user ID of the extended run image is {} (root); add `USER ${{user_id}}:${{group_id}}` at the end of a run.Dockerfile (or another extension that resets the user to non-root)",
                if user.is_empty() { "unset" } else { &user }
            )));
        }
    }
    let mut image = session.finish();
    cnb_history(&mut image.config, base_layer_count, base_history_len);
    let new_layers = image.new_layers.len();
    let env = image.config.env();
    if live && opts.kind == Kind::Build {
        // As with the lifecycle, the extended build image lives on only as the container's
        // filesystem, where the build phase runs next; its base layers are not here to write.
        tracing::info!("extended the build image in place ({new_layers} new layers)");
        return Ok(ExtendReport { applied, rebasable, layout: None, written: None, output: None, new_layers, env });
    }

    // <extended>/<kind>/<manifest digest>/ (`sha256:<hex>`, as the lifecycle names it): one
    // image, replacing any earlier one (including one named the old way, `sha256_<hex>`).
    let kind_dir = opts.extended.join(opts.kind.name());
    let config_bytes = image.config_bytes()?;
    let manifest = image.manifest_bytes(&ext_oci::Digest::of(&config_bytes), config_bytes.len() as u64);
    let digest = ext_oci::Digest::of(&manifest);
    let layout_dir = kind_dir.join(digest.to_string());
    if layout_dir.exists() {
        fs::remove_dir_all(&layout_dir).map_err(LifecycleError::io(&layout_dir))?;
    }
    let writer = LayoutWriter::begin(&layout_dir)?;
    let written = match opts.kind {
        // The exporter takes base layers from the run image itself.
        Kind::Run => image.write_layout_sparse(writer, "latest")?,
        Kind::Build => image.write_layout(writer, "latest")?,
    };
    for e in fs::read_dir(&kind_dir).map_err(LifecycleError::io(&kind_dir))?.flatten() {
        if e.path() != layout_dir {
            let _ = if e.path().is_dir() { fs::remove_dir_all(e.path()) } else { fs::remove_file(e.path()) };
        }
    }
    tracing::info!("wrote {} ({} new layers, rebasable={rebasable})", layout_dir.display(), new_layers);
    let output = match &opts.output {
        Some(r) => {
            let target = OutputTarget::begin(r, &opts.store)?;
            Some(image.write(target, &opts.store)?)
        }
        None => None,
    };
    Ok(ExtendReport { applied, rebasable, layout: Some(layout_dir), written: Some(written), output, new_layers, env })
}

/// The image to extend: from `<kaniko-dir>/cache/base/<digest>/` when the restorer saved it
/// there (no registry access or credentials needed: the extender gets none from pack), else
/// from the reference itself.
fn open_base(opts: &ExtendOptions, reference: &str) -> Result<Image> {
    let digest = reference.rsplit_once('@').and_then(|(_, d)| d.parse::<ext_oci::Digest>().ok());
    if let (Some(kaniko), Some(digest)) = (&opts.kaniko_dir, digest) {
        let saved = kaniko.join("cache").join("base").join(digest.to_string());
        if saved.join("index.json").is_file() {
            let mut image = OciLayout::open(&saved)?.resolve_digest(&digest, &opts.target_platform)?;
            tracing::info!("base image {reference}: manifest and config from {}", saved.display());
            image.name = reference.to_string();
            return Ok(image);
        }
    }
    let base_ref = image_ref(reference)?;
    Ok(ext_oci::open_image(&base_ref, &opts.target_platform, &opts.store)?)
}

/// `root`, `0`, or no user at all (which means root) as the run image's final user.
pub fn is_root(user: &str) -> bool {
    let u = user.split(':').next().unwrap_or("");
    u.is_empty() || u == "0" || u == "root"
}

/// The lifecycle's history for an extended image: the base's non-empty entries (blank ones if
/// they do not match its layers), then one `Layer: '<instruction>', Created by extension: <id>`
/// entry per new layer, so `history` and `rootfs.diff_ids` stay the same length.
fn cnb_history(config: &mut ext_oci::ImageConfig, base_layers: usize, base_history_len: usize) {
    let history = config.history();
    let (base, added) = history.split_at(base_history_len.min(history.len()));
    let is_empty = |h: &Value| h.get("empty_layer").and_then(Value::as_bool).unwrap_or(false);
    let mut out: Vec<Value> = base.iter().filter(|h| !is_empty(h)).cloned().collect();
    if out.len() != base_layers {
        out = vec![Value::Object(Default::default()); base_layers];
    }
    out.extend(added.iter().filter(|h| !is_empty(h)).cloned());
    config.set_history(out);
}

/// build.Dockerfile rules: exactly one ARG before FROM, `base_image`, and `FROM ${base_image}`.
pub fn validate_build_dockerfile(id: &str, path: &Path, df: &Dockerfile) -> Result<()> {
    let err = |m: &str| LifecycleError::Extension { id: id.to_string(), message: format!("{}: {m}", path.display()) };
    let names: Vec<String> = df
        .global_args
        .iter()
        .filter_map(|a| match &a.kind {
            ext_dockerfile::parse::Kind::Arg(t) => Some(t.split('=').next().unwrap_or("").trim().to_string()),
            _ => None,
        })
        .collect();
    if names != ["base_image"] || df.from.implicit {
        return Err(err(
            "a build.Dockerfile must start with `ARG base_image` and `FROM ${base_image}` (did not start with required ARG command)",
        ));
    }
    if df.from.image != "${base_image}" {
        return Err(err("a build.Dockerfile must use `FROM ${base_image}`"));
    }
    Ok(())
}

/// Each extension's `<kind>.Dockerfile`, in group order, with its config and build context.
fn find_dockerfiles(opts: &ExtendOptions, group: &Group) -> Result<Vec<Job>> {
    let kind = opts.kind.name();
    let mut jobs = Vec::new();
    for ext in &group.extensions {
        let escaped = escape_id(&ext.id);
        let new_dir = opts.generated.join(&escaped);
        let old_dir = opts.generated.join(kind).join(&escaped);
        let (dockerfile, config) = if new_dir.join(format!("{kind}.Dockerfile")).is_file() {
            (new_dir.join(format!("{kind}.Dockerfile")), new_dir.join("extend-config.toml"))
        } else if old_dir.join("Dockerfile").is_file() {
            (old_dir.join("Dockerfile"), old_dir.join("extend-config.toml"))
        } else {
            continue;
        };
        let layer = ExtensionLayer::locate(&opts.layers, &ext.id);
        let context = [new_dir.join(format!("context.{kind}")), new_dir.join("context")]
            .into_iter()
            .find(|d| d.is_dir())
            .or_else(|| layer.has_content().then(|| layer.dir.clone()))
            .unwrap_or_else(|| opts.app.clone());
        jobs.push(Job { id: ext.id.clone(), dockerfile, config: config.is_file().then_some(config), context });
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_references() {
        assert!(image_ref("127.0.0.1:5000/run@sha256:").is_err(), "a truncated digest is refused");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            image_ref(&format!("127.0.0.1:5000/run@{d}")).unwrap().to_string(),
            format!("docker://127.0.0.1:5000/run@{d}")
        );
        assert_eq!(image_ref("ubuntu:22.04").unwrap().to_string(), "docker://index.docker.io/library/ubuntu:22.04");
        assert_eq!(image_ref("paketo/run:base").unwrap().to_string(), "docker://index.docker.io/paketo/run:base");
        assert_eq!(image_ref("oci:/x:y").unwrap().to_string(), "oci:/x:y");
    }

    #[test]
    fn root_users() {
        for u in ["", "0", "root", "0:0", "root:1000"] {
            assert!(is_root(u), "{u}");
        }
        for u in ["1000", "cnb", "1000:0"] {
            assert!(!is_root(u), "{u}");
        }
    }

    #[test]
    fn history_matches_layers() {
        let mut c = ext_oci::ImageConfig::from_slice(format!(r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{a}","{b}"]}},"history":[{{"created_by":"x"}},{{"created_by":"e","empty_layer":true}},{{"created_by":"y"}},{{"created_by":"ARG","empty_layer":true}},{{"created_by":"Layer: 'RUN z', Created by extension: e"}}]}}"#, a = ext_oci::Digest::of(b"a"), b = ext_oci::Digest::of(b"b")).as_bytes()).unwrap();
        cnb_history(&mut c, 2, 3);
        let h = c.history();
        let by: Vec<&str> = h.iter().map(|v| v["created_by"].as_str().unwrap_or("")).collect();
        assert_eq!(by, vec!["x", "y", "Layer: 'RUN z', Created by extension: e"]);
    }
}
