//! `ext-extend generate | extend | export`: the CNB phases with the lifecycle's flags and
//! `CNB_*` environment variables (same defaults), and the exit codes of the platform spec.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use ext_lifecycle::{ExportOptions, ExtendOptions, GenerateOptions, Kind, Phase};
use ext_oci::{LayerOptions, MtimePolicy, Platform};

use crate::Failure;
use crate::cli::{CompressionArgs, ExecutorArgs, StoreArgs};

/// Directories shared by the phases.
#[derive(Debug, Args, Clone)]
pub struct CommonDirs {
    /// Application directory.
    #[arg(long, env = "CNB_APP_DIR", default_value = "/workspace", value_name = "DIR")]
    pub app: PathBuf,
    /// Layers directory (buildpack layers, extension layers, generated files).
    #[arg(long, env = "CNB_LAYERS_DIR", default_value = "/layers", value_name = "DIR")]
    pub layers: PathBuf,
    /// Platform directory (env/ files reach bin/generate).
    #[arg(long, env = "CNB_PLATFORM_DIR", default_value = "/platform", value_name = "DIR")]
    pub platform: PathBuf,
    /// group.toml. Default: <layers>/group.toml.
    #[arg(long, env = "CNB_GROUP_PATH", value_name = "PATH")]
    pub group: Option<PathBuf>,
    /// analyzed.toml. Default: <layers>/analyzed.toml.
    #[arg(long, env = "CNB_ANALYZED_PATH", value_name = "PATH")]
    pub analyzed: Option<PathBuf>,
    /// Generated Dockerfiles and contexts. Default: <layers>/generated.
    #[arg(long, env = "CNB_GENERATED_DIR", value_name = "DIR")]
    pub generated: Option<PathBuf>,
    /// Accepted for compatibility with the lifecycle; ignored.
    #[arg(long, hide = true)]
    pub no_color: bool,
}

