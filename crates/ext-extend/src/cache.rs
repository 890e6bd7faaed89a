//! The step cache's flags (shared by `build` and `extend`), `ext-extend cache prune` (step
//! cache) and `ext-extend cache verify` (blob cache).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use ext_oci::BlobStore;
use ext_stepcache::{LocalStore, PrunePolicy, StepCache, StepCacheError, StepCacheOptions, units};

use crate::Failure;

#[derive(Debug, Args, Clone)]
pub struct StepCacheArgs {
    /// Do not look steps up in the step cache: every COPY/ADD, RUN and WORKDIR runs (what
    /// they make is still stored, as with `docker build --no-cache`). EXT_EXTEND_NO_CACHE=1
    /// (any value but 0, false, no, off or empty) does the same.
    #[arg(long, env = "EXT_EXTEND_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,

    /// Also share step cache entries through this registry repository
    /// (docker://HOST[:PORT]/REPO): looked up after the local store, and every new entry is
    /// pushed there, so builders on other machines reuse it.
    #[arg(long, value_name = "REPO", env = "EXT_EXTEND_CACHE_REPO")]
    pub cache_repo: Option<String>,

    /// Step cache entries older than this are not used (a Go duration: 336h, 90m, 1h30m, or
    /// 14d). Default: 336h (two weeks, as Kaniko and the lifecycle).
    #[arg(long, value_name = "DURATION", env = "EXT_EXTEND_CACHE_TTL")]
    pub cache_ttl: Option<String>,

    /// Size bound of the local step cache (K, M, G, T suffixes): after a build, least
    /// recently used entries are removed until it fits. Default: 10G.
    #[arg(long, value_name = "SIZE", env = "EXT_EXTEND_CACHE_MAX_SIZE")]
    pub cache_max_size: Option<String>,

    /// The local step cache directory. Default: <cache-dir>/steps (for the drop-in extender:
    /// <kaniko-dir>/cache/layers).
    #[arg(long, value_name = "DIR", env = "EXT_EXTEND_STEP_CACHE_DIR")]
    pub step_cache_dir: Option<PathBuf>,
}

fn flag_error(e: StepCacheError) -> Failure {
    if e.is_user_error() { Failure::input(e) } else { Failure::other(e) }
}

impl StepCacheArgs {
    /// Opens the step cache; `default_dir` is used without `--step-cache-dir`, `ttl` is a TTL
    /// given some other way (the lifecycle's `-kaniko-cache-ttl`) when `--cache-ttl` is not.
    pub fn open(
        &self,
        default_dir: &Path,
        ttl: Option<&str>,
        store: &ext_oci::StoreOptions,
    ) -> Result<Arc<StepCache>, Failure> {
        let dir = self.step_cache_dir.clone().unwrap_or_else(|| default_dir.to_path_buf());
        let mut opts = StepCacheOptions::new(&dir);
        if let Some(ttl) = self.cache_ttl.as_deref().or(ttl) {
            opts.ttl = units::parse_duration(ttl).map_err(flag_error)?;
        }
        if let Some(size) = &self.cache_max_size {
            opts.max_size = units::parse_size(size).map_err(flag_error)?;
        }
        opts.no_cache = self.no_cache;
        opts.repository = self.cache_repo.clone();
        opts.store = store.clone();
        let cache = StepCache::open(opts).map_err(flag_error)?;
        tracing::debug!("step cache: {}", cache.describe());
        Ok(Arc::new(cache))
    }
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Remove step cache entries older than the TTL, then least recently used ones until the
    /// local store fits its size bound, and blobs no entry uses. Entries in a --cache-repo
    /// registry are not deleted (they expire by the TTL, and a new build replaces them).
    Prune(PruneArgs),
    /// Re-hash every blob of the registry blob cache; corrupt ones are removed (and downloaded
    /// again when needed). Builds re-hash a cached blob only when its size, mtime, ctime or
    /// inode changed since it was last verified, so this is how silent corruption (a bad disk)
    /// is found. Exit 1 if any blob was corrupt.
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub store: crate::cli::StoreArgs,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// ext-extend's cache directory, whose `steps/` is the step cache. Default:
    /// $XDG_CACHE_HOME/ext-extend or ~/.cache/ext-extend.
    #[arg(long, value_name = "DIR", env = "EXT_EXTEND_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// The local step cache directory. Default: <cache-dir>/steps.
    #[arg(long, value_name = "DIR", env = "EXT_EXTEND_STEP_CACHE_DIR")]
    pub step_cache_dir: Option<PathBuf>,

    /// Remove entries older than this (a Go duration). Default: 336h.
    #[arg(long, value_name = "DURATION", env = "EXT_EXTEND_CACHE_TTL")]
    pub cache_ttl: Option<String>,

    /// Then remove least recently used entries until the store takes at most this. Default: 10G.
    #[arg(long, value_name = "SIZE", env = "EXT_EXTEND_CACHE_MAX_SIZE")]
    pub cache_max_size: Option<String>,

    /// Remove every entry.
    #[arg(long)]
    pub all: bool,
}

pub fn run(command: CacheCommand) -> Result<(), Failure> {
    match command {
        CacheCommand::Prune(args) => prune(args),
        CacheCommand::Verify(args) => verify(args),
    }
}

fn prune(args: PruneArgs) -> Result<(), Failure> {
    let cache_dir = args.cache_dir.clone().unwrap_or_else(ext_oci::default_cache_dir);
    let dir = args.step_cache_dir.clone().unwrap_or_else(|| cache_dir.join("steps"));
    let ttl = match &args.cache_ttl {
        Some(t) => units::parse_duration(t).map_err(flag_error)?,
        None => ext_stepcache::DEFAULT_TTL,
    };
    let max_size = match &args.cache_max_size {
        Some(s) => units::parse_size(s).map_err(flag_error)?,
        None => ext_stepcache::DEFAULT_MAX_SIZE,
    };
    if !dir.is_dir() {
        return Err(Failure::input(anyhow!("{}: no step cache here", dir.display())));
    }
    let policy = PrunePolicy { ttl: Some(ttl), max_size: Some(max_size), all: args.all };
    let report = LocalStore::open(&dir).prune(&policy, SystemTime::now()).map_err(flag_error)?;
    println!(
        "{}: removed {} entries and {} blobs ({:.1} MB); kept {} entries ({:.1} MB)",
        dir.display(),
        report.entries_removed,
        report.blobs_removed,
        report.bytes_freed as f64 / 1e6,
        report.entries_kept,
        report.bytes_kept as f64 / 1e6
    );
    Ok(())
}

fn verify(args: VerifyArgs) -> Result<(), Failure> {
    let dir = args.store.options().cache_dir();
    let store = BlobStore::new(&dir);
    let ext_oci::layout::VerifyReport { good, removed } = store.verify_all()?;
    for (digest, e) in &removed {
        eprintln!("removed corrupt blob {digest}: {e}");
    }
    println!("{}: {} blobs verified, {} corrupt removed", dir.display(), good.len(), removed.len());
    if removed.is_empty() {
        Ok(())
    } else {
        Err(Failure::other(anyhow!(
            "{} corrupt blobs were removed from {} (they are downloaded again when needed)",
            removed.len(),
            dir.display()
        )))
    }
}
