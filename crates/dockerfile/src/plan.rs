//! From instructions to a [`Plan`]: typed steps with every word expanded as Docker would, given
//! the build args and the environment of the image the Dockerfile applies to.
//!
//! Expansion rules (Docker/BuildKit): ARGs before FROM are visible only to FROM; an ARG after
//! FROM takes its value from the build args, else its default, else the global ARG of the same
//! name; ENV (including the base image's) wins over ARG of the same name; RUN text is never
//! expanded (declared ARGs reach the command as environment variables instead).

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use crate::error::{DockerfileError, Location};
use crate::expand::{ShellLex, VarLookup};
use crate::mount::{MountKind, RunMount};
use crate::parse::{Dockerfile, Flag, Instruction, Kind, RawCommand, RawSource, Warning};
use crate::words::{parse_args, parse_name_values};

/// Build args Docker passes to RUN without an ARG declaration.
pub const PREDEFINED_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// How many bytes of ARG and ENV values (names included) a Dockerfile may define on top of the
/// image's own `Env`. Docker has no limit, but a few lines of `ARG L2=${L1}${L1}` would
/// otherwise take gigabytes; real Dockerfiles stay far below.
pub const MAX_VARIABLES_BYTES: usize = 2 << 20;

/// How many bytes all expanded words of a plan may add up to (every RUN carries a copy of the
/// declared ARGs, so this also bounds many RUNs after a large ARG).
pub const MAX_PLAN_BYTES: usize = 32 << 20;

/// A Dockerfile with every word expanded, ready for the executor.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: String,
    pub from: ResolvedFrom,
    pub steps: Vec<Step>,
    pub warnings: Vec<Warning>,
    /// Variables an instruction expanded that nothing defines (the UndefinedVar check).
    pub undefined_vars: Vec<UndefinedVar>,
}

/// A variable used before anything defines it: `$name` at `line`, and the defined name it
/// is likely a typo of (edit distance at most 2), if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UndefinedVar {
    pub line: usize,
    pub name: String,
    pub suggestion: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedFrom {
    pub line: usize,
    /// The expanded image name.
    pub image: String,
    /// True when FROM names the image being extended (`FROM ${base_image}`, or no FROM):
    /// otherwise the Dockerfile switches to another image.
    pub extends_base: bool,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub line: usize,
    /// Source text of the instruction, for history and messages.
    pub text: String,
    pub op: Op,
}