impl CommonDirs {
    fn under_layers(&self, given: &Option<PathBuf>, name: &str) -> PathBuf {
        given.clone().unwrap_or_else(|| self.layers.join(name))
    }
    fn group(&self) -> PathBuf {
        self.under_layers(&self.group, "group.toml")
    }
    fn analyzed(&self) -> PathBuf {
        self.under_layers(&self.analyzed, "analyzed.toml")
    }
    fn generated(&self) -> PathBuf {
        self.under_layers(&self.generated, "generated")
    }
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub dirs: CommonDirs,
    /// plan.toml. Default: <layers>/plan.toml.
    #[arg(long, env = "CNB_PLAN_PATH", value_name = "PATH")]
    pub plan: Option<PathBuf>,
    /// Image extensions directory (<extensions>/<id>/<version>/).
    #[arg(long, env = "CNB_EXTENSIONS_DIR", default_value = "/cnb/extensions", value_name = "DIR")]
    pub extensions: PathBuf,
    /// run.toml, to warn when an extension switches to an image it does not list.
    #[arg(long, env = "CNB_RUN_PATH", value_name = "PATH")]
    pub run: Option<PathBuf>,
    /// Build image reference, recorded in analyzed.toml.
    #[arg(long, env = "CNB_BUILD_IMAGE", value_name = "REF")]
    pub build_image: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[command(flatten)]
    pub dirs: CommonDirs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Which image to extend: `build` or `run`.
    #[arg(long, env = "CNB_EXTEND_KIND", default_value = "build", value_name = "KIND")]
    pub kind: Kind,
    /// Output directory for the extended image layout. Default: <layers>/extended.
    #[arg(long, env = "CNB_EXTENDED_DIR", value_name = "DIR")]
    pub extended: Option<PathBuf>,
    /// Also write the full extended image here (oci:DIR[:TAG] or docker://...).
    #[arg(long, value_name = "REF")]
    pub output: Option<String>,
    /// UID of the build user: with --kind build and a builder, <layers> is handed to it and
    /// the build phase runs as it.
    #[arg(long, env = "CNB_USER_ID", value_name = "UID")]
    pub uid: Option<u32>,
    /// GID of the build user (see --uid).
    #[arg(long, env = "CNB_GROUP_ID", value_name = "GID")]
    pub gid: Option<u32>,
    /// With --kind build, go on to run the build phase in place, as the lifecycle's extender
    /// does: chown <layers> to --uid:--gid, drop to that user, set HOME and the extended
    /// image's Env, and exec this builder with the same platform inputs. Default for the
    /// drop-in `extender`: /cnb/lifecycle/builder; for `ext-extend extend`: none (the
    /// extended build image is written to <extended>/build instead).
    #[arg(long, env = "CNB_BUILDER_PATH", value_name = "PATH")]
    pub builder: Option<PathBuf>,
    /// The lifecycle's Kaniko directory: the restorer saves the base image's manifest and
    /// config in <kaniko-dir>/cache/base/<digest>, read instead of the registry (the
    /// extender gets no registry credentials from pack); with --live-root it also holds the
    /// scratch space and, unless --cache-dir says otherwise, the cache.
    #[arg(long, value_name = "DIR", default_value = "/kaniko")]
    pub kaniko_dir: PathBuf,
    #[command(flatten)]
    pub executor: ExecutorArgs,
    #[command(flatten)]
    pub step_cache: crate::cache::StepCacheArgs,
    /// Set when started as the lifecycle's `extender` (by the program name).
    #[arg(long, hide = true)]
    pub lifecycle_drop_in: bool,
    /// The lifecycle's TTL for Kaniko's layer cache: the step cache's TTL unless --cache-ttl
    /// is given.
    #[arg(long, env = "CNB_KANIKO_CACHE_TTL", hide = true)]
    pub kaniko_cache_ttl: Option<String>,
    #[arg(long, env = "CNB_BUILDPACKS_DIR", hide = true)]
    pub buildpacks: Option<PathBuf>,
    #[arg(long, env = "CNB_PLAN_PATH", hide = true)]
    pub plan: Option<PathBuf>,
    /// Platform to pick from a multi-platform image.
    #[arg(long = "target-platform", value_name = "PLATFORM")]
    pub target_platform: Option<String>,
    /// How RUN changes are found: auto, overlay or stat.
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub snapshot: ext_rootfs::SnapshotMode,
    /// Where the private scratch directory is created. Default: $TMPDIR.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    #[command(flatten)]
    pub compression: CompressionArgs,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub dirs: CommonDirs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Directory holding the extended run image. Default: <layers>/extended.
    #[arg(long, env = "CNB_EXTENDED_DIR", value_name = "DIR")]
    pub extended: Option<PathBuf>,
    /// Where to write the app image: oci:DIR[:TAG] or docker://HOST/REPO[:TAG].
    #[arg(long, short, value_name = "REF")]
    pub output: Option<String>,
    /// The app image, as the lifecycle's exporter takes it (same as --output).
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// Platform (os/arch[/variant]) to pick from a multi-platform run image. Default: this
    /// machine's.
    #[arg(long = "target-platform", value_name = "PLATFORM")]
    pub target_platform: Option<String>,
    #[command(flatten)]
    pub compression: CompressionArgs,
    /// Print a JSON summary instead of the digest.
    #[arg(long)]
    pub json: bool,
}

fn phase_failure(phase: Phase) -> impl Fn(ext_lifecycle::LifecycleError) -> Failure {
    move |e| Failure { code: e.exit_code(phase), error: e.into() }
}

fn platform(p: &Option<String>) -> Result<Platform, Failure> {
    match p {
        Some(p) => Ok(p.parse()?),
        None => Ok(Platform::host()),
    }
}

fn layer_options(compression: &CompressionArgs) -> Result<LayerOptions, Failure> {
    let mtime = MtimePolicy::from_env().map_err(|m| Failure::input(anyhow!(m)))?;
    Ok(LayerOptions { compression: compression.compression()?, mtime, ..LayerOptions::default() })
}

