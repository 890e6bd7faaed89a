//! The generate phase (part of the lifecycle's detector): run each extension's `bin/generate`
//! with its extension layer, collect its outputs under `<generated>/<id>/`, validate them, and
//! select the run image in `<analyzed>`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ext_dockerfile::Dockerfile;

use crate::error::{LifecycleError, Result};
use crate::extension_layer::ExtensionLayer;
use crate::files::{
    self, Analyzed, BuildpackPlan, BuildpackPlanEntry, ExtendConfig, ExtensionDescriptor, Group, GroupEntry, Plan,
    escape_id,
};

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub app: PathBuf,
    pub layers: PathBuf,
    pub group: PathBuf,
    pub plan: PathBuf,
    pub extensions: PathBuf,
    pub platform: PathBuf,
    pub generated: PathBuf,
    pub analyzed: PathBuf,
    /// `run.toml` (to warn when a switched run image is not listed).
    pub run: Option<PathBuf>,
    /// `-build-image`: recorded as `build-image.reference`.
    pub build_image: Option<String>,
}

/// What generate found, for reports and tests.
#[derive(Debug, Clone, Default)]
pub struct GenerateReport {
    pub extensions: Vec<String>,
    pub run_dockerfiles: Vec<PathBuf>,
    pub build_dockerfiles: Vec<PathBuf>,
    pub ignored: Vec<PathBuf>,
    pub run_image: Option<String>,
    pub run_image_extend: bool,
}

/// Variables from the lifecycle's own environment that reach `bin/generate` (the build
/// environment allow-list of the lifecycle).
const PASS_ENV: &[&str] = &[
    "CNB_STACK_ID",
    "HOSTNAME",
    "HOME",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PATH",
    "LD_LIBRARY_PATH",
    "LIBRARY_PATH",
    "CPATH",
    "PKG_CONFIG_PATH",
    "LANG",
    "TZ",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

pub fn generate(opts: &GenerateOptions) -> Result<GenerateReport> {
    let group: Group = files::read_toml(&opts.group)?;
    let mut plan: Plan = if opts.plan.exists() { files::read_toml(&opts.plan)? } else { Plan::default() };
    let mut analyzed = if opts.analyzed.exists() { Analyzed::read(&opts.analyzed)? } else { Analyzed::default() };
    let target = analyzed.target();
    let scratch = tempfile::Builder::new()
        .prefix("ext-extend-generate-")
        .tempdir()
        .map_err(LifecycleError::io(std::env::temp_dir()))?;
    let mut report = GenerateReport::default();
    // (run.Dockerfile path, FROM as written, extends base, has instructions)
    let mut runs: Vec<(PathBuf, String, bool, bool)> = Vec::new();

    for ext in &group.extensions {
        let escaped = escape_id(&ext.id);
        let root = opts.extensions.join(&escaped).join(&ext.version);
        let descriptor: ExtensionDescriptor = files::read_toml(&root.join("extension.toml"))?;
        if descriptor.extension.id != ext.id {
            return Err(LifecycleError::file(
                root.join("extension.toml"),
                format!("declares id `{}`, but group.toml lists `{}`", descriptor.extension.id, ext.id),
            ));
        }
        let layer = ExtensionLayer::create(&opts.layers, &ext.id)?;
        let output = opts.generated.join(&escaped);
        if output.exists() {
            fs::remove_dir_all(&output).map_err(LifecycleError::io(&output))?;
        }
        fs::create_dir_all(&output).map_err(LifecycleError::io(&output))?;

        let bp_plan_path = scratch.path().join(format!("{escaped}-plan.toml"));
        let bp_plan = plan_for(&plan, ext);
        let text = toml::to_string(&bp_plan).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        fs::write(&bp_plan_path, text).map_err(LifecycleError::io(&bp_plan_path))?;

        let generate_bin = root.join("bin").join("generate");
        if generate_bin.exists() {
            tracing::info!("running {} ({}) bin/generate", ext.id, ext.version);
            let mut cmd = Command::new(&generate_bin);
            cmd.arg(&output).arg(&opts.platform).arg(&bp_plan_path).current_dir(&opts.app).env_clear();
            for k in PASS_ENV {
                if let Ok(v) = std::env::var(k) {
                    cmd.env(k, v);
                }
            }
            if !descriptor.extension.clear_env {
                for (k, v) in platform_env(&opts.platform)? {
                    cmd.env(k, v);
                }
            }
            cmd.env("CNB_OUTPUT_DIR", &output)
                .env("CNB_EXTENSION_DIR", &root)
                .env("CNB_PLATFORM_DIR", &opts.platform)
                .env("CNB_BP_PLAN_PATH", &bp_plan_path)
                .env("CNB_EXT_LAYER_DIR", &layer.dir);
            for (k, v) in target_env(&target) {
                cmd.env(k, v);
            }
            // The lifecycle sends both streams to its stdout; we keep stdout for results.
            let stderr = std::io::stderr();
            let out = std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned().map_err(LifecycleError::io("stderr"))?;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::from(out.try_clone().map_err(LifecycleError::io("stderr"))?))
                .stderr(Stdio::from(out));
            let status = cmd.status().map_err(LifecycleError::io(&generate_bin))?;
            if !status.success() {
                return Err(LifecycleError::GenerateFailed { id: ext.id.clone(), code: status.code().unwrap_or(-1) });
            }
        } else if root.join("generate").is_dir() {
            // A pre-populated output dir; copied so the extender finds it in <generated>.
            copy_tree(&root.join("generate"), &output)?;
        } else {
            return Err(LifecycleError::Extension {
                id: ext.id.clone(),
                message: format!("{} has neither bin/generate nor a generate/ directory", root.display()),
            });
        }

        validate_output(&ext.id, &output)?;
        let run_df = output.join("run.Dockerfile");
        if run_df.exists() {
            let df = parse(&ext.id, &run_df)?;
            let extends = df.from.implicit || df.from.image == "${base_image}";
            runs.push((run_df.clone(), df.from.image.clone(), extends, !df.instructions.is_empty()));
            report.run_dockerfiles.push(run_df);
        }
        let build_df = output.join("build.Dockerfile");
        if build_df.exists() {
            let df = parse(&ext.id, &build_df)?;
            crate::extend::validate_build_dockerfile(&ext.id, &build_df, &df)?;
            report.build_dockerfiles.push(build_df);
        }
        report.extensions.push(ext.id.clone());
        // Everything this extension provides counts as met.
        plan.entries.retain(|e| !e.providers.iter().any(|p| p.id == ext.id));
    }

    select_run_image(&mut analyzed, &runs, opts, &mut report)?;
    analyzed.set_build_image(opts.build_image.as_deref(), !report.build_dockerfiles.is_empty());
    analyzed.write(&opts.analyzed)?;
    let text = toml::to_string(&plan).map_err(|e| LifecycleError::Invalid(e.to_string()))?;
    files::write_atomic(&opts.plan, text.as_bytes())?;
    Ok(report)
}

