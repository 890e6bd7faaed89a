//! `ext-extend build`: wire the Dockerfile front end, the executor and the image store.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use ext_dockerfile::Dockerfile;
use ext_executor::{BuildContext, OutputTarget, Provenance, Session, SessionOptions};
use ext_oci::{ImageRef, LayerOptions, MtimePolicy, Platform};

use crate::Failure;
use crate::cli::BuildArgs;

/// `quiet`: `-q`, which also keeps RUN output off the terminal unless a command fails.
pub fn run(args: BuildArgs, quiet: bool) -> Result<(), Failure> {
    let from: ImageRef = args.from.parse()?;
    let output: ImageRef = args.output.parse()?;
    let platform = match &args.platform {
        Some(p) => p.parse()?,
        None => Platform::host(),
    };
    let mtime = MtimePolicy::from_env().map_err(|m| Failure::input(anyhow!(m)))?;
    let build_args = parse_build_args(&args.build_args, &args.from)?;
    let jobs = pair_files_and_contexts(&args.files, &args.contexts)?;
    let executor = args.executor.executor(false)?;

    // Parse everything before touching any image, so bad input fails fast.
    let mut dockerfiles = Vec::new();
    for (file, context) in &jobs {
        use ext_executor::special_file::{MAX_DOCKERFILE, Symlinks, read_text};
        // A Dockerfile named with -f is the user's choice; the default one is in the context.
        let symlinks = if args.files.is_empty() { Symlinks::Refuse } else { Symlinks::Follow };
        let text = read_text(file, symlinks, MAX_DOCKERFILE)
            .with_context(|| format!("cannot read Dockerfile {}", file.display()))
            .map_err(Failure::input)?;
        let df = Dockerfile::parse(&text, &file.display().to_string()).map_err(Failure::input)?;
        for w in &df.warnings {
            tracing::warn!("{w}");
        }
        if let Some(note) = df.syntax_note() {
            tracing::debug!("{note}");
        }
        let resolved = df.resolve_from(&build_args).map_err(Failure::input)?;
        if !resolved.extends_base {
            return Err(Failure::input(anyhow!(
                "{}:{}: FROM {} names another image; ext-extend build extends the --from image (write `FROM ${{base_image}}`)",
                file.display(),
                resolved.line,
                resolved.image
            )));
        }
        dockerfiles.push((df, context.clone()));
    }
    warn_unconsumed_build_args(&build_args, &dockerfiles);

    let store = args.store.options();
    let base = ext_oci::open_image(&from, &platform, &store)?;
    tracing::info!("base {} ({}, {} layers)", base.name, base.manifest_digest.short(), base.layers().len());

    let target = OutputTarget::begin(&output, &store)?;
    let scratch = ext_rootfs::Scratch::create(args.scratch_dir.as_deref())
        .context("cannot create a scratch directory")
        .map_err(Failure::other)?;
    let step_cache = args.step_cache.open(&store.cache_dir().join("steps"), None, &store)?;
    let opts = SessionOptions {
        layer: LayerOptions { compression: args.compression.compression()?, mtime, ..LayerOptions::default() },
        snapshot: args.snapshot,
        ignore_paths: args.ignore_paths.clone(),
        cache_dir: Some(store.cache_dir()),
        executor,
        quiet,
        step_cache: Some(step_cache),
        mount_sources: args.executor.mount_sources()?,
        images: ext_executor::ImageSources { store: store.clone(), platform: platform.clone() },
        ..SessionOptions::new(scratch.path())
    };
    let mut session = Session::new(base, &target.blob_dir(), opts);
    for (df, context_dir) in &dockerfiles {
        let context = BuildContext::open(context_dir)?;
        tracing::info!("applying {} (context {})", df.file, context_dir.display());
        // Each step logs as it ends (Session), in Dockerfile order.
        session.apply(df, &build_args, &context, &Provenance::Standalone)?;
    }
    let image = session.finish();
    let destination = target.describe();
    let written = image.write(target, &store)?;
    tracing::info!("wrote {destination} ({} layers, {} new)", written.layers.len(), image.new_layers.len());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&written).expect("JSON serializes"));
    } else {
        println!("{}", written.manifest_digest);
    }
    Ok(())
}

/// BuildKit's warning for build args no ARG declares (typos, or args meant for another file).
fn warn_unconsumed_build_args(build_args: &BTreeMap<String, String>, dockerfiles: &[(Dockerfile, PathBuf)]) {
    let declared: std::collections::BTreeSet<String> =
        dockerfiles.iter().flat_map(|(df, _)| df.declared_args()).collect();
    let unused: Vec<&str> = build_args
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "base_image" && !ext_dockerfile::plan::PREDEFINED_ARGS.contains(k) && !declared.contains(*k))
        .collect();
    if !unused.is_empty() {
        tracing::warn!("build args not consumed by any ARG: {}", unused.join(", "));
    }
}

/// `KEY=VALUE`, or `KEY` from the environment (as `docker build` does); `base_image` is the
/// `--from` reference unless given explicitly.
fn parse_build_args(raw: &[String], from: &str) -> Result<BTreeMap<String, String>, Failure> {
    let mut args = BTreeMap::new();
    args.insert("base_image".to_string(), from.to_string());
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                args.insert(k.to_string(), v.to_string());
            }
            Some(_) => return Err(Failure::input(anyhow!("--build-arg `{a}`: expected KEY=VALUE"))),
            None if a.trim().is_empty() => {
                return Err(Failure::input(anyhow!("--build-arg with an empty name: expected KEY=VALUE or KEY")));
            }
            None => {
                if let Ok(v) = std::env::var(a) {
                    args.insert(a.clone(), v);
                }
            }
        }
    }
    Ok(args)
}

fn pair_files_and_contexts(files: &[PathBuf], contexts: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>, Failure> {
    let contexts: Vec<PathBuf> = if contexts.is_empty() { vec![PathBuf::from(".")] } else { contexts.to_vec() };
    if files.is_empty() {
        if contexts.len() > 1 {
            return Err(Failure::input(anyhow!("several --context given without -f; give one -f per --context")));
        }
        return Ok(vec![(contexts[0].join("Dockerfile"), contexts[0].clone())]);
    }
    match contexts.len() {
        1 => Ok(files.iter().map(|f| (f.clone(), contexts[0].clone())).collect()),
        n if n == files.len() => Ok(files.iter().cloned().zip(contexts).collect()),
        n => Err(Failure::input(anyhow!(
            "{} Dockerfiles but {n} contexts: give one --context for all, or one per -f",
            files.len()
        ))),
    }
}