pub fn generate(args: GenerateArgs) -> Result<(), Failure> {
    let d = &args.dirs;
    let opts = GenerateOptions {
        app: d.app.clone(),
        layers: d.layers.clone(),
        group: d.group(),
        plan: args.plan.clone().unwrap_or_else(|| d.layers.join("plan.toml")),
        extensions: args.extensions.clone(),
        platform: d.platform.clone(),
        generated: d.generated(),
        analyzed: d.analyzed(),
        run: args.run.clone().or_else(|| Some(PathBuf::from("/cnb/run.toml")).filter(|p| p.exists())),
        build_image: args.build_image.clone(),
    };
    let report = ext_lifecycle::generate(&opts).map_err(phase_failure(Phase::Generate))?;
    tracing::info!(
        "generated for {} extension(s): {} run.Dockerfile(s), {} build.Dockerfile(s), {} ignored; run image {} (extend = {})",
        report.extensions.len(),
        report.run_dockerfiles.len(),
        report.build_dockerfiles.len(),
        report.ignored.len(),
        report.run_image.as_deref().unwrap_or("unchanged"),
        report.run_image_extend
    );
    Ok(())
}

pub fn extend(args: ExtendArgs, log_level: Option<&str>, quiet: bool) -> Result<(), Failure> {
    let d = &args.dirs;
    let output = match &args.output {
        Some(o) => Some(o.parse()?),
        None => None,
    };
    let drop_in = args.lifecycle_drop_in;
    let executor = args.executor.executor(drop_in && installed_in_lifecycle_dir())?;
    let live = matches!(executor, ext_executor::session::RunExecutor::LiveRoot(_));
    // The build phase runs where the build image was extended in place: the live root.
    let builder = match (&args.builder, drop_in && live) {
        (Some(b), _) => Some(b.clone()),
        (None, true) => Some(PathBuf::from(ext_lifecycle::build_phase::DEFAULT_BUILDER)),
        (None, false) => None,
    }
    .filter(|_| args.kind == Kind::Build);
    if builder.is_some() && !live {
        return Err(Failure::input(anyhow!(
            "--builder: the build phase runs on the build image extended in place, which needs --live-root (inside a container of the build image)"
        )));
    }
    if builder.is_some() && (args.uid.is_none() || args.gid.is_none()) {
        return Err(Failure::input(anyhow!(
            "--kind build runs the build phase next: give the build user with --uid and --gid (CNB_USER_ID, CNB_GROUP_ID)"
        )));
    }
    let kaniko = args.kaniko_dir.is_dir().then(|| args.kaniko_dir.clone());
    let mut store = args.store.options();
    let mut scratch_dir = args.scratch_dir.clone();
    if let (Some(k), true) = (&kaniko, live) {
        // In the container, <kaniko-dir> is a volume: scratch and cache stay out of the image.
        store.cache_dir.get_or_insert_with(|| k.join("cache").join("ext-extend"));
        scratch_dir.get_or_insert_with(|| k.clone());
    }
    // The drop-in keeps its steps where the lifecycle keeps Kaniko's layer cache (a volume that
    // platforms keep between builds); elsewhere with the other caches.
    let step_dir = match (&kaniko, drop_in) {
        (Some(k), true) => k.join("cache").join("layers"),
        _ => store.cache_dir().join("steps"),
    };
    let step_cache = args.step_cache.open(&step_dir, args.kaniko_cache_ttl.as_deref(), &store)?;
    let opts = ExtendOptions {
        analyzed: d.analyzed(),
        app: d.app.clone(),
        extended: args.extended.clone().unwrap_or_else(|| d.layers.join("extended")),
        generated: d.generated(),
        group: d.group(),
        kind: args.kind,
        layers: d.layers.clone(),
        platform: d.platform.clone(),
        output,
        store,
        target_platform: platform(&args.target_platform)?,
        layer: layer_options(&args.compression)?,
        snapshot: args.snapshot,
        scratch_dir,
        executor,
        kaniko_dir: kaniko,
        step_cache: Some(step_cache),
        quiet,
        mount_sources: args.executor.mount_sources()?,
    };
    let report = ext_lifecycle::extend(&opts).map_err(phase_failure(Phase::Extend))?;
    if let Some(w) = report.output.as_ref().or(report.written.as_ref()) {
        println!("{}", w.manifest_digest);
    }
    let Some(builder) = builder else { return Ok(()) };
    let passwd = std::fs::read("/etc/passwd").ok();
    let handoff = ext_lifecycle::BuilderHandoff {
        builder,
        args: ext_lifecycle::build_phase::builder_args(
            &d.app,
            &d.layers,
            &d.platform,
            &d.group(),
            &args.plan.clone().unwrap_or_else(|| d.layers.join("plan.toml")),
            &d.analyzed(),
            &args.buildpacks.clone().unwrap_or_else(|| PathBuf::from("/cnb/buildpacks")),
            log_level,
        ),
        uid: args.uid.expect("checked above"),
        gid: args.gid.expect("checked above"),
        layers: d.layers.clone(),
        image_env: report.env,
        passwd,
    };
    // Returns only if the builder could not be started.
    Err(Failure::other(ext_lifecycle::exec_builder(&handoff)))
}

