//! Command-line flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "ext-extend",
    version,
    about = "Extend OCI images with Dockerfiles, natively: no Docker daemon, no Kaniko",
    long_about = "ext-extend applies Dockerfiles (the CNB image-extension subset: FROM, ADD, ARG, COPY, ENV, LABEL, RUN, SHELL, USER, WORKDIR) to an OCI image and writes the extended image. Base layers are carried over by digest, never decompressed or re-compressed; each COPY/ADD becomes one layer written straight from the build context.",
    after_help = "Examples:\n  ext-extend build --from oci:run-image:latest \\\n      -f run.Dockerfile --context ext-layer --output oci:out:extended\n  ext-extend build --from oci:base --output oci:out --json \\\n      -f a.Dockerfile --context a -f b.Dockerfile --context b\n\nExit codes: 0 success, 2 bad input (usage, Dockerfile, context, reference),\n1 other failures."
)]
pub struct Cli {
    /// Log level (EXT_EXTEND_LOG takes tracing directives instead).
    #[arg(long, global = true, value_name = "LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,

    /// Only print warnings and errors on stderr (build: RUN output only when a command fails).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply Dockerfiles to an image and write the extended image.
    Build(BuildArgs),
    /// CNB generate phase: run each extension's bin/generate with its extension layer
    /// (CNB_EXT_LAYER_DIR), collect Dockerfiles and contexts, select the run image.
    Generate(crate::cnb::GenerateArgs),
    /// CNB extend phase (drop-in for /cnb/lifecycle/extender, without Kaniko): apply every
    /// extension's Dockerfile to the build or run image named in analyzed.toml.
    Extend(crate::cnb::ExtendArgs),
    /// CNB export phase: the app image from the (extended) run image, the app and the launch
    /// layers; extension layers are never exported.
    Export(crate::cnb::ExportArgs),
    /// Maintain the caches: prune the step cache, verify the blob cache.
    Cache {
        #[command(subcommand)]
        command: crate::cache::CacheCommand,
    },
}

/// Image store settings shared by every command.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// Cache for blobs pulled from registries (content-addressed; a second build does not
    /// download again). Default: $XDG_CACHE_HOME/ext-extend or ~/.cache/ext-extend.
    #[arg(long, value_name = "DIR", env = "EXT_EXTEND_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Reach this registry (host[:port]) over plain HTTP. Loopback registries (127.0.0.1,
    /// localhost, ::1) always are. Repeatable. Credentials come from CNB_REGISTRY_AUTH, then
    /// $DOCKER_CONFIG/config.json or ~/.docker/config.json.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,

    /// Abandon (and retry) a registry transfer that moves no byte for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, env = "EXT_EXTEND_STALL_TIMEOUT")]
    pub stall_timeout: f64,
}

/// Where RUN happens (shared by `build` and `extend`).
#[derive(Debug, Args, Clone)]
pub struct ExecutorArgs {
    /// Apply the Dockerfiles in place to the filesystem ext-extend runs on, which must be the
    /// image being extended: how CNB platforms run the extender, inside a container of that
    /// image, where no sandbox can be built (no CAP_SYS_ADMIN, seccomp). RUN is then a plain
    /// child process, COPY/ADD also write to `/`, and changes are found with a stat index of
    /// `/` (mount points and the lifecycle's directories skipped). `on` (or the bare flag)
    /// refuses to run outside a container; `force` does not check; `auto` turns it on only
    /// for the drop-in started as /cnb/lifecycle/extender inside a container; `off` uses the
    /// namespace sandbox on a private rootfs.
    #[arg(
        long,
        value_name = "MODE",
        num_args = 0..=1,
        default_value = "auto",
        default_missing_value = "on",
        value_parser = ["auto", "on", "off", "force"]
    )]
    pub live_root: String,

    /// A secret for `RUN --mount=type=secret`: `id=ID,src=FILE` or `id=ID,env=VAR` (buildx's
    /// syntax; `id=ID` alone reads the variable ID if set, else the file ID). Repeatable. Its
    /// bytes reach only the RUNs that mount it: never a layer, a log line or a cache key.
    /// From the environment: EXT_EXTEND_SECRETS, several separated by `;`.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR", env = "EXT_EXTEND_SECRETS", value_delimiter = ';')]
    pub secrets: Vec<String>,

    /// An SSH agent for `RUN --mount=type=ssh`: `default` (the agent at $SSH_AUTH_SOCK) or
    /// `ID=SOCKET`. Repeatable; from the environment: EXT_EXTEND_SSH, separated by `;`.
    #[arg(long = "ssh", value_name = "default|ID=SOCKET", env = "EXT_EXTEND_SSH", value_delimiter = ';')]
    pub ssh: Vec<String>,
}

impl ExecutorArgs {
    /// The secrets and SSH agents given with --secret and --ssh.
    pub fn mount_sources(&self) -> Result<ext_executor::run_mounts::MountSources, crate::Failure> {
        use ext_executor::run_mounts::{SecretSource, parse_ssh};
        let mut sources = ext_executor::run_mounts::MountSources::default();
        for spec in self.secrets.iter().filter(|s| !s.trim().is_empty()) {
            let (id, source) = SecretSource::parse(spec.trim())
                .map_err(|e| crate::Failure::input(anyhow::anyhow!("--secret {spec}: {e}")))?;
            sources.secrets.insert(id, source);
        }
        for spec in self.ssh.iter().filter(|s| !s.trim().is_empty()) {
            let (id, socket) =
                parse_ssh(spec.trim()).map_err(|e| crate::Failure::input(anyhow::anyhow!("--ssh: {e}")))?;
            sources.ssh.insert(id, socket);
        }
        Ok(sources)
    }