impl Step {
    /// `file:line`, for messages about this step.
    pub fn location(&self, file: &str) -> Location {
        Location { file: file.into(), line: self.line }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// ARG: no effect on the image; kept for history.
    Arg(Vec<(String, Option<String>)>),
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    User(String),
    Workdir(String),
    Shell(Vec<String>),
    Copy(CopyOp),
    Run(RunOp),
    Config(ConfigOp),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyOp {
    /// ADD (archives extracted, URLs recognised) rather than COPY.
    pub add: bool,
    pub sources: Vec<CopySource>,
    pub dest: String,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `--exclude` patterns (`.dockerignore` syntax), matched against the paths below each
    /// source, as BuildKit's copy does (a source itself is never excluded).
    pub exclude: Vec<String>,
    /// `--parents`: each source keeps its path from the context root (or from a `/./` pivot)
    /// under the destination.
    pub parents: bool,
    /// `COPY --from=IMAGE`: the sources are paths in that image's filesystem, not in the build
    /// context. The reference as written (expanded): a Docker name (`busybox`,
    /// `ghcr.io/o/r:t`), `docker://HOST/REPO[:TAG|@DIGEST]` or `oci:DIR[:TAG]`.
    pub from: Option<String>,
    /// `ADD --checksum=sha256:HEX`: the digest the one URL source must have.
    pub checksum: Option<String>,
    /// `ADD --unpack`: whether archives are extracted (default: local ones are, downloaded
    /// ones are not, as in BuildKit).
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopySource {
    /// A path or glob relative to the build context.
    Path(String),
    /// An `http(s)://` URL (ADD only).
    Url(String),
    /// A here-document: file name and content.
    Inline { name: String, content: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOp {
    pub command: RunCommand,
    /// Declared ARGs with a value, passed to the command as environment (image ENV wins).
    pub args_env: Vec<(String, String)>,
    /// Docker's predefined proxy args (`HTTP_PROXY`, ...) given as build args but not declared
    /// by an ARG: passed to the command too, but, as in Docker, no part of the step cache key.
    pub proxy_env: Vec<(String, String)>,
    pub network: Option<String>,
    /// `--mount`s, in order (values expanded; relative targets not yet joined with WORKDIR).
    pub mounts: Vec<RunMount>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunCommand {
    /// Run through the image's SHELL (`/bin/sh -c` by default).
    Shell(String),
    /// Exec form: argv as given.
    Exec(Vec<String>),
    /// A here-document starting with `#!`: written to a file and executed.
    Script(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigOp {
    /// `prepend_shell`: shell form; the executor prefixes the image's SHELL.
    Cmd {
        args: Vec<String>,
        prepend_shell: bool,
    },
    Entrypoint {
        args: Vec<String>,
        prepend_shell: bool,
    },
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    /// Docker's `Healthcheck` object: Test, Interval, Timeout, StartPeriod, StartInterval, Retries.
    Healthcheck(Healthcheck),
    Maintainer(String),
    Onbuild(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Healthcheck {
    pub test: Vec<String>,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub start_period_ns: Option<u64>,
    pub start_interval_ns: Option<u64>,
    pub retries: Option<u64>,
}

/// Variables for expansion: ENV entries first (they win), then ARGs.
struct Scope<'a> {
    env: &'a HashMap<String, String>,
    args: &'a BTreeMap<String, String>,
    /// Bytes of expanded words the plan may still produce.
    budget: &'a Budget,
    /// Names looked up and not found (for the UndefinedVar build check), if recorded.
    missing: Option<&'a std::cell::RefCell<std::collections::BTreeSet<String>>>,
}

/// What is left of [`MAX_PLAN_BYTES`].
struct Budget(Cell<usize>);

impl Budget {
    fn new() -> Budget {
        Budget(Cell::new(MAX_PLAN_BYTES))
    }

    fn charge(&self, bytes: usize, at: &Location) -> Result<(), DockerfileError> {
        match self.0.get().checked_sub(bytes) {
            Some(left) => {
                self.0.set(left);
                Ok(())
            }
            None => Err(DockerfileError::Invalid {
                at: at.clone(),
                message: format!(
                    "the Dockerfile expands to more than {} MiB of words and variables",
                    MAX_PLAN_BYTES >> 20
                ),
            }),
        }
    }
}

fn pairs_bytes<'a>(pairs: impl IntoIterator<Item = (&'a String, &'a String)>) -> usize {
    pairs.into_iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// An error when the variables a Dockerfile defined (`defined` bytes beyond the image's own)
/// exceed [`MAX_VARIABLES_BYTES`].
fn check_variables(defined: usize, at: &Location) -> Result<(), DockerfileError> {
    if defined > MAX_VARIABLES_BYTES {
        return Err(DockerfileError::Invalid {
            at: at.clone(),
            message: format!("ARG and ENV values add up to more than {} MiB", MAX_VARIABLES_BYTES >> 20),
        });
    }
    Ok(())
}

impl VarLookup for Scope<'_> {
    fn lookup(&self, name: &str) -> Option<&str> {
        let found = self.env.get(name).map(String::as_str).or_else(|| self.args.get(name).map(String::as_str));
        if found.is_none()
            && let Some(missing) = self.missing
        {
            missing.borrow_mut().insert(name.to_string());
        }
        found
    }
}

impl Dockerfile {
    /// The expanded FROM: global ARGs and build args only.
    pub fn resolve_from(&self, build_args: &BTreeMap<String, String>) -> Result<ResolvedFrom, DockerfileError> {
        let lex = ShellLex::new(self.escape);
        let globals = self.global_arg_values(build_args)?;
        let at = self.at(self.from.line);
        let budget = Budget::new();
        let image = expand_word(
            &lex,
            &self.from.image,
            &Scope { env: &HashMap::new(), args: &globals, budget: &budget, missing: None },
            &at,
        )?;
        if image.trim().is_empty() {
            let missing = if self.from.image.contains("base_image") {
                "; the build arg `base_image` is not set (pass --from)"
            } else {
                ""
            };
            return Err(DockerfileError::Invalid {
                at,
                message: format!("FROM {} expands to an empty image name{missing}", self.from.image),
            });
        }
        let extends_base = self.from.implicit
            || self.from.image == "${base_image}"
            || build_args.get("base_image").is_some_and(|b| *b == image);
        Ok(ResolvedFrom { line: self.from.line, image, extends_base })
    }

    /// Plans the Dockerfile against an image whose config `Env` is `image_env`.
    /// The names the file's ARG instructions declare (before and after FROM): the build args
    /// it consumes.
    pub fn declared_args(&self) -> Vec<String> {
        self.global_args
            .iter()
            .chain(&self.instructions)
            .filter_map(|i| match &i.kind {
                Kind::Arg(text) => parse_args(text, self.escape).ok(),
                _ => None,
            })
            .flatten()
            .map(|p| p.key)
            .collect()
    }

    pub fn plan(
        &self,
        build_args: &BTreeMap<String, String>,
        image_env: &[(String, String)],
    ) -> Result<Plan, DockerfileError> {
        let from = self.resolve_from(build_args)?;
        let lex = ShellLex::new(self.escape);
        let globals = self.global_arg_values(build_args)?;
        // Maps, and byte counts kept as they change: a lookup or a bound check must not cost
        // a pass over every variable, or 100,000 ENV lines take quadratic time.
        let mut env: HashMap<String, String> = image_env.iter().cloned().collect();
        let image_env_bytes = pairs_bytes(env.iter());
        let mut env_bytes = image_env_bytes;
        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut args_bytes = 0usize;
        let mut steps = Vec::with_capacity(self.instructions.len());
        let budget = Budget::new();
        // For the UndefinedVar check: the ARGs this stage declared (with a value or not) and
        // the names each instruction looked up in vain.
        let mut declared_names: std::collections::BTreeSet<String> = Default::default();
        let missing = std::cell::RefCell::new(std::collections::BTreeSet::new());
        let mut undefined_vars = Vec::new();

        for ins in &self.instructions {
            let at = self.at(ins.line);
            missing.borrow_mut().clear();
            let op = {
                let scope = Scope { env: &env, args: &args, budget: &budget, missing: Some(&missing) };
                let word = |w: &str| expand_word(&lex, w, &scope, &at);
                match &ins.kind {
                    Kind::Arg(text) => {
                        let pairs = parse_args(text, self.escape).map_err(|m| self.invalid(ins, m))?;
                        let mut declared = Vec::new();
                        for p in pairs {
                            let default = p.value.as_deref().map(&word).transpose()?;
                            let value = build_args
                                .get(&p.key)
                                .cloned()
                                .or_else(|| default.clone())
                                .or_else(|| globals.get(&p.key).cloned());
                            declared.push((p.key, default, value));
                        }
                        // Applied after the loop so `ARG a=1 b=$a` sees `a` like BuildKit does
                        // only from the next instruction on.
                        let op = Op::Arg(declared.iter().map(|(k, d, _)| (k.clone(), d.clone())).collect());
                        for (k, _, v) in declared {
                            match v {
                                Some(v) => {
                                    args_bytes += k.len() + v.len();
                                    if let Some(old) = args.insert(k.clone(), v) {
                                        args_bytes -= k.len() + old.len();
                                    }
                                }
                                None => {
                                    if let Some(old) = args.remove(&k) {
                                        args_bytes -= k.len() + old.len();
                                    }
                                }
                            }
                        }
                        op
                    }
                    Kind::Env(text) => {
                        let pairs = self.pairs(ins, text, "ENV", &word)?;
                        for (k, v) in &pairs {
                            env_bytes += k.len() + v.len();
                            if let Some(old) = env.insert(k.clone(), v.clone()) {
                                env_bytes -= k.len() + old.len();
                            }
                        }
                        Op::Env(pairs)
                    }
                    Kind::Label(text) => Op::Label(self.pairs(ins, text, "LABEL", &word)?),
                    Kind::User(u) => {
                        let user = word(u)?;
                        if user.is_empty() {
                            return Err(self.invalid(ins, "USER expands to an empty user".into()));
                        }
                        Op::User(user)
                    }
                    Kind::Workdir(w) => {
                        let dir = word(w)?;
                        if dir.is_empty() {
                            return Err(self.invalid(ins, "WORKDIR expands to an empty path".into()));
                        }
                        Op::Workdir(dir)
                    }
                    Kind::Shell(s) => {
                        if s.is_empty() {
                            return Err(
                                self.invalid(ins, "SHELL needs a JSON array, e.g. [\"/bin/sh\", \"-c\"]".into())
                            );
                        }
                        Op::Shell(s.clone())
                    }
                    Kind::Copy { add, flags, sources, dest } => {
                        Op::Copy(self.copy_op(ins, *add, flags, sources, dest, &lex, &scope, &at)?)
                    }
                    Kind::Run { flags, command, heredocs } => {
                        let network = flags.iter().find(|f| f.name == "network").and_then(|f| f.value.clone());
                        if let Some(n) = &network
                            && !matches!(n.as_str(), "default" | "none" | "host")
                        {
                            return Err(self.invalid(ins, format!("RUN --network={n}: expected default, none or host")));
                        }
                        let mut mounts = Vec::new();
                        for f in flags.iter().filter(|f| f.name == "mount") {
                            let Some(value) = &f.value else {
                                return Err(self.invalid(
                                    ins,
                                    "RUN --mount needs a value, e.g. --mount=type=cache,target=/root/.cache".into(),
                                ));
                            };
                            let ssh_index =
                                mounts.iter().filter(|m: &&RunMount| matches!(m.kind, MountKind::Ssh { .. })).count();
                            // An expansion error is reported as itself, not as a bad field.
                            let mut failed = None;
                            let mut expand = |w: &str| {
                                word(w).map_err(|e| {
                                    failed = Some(e);
                                    String::new()
                                })
                            };
                            let parsed = RunMount::parse(value, ssh_index, &mut expand);
                            if let Some(e) = failed {
                                return Err(e);
                            }
                            let mount = parsed.map_err(|m| self.invalid(ins, format!("RUN --mount={value}: {m}")))?;
                            if let Some(t) = &mount.target
                                && mounts.iter().any(|m: &RunMount| m.target.as_ref() == Some(t))
                            {
                                return Err(self.invalid(ins, format!("RUN --mount: two mounts have the target {t}")));
                            }
                            mounts.push(mount);
                        }
                        let command = match (command, heredocs.as_slice()) {
                            (RawCommand::Exec(argv), []) => RunCommand::Exec(argv.clone()),
                            (RawCommand::Shell(cmd), []) => RunCommand::Shell(cmd.clone()),
                            (RawCommand::Shell(cmd), [RawSource::HereDoc { body, .. }]) if cmd.trim().is_empty() => {
                                if body.starts_with("#!") {
                                    RunCommand::Script(body.clone())
                                } else {
                                    RunCommand::Shell(body.clone())
                                }
                            }
                            _ => {
                                return Err(self.invalid(
                                    ins,
                                    "RUN with a here-document is supported only as `RUN <<EOF` (one here-document that is the whole command)".into(),
                                ));
                            }
                        };
                        let args_env: Vec<(String, String)> =
                            args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
                        let mut proxy_env = Vec::new();
                        for p in PREDEFINED_ARGS {
                            if let Some(v) = build_args.get(*p)
                                && !args.contains_key(*p)
                            {
                                proxy_env.push(((*p).to_string(), v.clone()));
                            }
                        }
                        budget.charge(pairs_bytes(args_env.iter().chain(&proxy_env).map(|(k, v)| (k, v))), &at)?;
                        Op::Run(RunOp { command, args_env, proxy_env, network, mounts })
                    }
                    Kind::Cmd(c) => {
                        let (args, prepend_shell) = command_args(c);
                        Op::Config(ConfigOp::Cmd { args, prepend_shell })
                    }
                    Kind::Entrypoint(c) => {
                        let (args, prepend_shell) = command_args(c);
                        Op::Config(ConfigOp::Entrypoint { args, prepend_shell })
                    }
                    Kind::Expose(ports) => {
                        let mut out = Vec::new();
                        for p in ports {
                            let p = word(p)?;
                            out.push(if p.contains('/') { p } else { format!("{p}/tcp") });
                        }
                        Op::Config(ConfigOp::Expose(out))
                    }
                    Kind::Volume(v) => {
                        Op::Config(ConfigOp::Volume(v.iter().map(|p| word(p)).collect::<Result<_, _>>()?))
                    }
                    Kind::Stopsignal(s) => Op::Config(ConfigOp::StopSignal(word(s)?)),
                    Kind::Healthcheck { flags, command } => {
                        Op::Config(ConfigOp::Healthcheck(self.healthcheck(ins, flags, command.as_ref())?))
                    }
                    Kind::Maintainer(m) => Op::Config(ConfigOp::Maintainer(m.clone())),
                    Kind::Onbuild(o) => Op::Config(ConfigOp::Onbuild(o.clone())),
                }
            };
            if matches!(op, Op::Arg(_) | Op::Env(_)) {
                let defined = (args_bytes + env_bytes).saturating_sub(image_env_bytes);
                check_variables(defined, &at)?;
            }
            // BuildKit reports what the frontend expands (not RUN's words, which the shell
            // expands) and misses only names no ARG of the stage declares, as of before this
            // instruction's own declarations.
            if !matches!(op, Op::Run(_)) {
                for name in missing.borrow().iter().filter(|n| !declared_names.contains(*n)) {
                    let options = env.keys().chain(args.keys()).map(String::as_str);
                    undefined_vars.push(UndefinedVar {
                        line: ins.line,
                        name: name.clone(),
                        suggestion: crate::checks::suggest(name, options),
                    });
                }
            }
            if let Op::Arg(pairs) = &op {
                declared_names.extend(pairs.iter().map(|(k, _)| k.clone()));
            }
            steps.push(Step { line: ins.line, text: ins.text.clone(), op });
        }
        Ok(Plan { file: self.file.clone(), from, steps, warnings: self.warnings.clone(), undefined_vars })
    }

    fn at(&self, line: usize) -> Location {
        Location { file: self.file.clone(), line }
    }

    fn invalid(&self, ins: &Instruction, message: String) -> DockerfileError {
        DockerfileError::Invalid { at: self.at(ins.line), message }
    }

    /// Values of the ARGs before FROM: build arg, else the expanded default.
    fn global_arg_values(
        &self,
        build_args: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, DockerfileError> {
        let lex = ShellLex::new(self.escape);
        let mut values = BTreeMap::new();
        // CNB run.Dockerfiles may write `FROM ${base_image}` without declaring the ARG, so the
        // image being extended is always visible to FROM.
        if let Some(b) = build_args.get("base_image") {
            values.insert("base_image".to_string(), b.clone());
        }
        let budget = Budget::new();
        for ins in &self.global_args {
            let Kind::Arg(text) = &ins.kind else { continue };
            let at = self.at(ins.line);
            for p in parse_args(text, self.escape).map_err(|m| self.invalid(ins, m))? {
                let default = match &p.value {
                    Some(d) => Some(expand_word(
                        &lex,
                        d,
                        &Scope { env: &HashMap::new(), args: &values, budget: &budget, missing: None },
                        &at,
                    )?),
                    None => None,
                };
                if let Some(v) = build_args.get(&p.key).cloned().or(default) {
                    values.insert(p.key, v);
                }
            }
            check_variables(pairs_bytes(&values), &at)?;
        }
        Ok(values)
    }

    fn pairs(
        &self,
        ins: &Instruction,
        text: &str,
        what: &str,
        word: &dyn Fn(&str) -> Result<String, DockerfileError>,
    ) -> Result<Vec<(String, String)>, DockerfileError> {
        parse_name_values(text, self.escape, what)
            .map_err(|m| self.invalid(ins, m))?
            .into_iter()
            .map(|p| {
                let key = word(&p.key)?;
                let value = word(p.value.as_deref().unwrap_or(""))?;
                if key.is_empty() {
                    return Err(self.invalid(ins, format!("{what} name `{}` expands to nothing", p.key)));
                }
                Ok((key, value))
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_op(
        &self,
        ins: &Instruction,
        add: bool,
        flags: &[Flag],
        sources: &[RawSource],
        dest: &str,
        lex: &ShellLex,
        scope: &Scope<'_>,
        at: &Location,
    ) -> Result<CopyOp, DockerfileError> {
        let name = if add { "ADD" } else { "COPY" };
        let flag = |n: &str| -> Result<Option<String>, DockerfileError> {
            match flags.iter().find(|f| f.name == n) {
                Some(Flag { value: Some(v), .. }) => Ok(Some(expand_word(lex, v, scope, at)?)),
                Some(Flag { value: None, .. }) => Err(self.invalid(ins, format!("{name} --{n} needs a value"))),
                None => Ok(None),
            }
        };
        let chown = flag("chown")?;
        let chmod = flag("chmod")?;
        let from = flag("from")?;
        if let Some(f) = &from {
            if f.is_empty() {
                return Err(self.invalid(ins, "COPY --from expands to an empty image reference".to_string()));
            }
            // A number is a stage index (0 is this Dockerfile's only stage), a name equal to
            // `FROM ... AS name` is that stage: both are a multi-stage build.
            let is_stage =
                f.bytes().all(|b| b.is_ascii_digit()) || self.from.stage.as_deref() == Some(&f.to_lowercase());
            if is_stage {
                return Err(DockerfileError::CopyFromStage { at: at.clone(), stage: f.clone() });
            }
        }
        let mut exclude = Vec::new();
        for f in flags.iter().filter(|f| f.name == "exclude") {
            match &f.value {
                Some(v) if !v.is_empty() => exclude.push(expand_word(lex, v, scope, at)?),
                _ => return Err(self.invalid(ins, format!("{name} --exclude needs a pattern"))),
            }
        }
        let parents = match flags.iter().find(|f| f.name == "parents") {
            None => false,
            Some(Flag { value: None, .. }) => true,
            Some(Flag { value: Some(v), .. }) => {
                crate::mount::parse_bool("--parents", v).map_err(|e| self.invalid(ins, format!("{name} {e}")))?
            }
        };
        if let Some(m) = &chmod {
            crate::chmod::Chmod::parse(m).map_err(|e| self.invalid(ins, format!("{name} --chmod: {e}")))?;
        }
        let checksum = flag("checksum")?;
        if let Some(c) = &checksum {
            let hex = c.strip_prefix("sha256:").unwrap_or_default();
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                return Err(
                    self.invalid(ins, format!("ADD --checksum={c}: expected sha256: and 64 lowercase hex digits"))
                );
            }
        }
        let unpack = match flags.iter().find(|f| f.name == "unpack") {
            None => None,
            Some(Flag { value: None, .. }) => Some(true),
            Some(Flag { value: Some(v), .. }) => {
                Some(crate::mount::parse_bool("--unpack", v).map_err(|e| self.invalid(ins, format!("{name} {e}")))?)
            }
        };
        let mut out = Vec::with_capacity(sources.len());
        for s in sources {
            out.push(match s {
                RawSource::Path(p) => {
                    let p = expand_word(lex, p, scope, at)?;
                    if is_git_source(&p) {
                        return Err(self.invalid(
                            ins,
                            format!(
                                "{name} of a git repository ({p}) is not supported; clone it in bin/generate into the extension layer and COPY it from there"
                            ),
                        ));
                    } else if p.starts_with("http://") || p.starts_with("https://") {
                        if !add {
                            return Err(self.invalid(ins, format!("COPY cannot fetch a URL ({p}); use ADD")));
                        }
                        CopySource::Url(p)
                    } else {
                        CopySource::Path(p)
                    }
                }
                RawSource::HereDoc { name, body, expand } => {
                    let content = if *expand { expand_heredoc(lex, body, scope, at)? } else { body.clone() };
                    CopySource::Inline { name: name.clone(), content }
                }
            });
        }
        let dest = expand_word(lex, dest, scope, at)?;
        if dest.is_empty() {
            return Err(self.invalid(ins, format!("{name} destination expands to an empty path")));
        }
        if from.is_some() && out.iter().any(|s| matches!(s, CopySource::Inline { .. })) {
            return Err(self.invalid(ins, "COPY --from copies files of an image, not here-documents".to_string()));
        }
        if checksum.is_some() {
            // BuildKit's rules for --checksum.
            if out.len() != 1 {
                return Err(self.invalid(ins, "ADD --checksum can't be specified for multiple sources".into()));
            }
            if !matches!(out[0], CopySource::Url(_)) {
                return Err(self.invalid(ins, "ADD --checksum requires an HTTP(S) source".into()));
            }
        }
        Ok(CopyOp { add, sources: out, dest, chown, chmod, exclude, parents, from, checksum, unpack })
    }

    fn healthcheck(
        &self,
        ins: &Instruction,
        flags: &[Flag],
        command: Option<&RawCommand>,
    ) -> Result<Healthcheck, DockerfileError> {
        let mut hc = Healthcheck {
            test: match command {
                None => vec!["NONE".into()],
                Some(RawCommand::Shell(s)) => vec!["CMD-SHELL".into(), s.clone()],
                Some(RawCommand::Exec(argv)) => {
                    std::iter::once("CMD".to_string()).chain(argv.iter().cloned()).collect()
                }
            },
            ..Default::default()
        };
        for f in flags {
            let v = f.value.as_deref().unwrap_or("");
            let dur = || {
                parse_duration(v).ok_or_else(|| {
                    self.invalid(ins, format!("HEALTHCHECK --{}={v}: not a duration like 30s or 1m30s", f.name))
                })
            };
            match f.name.as_str() {
                "interval" => hc.interval_ns = Some(dur()?),
                "timeout" => hc.timeout_ns = Some(dur()?),
                "start-period" => hc.start_period_ns = Some(dur()?),
                "start-interval" => hc.start_interval_ns = Some(dur()?),
                "retries" => {
                    hc.retries = Some(
                        v.parse().map_err(|_| self.invalid(ins, format!("HEALTHCHECK --retries={v}: not a number")))?,
                    )
                }
                other => {
                    return Err(DockerfileError::UnsupportedFlag {
                        at: self.at(ins.line),
                        instruction: "HEALTHCHECK",
                        flag: other.into(),
                        supported: "--interval, --timeout, --start-period, --start-interval, --retries",
                    });
                }
            }
        }
        Ok(hc)
    }
}

fn expand_word(lex: &ShellLex, word: &str, scope: &Scope<'_>, at: &Location) -> Result<String, DockerfileError> {
    let expanded = lex.process_word(word, scope).map_err(|source| DockerfileError::Expand {
        at: at.clone(),
        word: quote_word(word),
        source,
    })?;
    scope.budget.charge(expanded.len(), at)?;
    Ok(expanded)
}

/// A word as quoted in an error: cut after 200 characters (a word that hit a limit may be
/// huge).
fn quote_word(word: &str) -> String {
    const MAX: usize = 200;
    match word.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &word[..cut]),
        None => word.to_string(),
    }
}

/// Here-document bodies expand variables but keep quotes and whitespace, like a shell heredoc.
fn expand_heredoc(lex: &ShellLex, body: &str, scope: &Scope<'_>, at: &Location) -> Result<String, DockerfileError> {
    let mut out = String::with_capacity(body.len());
    for line in body.split_inclusive('\n') {
        let (content, nl) = match line.strip_suffix('\n') {
            Some(c) => (c, "\n"),
            None => (line, ""),
        };
        // Quotes are protected from the word lexer so they survive; only `$` forms expand.
        let protected = content.replace('\\', "\\\\").replace('"', "\\\"").replace('\'', "\\'");
        out.push_str(&expand_word(lex, &protected, scope, at)?);
        out.push_str(nl);
    }
    Ok(out)
}

fn command_args(c: &RawCommand) -> (Vec<String>, bool) {
    match c {
        RawCommand::Exec(argv) => (argv.clone(), false),
        RawCommand::Shell(s) => (vec![s.clone()], true),
    }
}

/// Go-style durations as Docker's HEALTHCHECK flags take them: `30s`, `1m30s`, `500ms`, `1h`.
pub fn parse_duration(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(total as u64)
}

/// Whether an ADD source is a git repository, as BuildKit tells them (`git@host:…`,
/// `git://…`, `ssh://…`, or an http(s) URL whose path ends in `.git`, maybe with `#ref`).
fn is_git_source(p: &str) -> bool {
    if p.starts_with("git@") || p.starts_with("git://") || p.starts_with("ssh://") {
        return true;
    }
    if p.starts_with("http://") || p.starts_with("https://") {
        let without_fragment = p.split('#').next().unwrap_or(p);
        let path = without_fragment.split('?').next().unwrap_or(without_fragment);
        return path.trim_end_matches('/').ends_with(".git");
    }
    false
}