/// The spec's run-image selection: all `FROM ${base_image}` -> extend the original; otherwise
/// the last switching Dockerfile picks the image and earlier run.Dockerfiles are ignored.
fn select_run_image(
    analyzed: &mut Analyzed,
    runs: &[(PathBuf, String, bool, bool)],
    opts: &GenerateOptions,
    report: &mut GenerateReport,
) -> Result<()> {
    match runs.iter().rposition(|(_, _, extends, _)| !extends) {
        None => {
            let extend = runs.iter().any(|r| r.3);
            if !runs.is_empty() {
                analyzed.set_run_image_extend(extend);
            }
            report.run_image = analyzed.run_image_name().map(String::from);
            report.run_image_extend = extend;
        }
        Some(last_switch) => {
            let (_, image, _, has_instructions) = &runs[last_switch];
            let extend = *has_instructions || runs[last_switch + 1..].iter().any(|r| r.3);
            for (path, ..) in &runs[..last_switch] {
                let ignored = PathBuf::from(format!("{}.ignore", path.display()));
                fs::rename(path, &ignored).map_err(LifecycleError::io(path))?;
                report.ignored.push(ignored);
                report.run_dockerfiles.retain(|p| p != path);
            }
            if analyzed.run_image_name() != Some(image.as_str()) {
                analyzed.switch_run_image(image);
            }
            analyzed.set_run_image_extend(extend);
            if let Some(run_toml) = &opts.run
                && !run_toml_lists(run_toml, image)
            {
                tracing::warn!("new runtime base image '{image}' not found in run metadata ({})", run_toml.display());
            }
            report.run_image = Some(image.clone());
            report.run_image_extend = extend;
        }
    }
    Ok(())
}