pub fn export(args: ExportArgs) -> Result<(), Failure> {
    let d = &args.dirs;
    let target = args.output.clone().or(args.image.clone()).ok_or_else(|| {
        Failure::input(anyhow!("give the app image with --output REF (oci:DIR[:TAG] or docker://...)"))
    })?;
    let opts = ExportOptions {
        analyzed: d.analyzed(),
        app: d.app.clone(),
        layers: d.layers.clone(),
        group: d.group(),
        extended: args.extended.clone().unwrap_or_else(|| d.layers.join("extended")),
        output: target.parse()?,
        store: args.store.options(),
        target_platform: platform(&args.target_platform)?,
        layer: layer_options(&args.compression)?,
    };
    let report = ext_lifecycle::export(&opts).map_err(phase_failure(Phase::Export))?;
    tracing::info!(
        "exported {target}: {} extension layer(s), launch layers [{}], skipped extension layers [{}]",
        report.extension_layers,
        report.launch_layers.join(", "),
        report.skipped_extension_layers.join(", ")
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.written).expect("JSON serializes"));
    } else {
        println!("{}", report.written.manifest_digest);
    }
    Ok(())
}

/// Whether we were started from the lifecycle's own directory (`/cnb/lifecycle/extender`), as
/// platforms start the extender in a container of the image. Together with container
/// evidence this turns the live root on by itself: `/.dockerenv` alone also exists on CI
/// machines and developer containers whose `/` is not the image being extended.
fn installed_in_lifecycle_dir() -> bool {
    std::env::args_os().next().is_some_and(|a| Path::new(&a).parent() == Some(Path::new("/cnb/lifecycle")))
}

/// The lifecycle writes flags with one dash (`-kind run`); turn `-name` into `--name` for
/// multi-letter flags so clap reads them. Single-letter flags (`-f`, `-q`) are untouched.
pub fn lifecycle_style_args(args: Vec<String>) -> Vec<String> {
    args.into_iter()
        .map(|a| {
            let is_single_dash_word = a.len() > 2
                && a.starts_with('-')
                && !a.starts_with("--")
                && a[1..].chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && a[1..].split('=').next().is_some_and(|n| n.len() > 1);
            if is_single_dash_word { format!("-{a}") } else { a }
        })
        .collect()
}

/// Whether the program was started under a lifecycle phase's name (e.g. a symlink
/// `/cnb/lifecycle/extender -> ext-extend`), and which subcommand that is.
pub fn phase_from_program_name(argv0: &str) -> Option<&'static str> {
    match Path::new(argv0).file_name()?.to_str()? {
        "extender" => Some("extend"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_flags() {
        let a = lifecycle_style_args(
            ["-kind", "run", "-app=/w", "-q", "--json", "-f", "x", "-1"].map(String::from).to_vec(),
        );
        assert_eq!(a, vec!["--kind", "run", "--app=/w", "-q", "--json", "-f", "x", "-1"]);
        assert_eq!(phase_from_program_name("/cnb/lifecycle/extender"), Some("extend"));
        assert_eq!(phase_from_program_name("ext-extend"), None);
    }
}