    /// The executor for this run; `drop_in`: started as the lifecycle's
    /// `/cnb/lifecycle/extender`.
    pub fn executor(&self, drop_in: bool) -> Result<ext_executor::session::RunExecutor, crate::Failure> {
        use ext_executor::session::RunExecutor;
        let live = RunExecutor::LiveRoot(PathBuf::from("/"));
        let evidence = ext_rootfs::container_evidence();
        match (self.live_root.as_str(), evidence) {
            ("off", _) => Ok(RunExecutor::Sandbox),
            ("force", _) => {
                tracing::warn!("--live-root=force: applying the Dockerfiles to this machine's own root filesystem");
                Ok(live)
            }
            ("on", Some(why)) => {
                tracing::info!("live root: running inside a container ({why})");
                Ok(live)
            }
            ("on", None) => Err(crate::Failure::input(anyhow::anyhow!(
                "--live-root: refusing to change this machine's own root filesystem: nothing says ext-extend runs in a container of the image being extended (no /.dockerenv or /run/.containerenv, no `container` or KUBERNETES_SERVICE_HOST variable, no container cgroup); use --live-root=force if / really is that image"
            ))),
            (_, Some(why)) if drop_in => {
                tracing::info!("live root: the extender runs inside a container ({why})");
                Ok(live)
            }
            _ => Ok(RunExecutor::Sandbox),
        }
    }
}

/// How new layers are compressed.
#[derive(Debug, Clone, Args)]
pub struct CompressionArgs {
    /// Compression of new layers: `gzip` (read by every tool) or `zstd` (smaller and faster;
    /// needs containerd 1.5+, Docker 23+, Podman/Buildah; README, "Layer compression").
    #[arg(long = "compression", default_value = "gzip", value_name = "FORMAT",
          value_parser = ["gzip", "zstd"])]
    pub format: String,
    /// Level for new layers: gzip 0-9 (default 1), zstd 1-19 (default 3).
    #[arg(long = "compression-level", value_name = "N", allow_negative_numbers = true)]
    pub level: Option<i32>,
}

impl CompressionArgs {
    pub fn compression(&self) -> Result<ext_oci::Compression, crate::Failure> {
        ext_oci::Compression::parse(&self.format, self.level).map_err(|m| crate::Failure::input(anyhow::anyhow!(m)))
    }
}

impl StoreArgs {
    pub fn options(&self) -> ext_oci::StoreOptions {
        ext_oci::StoreOptions {
            cache_dir: self.cache_dir.clone(),
            insecure_registries: self.insecure_registries.clone(),
            stall_timeout: Some(std::time::Duration::from_secs_f64(self.stall_timeout.max(0.1))),
        }
    }
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub store: StoreArgs,

    /// The image to extend: oci:DIR[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]. `FROM
    /// ${base_image}` resolves to it and it is passed as the build arg `base_image`.
    #[arg(long, value_name = "REF")]
    pub from: String,

    /// A Dockerfile to apply; repeat to apply several in order on the same image (as the CNB
    /// extend phase does, one per extension). Default: `Dockerfile` in the context.
    #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
    pub files: Vec<PathBuf>,

    /// Build context (the extension layer): COPY/ADD sources resolve only inside it. Give one
    /// for all Dockerfiles, or one per -f, in the same order. Default: the current directory.
    #[arg(long = "context", value_name = "DIR")]
    pub contexts: Vec<PathBuf>,

    /// A build arg, `KEY=VALUE`, or `KEY` to take the value from the environment. Repeatable.
    #[arg(long = "build-arg", value_name = "KEY[=VALUE]")]
    pub build_args: Vec<String>,

    /// Where to write the result: oci:DIR[:TAG] (tag defaults to `latest`; other tags in an
    /// existing layout are kept; the layout is updated atomically) or
    /// docker://HOST[:PORT]/REPO[:TAG] (only missing blobs are pushed; the tag is set last).
    #[arg(short, long, value_name = "REF")]
    pub output: String,

    /// Platform to pick from a multi-platform base: os/arch[/variant]. Default: this machine's.
    /// (Named as in `extend` and `export`, where `--platform` is the CNB platform directory;
    /// `--platform` still works here.)
    #[arg(long = "target-platform", alias = "platform", value_name = "PLATFORM")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub compression: CompressionArgs,

    /// How RUN changes are found: `overlay` (an overlayfs upper dir: cost follows the
    /// changes), `stat` (a stat index of the rootfs before and after), or `auto` (overlay when
    /// the kernel allows it here).
    #[arg(long, default_value = "auto", value_name = "MODE")]
    pub snapshot: ext_rootfs::SnapshotMode,

    /// An image path whose changes never go into a layer (repeatable), e.g. /workspace.
    #[arg(long = "ignore-path", value_name = "PATH")]
    pub ignore_paths: Vec<String>,

    /// Where the private scratch directory (the RUN rootfs) is created. Default: $TMPDIR.
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,

    #[command(flatten)]
    pub executor: ExecutorArgs,

    #[command(flatten)]
    pub step_cache: crate::cache::StepCacheArgs,

    /// Print a JSON summary (manifest digest, config digest, layers) instead of the digest.
    #[arg(long)]
    pub json: bool,
}