fn run_toml_lists(path: &Path, image: &str) -> bool {
    let Ok(table) = files::read_toml::<toml::Table>(path) else { return false };
    table.get("images").and_then(toml::Value::as_array).is_some_and(|images| {
        images.iter().any(|i| {
            i.get("image").and_then(toml::Value::as_str) == Some(image)
                || i.get("mirrors")
                    .and_then(toml::Value::as_array)
                    .is_some_and(|m| m.iter().any(|x| x.as_str() == Some(image)))
        })
    })
}

/// The Buildpack Plan for one extension: requirements of still-unmet entries it provides.
fn plan_for(plan: &Plan, ext: &GroupEntry) -> BuildpackPlan {
    let entries = plan
        .entries
        .iter()
        .filter(|e| e.providers.iter().any(|p| p.id == ext.id))
        .flat_map(|e| e.requires.iter())
        .map(|r| BuildpackPlanEntry { name: r.name.clone(), metadata: r.metadata.clone().unwrap_or_default() })
        .collect();
    BuildpackPlan { entries }
}

fn parse(id: &str, path: &Path) -> Result<Dockerfile> {
    let text = fs::read_to_string(path).map_err(LifecycleError::io(path))?;
    let df = Dockerfile::parse(&text, &path.display().to_string())
        .map_err(|e| LifecycleError::Extension { id: id.to_string(), message: e.to_string() })?;
    for w in &df.warnings {
        tracing::warn!("extension {id}: {w}");
    }
    Ok(df)
}

/// RFC 0127: `context` may not come with `context.run`/`context.build`; extend-config.toml
/// may not set the lifecycle's own args.
fn validate_output(id: &str, output: &Path) -> Result<()> {
    let shared = output.join("context").is_dir();
    if shared && (output.join("context.run").is_dir() || output.join("context.build").is_dir()) {
        return Err(LifecycleError::Extension {
            id: id.to_string(),
            message: format!(
                "{}: an image-specific context dir (context.run/context.build) is provided together with a shared context",
                output.display()
            ),
        });
    }
    let config = output.join("extend-config.toml");
    if config.exists() {
        ExtendConfig::read(&config)?;
    }
    Ok(())
}

/// `<platform>/env/<NAME>` files: one variable each.
fn platform_env(platform: &Path) -> Result<BTreeMap<String, String>> {
    let dir = platform.join("env");
    let mut out = BTreeMap::new();
    let Ok(entries) = fs::read_dir(&dir) else { return Ok(out) };
    for e in entries.flatten() {
        if e.path().is_file()
            && let Some(name) = e.file_name().to_str()
        {
            let value = fs::read_to_string(e.path()).map_err(LifecycleError::io(e.path()))?;
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

/// `CNB_TARGET_*`: OS and arch always, the rest when known.
pub fn target_env(t: &files::Target) -> Vec<(&'static str, String)> {
    let os = if t.os.is_empty() { "linux".to_string() } else { t.os.clone() };
    let arch = if t.arch.is_empty() { ext_oci::Platform::host().architecture } else { t.arch.clone() };
    let mut v = vec![("CNB_TARGET_OS", os), ("CNB_TARGET_ARCH", arch)];
    for (k, val) in [
        ("CNB_TARGET_ARCH_VARIANT", &t.variant),
        ("CNB_TARGET_DISTRO_NAME", &t.distro_name),
        ("CNB_TARGET_DISTRO_VERSION", &t.distro_version),
    ] {
        if !val.is_empty() {
            v.push((k, val.clone()));
        }
    }
    v
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for e in walkdir::WalkDir::new(from).follow_links(false) {
        let e = e.map_err(|e| LifecycleError::Invalid(e.to_string()))?;
        let rel = e.path().strip_prefix(from).expect("walkdir stays below its root");
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            fs::create_dir_all(&dest).map_err(LifecycleError::io(&dest))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path()).map_err(LifecycleError::io(e.path()))?;
            std::os::unix::fs::symlink(target, &dest).map_err(LifecycleError::io(&dest))?;
        } else {
            fs::copy(e.path(), &dest).map_err(LifecycleError::io(&dest))?;
        }
    }
    Ok(())
}
