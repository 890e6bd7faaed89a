//! From Dockerfile text to owned, validated instructions. Parsing is `parse-dockerfile`'s job;
//! here we keep line numbers and the source text, enforce the CNB single-stage subset, and turn
//! config-only instructions outside that subset into warnings.

use parse_dockerfile as pd;

use crate::error::{DockerfileError, Location};
use crate::heredoc::{self, HereDoc};
use crate::words::join_continuations;

/// The FROM that a Dockerfile without one is given, so `ext-extend build -f` works on files that
/// only list the changes (CNB allows an omitted FROM in run.Dockerfiles).
const IMPLICIT_FROM: &str = "FROM ${base_image}\n";

/// A parsed, validated single-stage Dockerfile.
#[derive(Debug, Clone)]
pub struct Dockerfile {
    /// Display name used in errors (usually the path).
    pub file: String,
    /// The escape character (`\` or the `# escape=` directive's).
    pub escape: char,
    /// ARG instructions before FROM (only visible to FROM).
    pub global_args: Vec<Instruction>,
    /// The FROM instruction; `implicit` if the file had none.
    pub from: From,
    /// Instructions after FROM, in order.
    pub instructions: Vec<Instruction>,
    /// Non-fatal findings (config-only instructions outside the CNB subset).
    pub warnings: Vec<Warning>,
    /// The `# syntax=` directive's value: BuildKit would load that frontend image; we have
    /// one front end of our own, so it is only reported (see [`Dockerfile::syntax_note`]).
    pub syntax: Option<String>,
    /// The `# check=` directive's value and its line: which build checks to skip, and whether
    /// their findings fail the build (see [`crate::checks`]).
    pub check: Option<(String, usize)>,
    /// Last lines of instructions that have an empty line inside a continuation (BuildKit's
    /// NoEmptyContinuation check).
    pub empty_continuations: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct From {
    pub line: usize,
    /// The image word, unexpanded (normally `${base_image}`).
    pub image: String,
    /// True when the file had no FROM and `FROM ${base_image}` was assumed.
    pub implicit: bool,
    /// The stage name of `FROM image AS name`, lowercased (BuildKit's stage names are
    /// case-insensitive): `COPY --from=` naming it is a second stage, not an image.
    pub stage: Option<String>,
    /// The instruction as written (`FROM ${base_image} AS final`), for the casing checks.
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub at: Location,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// One instruction with its source line and normalized text (used in history and errors).
#[derive(Debug, Clone)]
pub struct Instruction {
    pub line: usize,
    /// The instruction as written, continuations joined (e.g. `RUN apt-get update && ...`).
    pub text: String,
    pub kind: Kind,
}

/// A `--name[=value]` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub enum RawSource {
    Path(String),
    /// `<<NAME` here-document: the file name (delimiter), body, and whether `$VARS` expand in it.
    HereDoc {
        name: String,
        body: String,
        expand: bool,
    },
}

#[derive(Debug, Clone)]
pub enum RawCommand {
    /// Shell form, continuations joined.
    Shell(String),
    /// Exec (JSON) form.
    Exec(Vec<String>),
}

/// Instructions, with arguments still unexpanded (expansion needs the image's environment,
/// which only the planner has).
#[derive(Debug, Clone)]
pub enum Kind {
    Arg(String),
    Env(String),
    Label(String),
    User(String),
    Workdir(String),
    Shell(Vec<String>),
    Copy { add: bool, flags: Vec<Flag>, sources: Vec<RawSource>, dest: String },
    Run { flags: Vec<Flag>, command: RawCommand, heredocs: Vec<RawSource> },
    Cmd(RawCommand),
    Entrypoint(RawCommand),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Stopsignal(String),
    Healthcheck { flags: Vec<Flag>, command: Option<RawCommand> },
    Maintainer(String),
    Onbuild(String),
}

impl Dockerfile {
    /// Parses and validates `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Dockerfile, DockerfileError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let (text, docs) = heredoc::extract(text, file)?;
        let text = text.as_str();
        let docs = docs.as_slice();
        match parse_raw(text, file, None, docs) {
            Err(e) if needs_implicit_from(&e) => {
                let at = directives_end(text);
                let mut with_from = String::with_capacity(text.len() + IMPLICIT_FROM.len());
                with_from.push_str(&text[..at]);
                with_from.push_str(IMPLICIT_FROM);
                with_from.push_str(&text[at..]);
                parse_raw(&with_from, file, Some(at), docs)
            }
            other => other,
        }
    }

    /// The debug line for a `# syntax=` directive: accepted, and not used.
    pub fn syntax_note(&self) -> Option<String> {
        self.syntax.as_ref().map(|s| {
            format!("{}: `# syntax={s}` is not used: ext-extend parses Dockerfiles with its own front end", self.file)
        })
    }
}

/// Marker for the parser errors that mean "no FROM" (to retry with an implicit one).
fn needs_implicit_from(e: &DockerfileError) -> bool {
    matches!(e, DockerfileError::Syntax { message, .. }
        if message.starts_with("expected FROM") || message.starts_with("expected at least one FROM"))
}

/// Byte offset just past the parser directives (`# escape=` etc.) at the top of the file, where
/// an implicit FROM can go without turning the directives into comments.
fn directives_end(text: &str) -> usize {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        let is_directive = t.strip_prefix('#').is_some_and(|rest| {
            rest.split_once('=').is_some_and(|(k, _)| {
                let k = k.trim();
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphabetic())
            })
        });
        if !is_directive {
            break;
        }
        offset += line.len();
    }
    offset
}

/// Parses `text`. `implicit_from_at` is the byte offset where an implicit FROM line was
/// inserted, so reported lines can be mapped back to the user's file.
fn parse_raw(
    text: &str,
    file: &str,
    implicit_from_at: Option<usize>,
    docs: &[HereDoc],
) -> Result<Dockerfile, DockerfileError> {
    let lines = LineIndex::new(text, implicit_from_at);
    let parsed = pd::parse(text).map_err(|e| {
        let mut line = e.line();
        if let Some(at) = implicit_from_at
            && line > lines.line_of(at)
        {
            line -= 1;
        }
        let message = e.to_string();
        // parse-dockerfile appends its own "at line N column M"; we print our own location.
        let message = heredoc::restore(message.split(" at line ").next().unwrap_or(&message), docs);
        DockerfileError::Syntax { at: Location { file: file.into(), line }, message }
    })?;
    let escape = parsed.parser_directives.escape.as_ref().map_or('\\', |d| d.value.value);
    let syntax = parsed.parser_directives.syntax.as_ref().map(|d| d.value.value.to_string());
    let check =
        parsed.parser_directives.check.as_ref().map(|d| (d.value.value.to_string(), lines.line_of(d.value.span.start)));
    let mut empty_continuations = Vec::new();

    let mut global_args = Vec::new();
    let mut from: Option<From> = None;
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let starts: Vec<usize> = parsed.instructions.iter().map(instruction_start).collect();

    for (i, ins) in parsed.instructions.iter().enumerate() {
        let start = starts[i];
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let is_implicit = implicit_from_at == Some(start);
        let line = lines.line_of(start);
        let at = Location { file: file.into(), line };
        let source = heredoc::restore(&instruction_text(&text[start..end], escape), docs);
        if let Some(last) = empty_continuation(&text[start..end], escape) {
            empty_continuations.push(line + last);
        }

        if let pd::Instruction::From(f) = ins {
            if implicit_from_at.is_some() && !is_implicit {
                return Err(DockerfileError::Invalid {
                    at,
                    message: "FROM must come before every instruction but ARG".into(),
                });
            }
            if from.is_some() {
                return Err(DockerfileError::MultiStage { at });
            }
            if let Some(flag) = f.options.first() {
                return Err(DockerfileError::UnsupportedFlag {
                    at,
                    instruction: "FROM",
                    flag: flag.name.value.to_string(),
                    supported: "none",
                });
            }
            let stage = f.as_.as_ref().map(|(_, name)| name.value.to_lowercase());
            from = Some(From { line, image: f.image.value.to_string(), implicit: is_implicit, stage, text: source });
            continue;
        }

        let kind = convert(ins, text, escape, &at, docs, &mut warnings)?;
        let instruction = Instruction { line, text: source, kind };
        if from.is_none() {
            global_args.push(instruction);
        } else {
            instructions.push(instruction);
        }
    }

    let from = from.expect("parse-dockerfile guarantees a FROM");
    if from.implicit && instructions.is_empty() {
        return Err(DockerfileError::Empty { at: Location { file: file.into(), line: 0 } });
    }
    Ok(Dockerfile {
        file: file.into(),
        escape,
        global_args,
        from,
        instructions,
        warnings,
        syntax,
        check,
        empty_continuations,
    })
}

/// If the instruction at the start of `raw` (its text up to the next instruction) continues
/// over an empty line, how many lines after its first its last line is.
fn empty_continuation(raw: &str, escape: char) -> Option<usize> {
    let continues = |line: &str| line.trim_end().ends_with(escape);
    let mut lines = raw.lines().enumerate();
    let (_, first) = lines.next()?;
    if !continues(first) {
        return None;
    }
    let mut empty = false;
    for (n, line) in lines {
        let t = line.trim_start();
        if t.starts_with('#') {
            continue;
        }
        if t.is_empty() {
            empty = true;
            continue;
        }
        if !continues(line) {
            return empty.then_some(n);
        }
    }
    None
}

fn convert(
    ins: &pd::Instruction<'_>,
    text: &str,
    escape: char,
    at: &Location,
    docs: &[HereDoc],
    warnings: &mut Vec<Warning>,
) -> Result<Kind, DockerfileError> {
    let mut warn = |name: &str| {
        warnings.push(Warning {
            at: at.clone(),
            message: format!(
                "{name} is not one of the instructions image extensions should use ({}); it is applied to the image config",
                crate::error::ALLOWED_INSTRUCTIONS
            ),
        })
    };
    Ok(match ins {
        pd::Instruction::Arg(a) => Kind::Arg(a.arguments.value.to_string()),
        pd::Instruction::Env(e) => Kind::Env(e.arguments.value.to_string()),
        pd::Instruction::Label(l) => Kind::Label(l.arguments.value.to_string()),
        pd::Instruction::User(u) => Kind::User(u.arguments.value.to_string()),
        pd::Instruction::Workdir(w) => Kind::Workdir(w.arguments.value.to_string()),
        pd::Instruction::Shell(s) => Kind::Shell(s.arguments.iter().map(|a| a.value.to_string()).collect()),
        pd::Instruction::Copy(c) => copy_kind(false, &c.options, &c.src, &c.dest, docs, at)?,
        pd::Instruction::Add(c) => copy_kind(true, &c.options, &c.src, &c.dest, docs, at)?,
        pd::Instruction::Run(r) => {
            let flags = flags(&r.options);
            if let Some(f) = flags.iter().find(|f| !matches!(f.name.as_str(), "network" | "mount")) {
                return Err(DockerfileError::UnsupportedFlag {
                    at: at.clone(),
                    instruction: "RUN",
                    flag: f.name.clone(),
                    supported: "--network=default|none|host, --mount=type=bind|cache|tmpfs|secret|ssh,...",
                });
            }
            let (command, heredocs) = run_command(command(&r.arguments, escape), docs, at)?;
            Kind::Run { flags, command, heredocs }
        }
        pd::Instruction::Cmd(c) => {
            warn("CMD");
            Kind::Cmd(command(&c.arguments, escape))
        }
        pd::Instruction::Entrypoint(c) => {
            warn("ENTRYPOINT");
            Kind::Entrypoint(command(&c.arguments, escape))
        }
        pd::Instruction::Expose(e) => {
            warn("EXPOSE");
            Kind::Expose(e.arguments.iter().map(|a| a.value.to_string()).collect())
        }
        pd::Instruction::Volume(v) => {
            warn("VOLUME");
            Kind::Volume(match &v.arguments {
                pd::JsonOrStringArray::Json(j) => j.value.iter().map(|a| a.value.to_string()).collect(),
                pd::JsonOrStringArray::String(s) => s.iter().map(|a| a.value.to_string()).collect(),
            })
        }
        pd::Instruction::Stopsignal(s) => {
            warn("STOPSIGNAL");
            Kind::Stopsignal(s.arguments.value.to_string())
        }
        pd::Instruction::Healthcheck(h) => {
            warn("HEALTHCHECK");
            let command = match &h.arguments {
                pd::HealthcheckArguments::Cmd { arguments, .. } => Some(command(arguments, escape)),
                _ => None,
            };
            Kind::Healthcheck { flags: flags(&h.options), command }
        }
        pd::Instruction::Maintainer(m) => {
            warn("MAINTAINER");
            Kind::Maintainer(m.name.value.to_string())
        }
        pd::Instruction::Onbuild(o) => {
            warn("ONBUILD");
            let start = instruction_start(&o.instruction);
            Kind::Onbuild(instruction_text(&text[start..], escape).lines().next().unwrap_or("").to_string())
        }
        pd::Instruction::From(_) => unreachable!("FROM is handled by the caller"),
        _ => {
            return Err(DockerfileError::Invalid {
                at: at.clone(),
                message: "instruction not supported by ext-extend".into(),
            });
        }
    })
}

fn copy_kind(
    add: bool,
    options: &[pd::Flag<'_>],
    src: &[pd::Source<'_>],
    dest: &pd::UnescapedString<'_>,
    docs: &[HereDoc],
    at: &Location,
) -> Result<Kind, DockerfileError> {
    let instruction = if add { "ADD" } else { "COPY" };
    let flags = flags(options);
    for f in &flags {
        match f.name.as_str() {
            "chown" | "chmod" | "link" | "exclude" => {}
            "parents" | "from" if !add => {}
            "checksum" | "unpack" if add => {}
            other => {
                return Err(DockerfileError::UnsupportedFlag {
                    at: at.clone(),
                    instruction,
                    flag: other.to_string(),
                    supported: if add {
                        "--chown, --chmod, --link, --exclude, --checksum, --unpack"
                    } else {
                        "--from, --chown, --chmod, --link, --exclude, --parents"
                    },
                });
            }
        }
    }
    let sources = src
        .iter()
        .map(|s| match s {
            pd::Source::Path(p) => match heredoc::placeholder_index(&p.value).and_then(|n| docs.get(n)) {
                Some(d) => RawSource::HereDoc { name: d.name.clone(), body: d.content(), expand: d.expand },
                None => RawSource::Path(p.value.to_string()),
            },
            _ => RawSource::Path(String::new()),
        })
        .collect();
    Ok(Kind::Copy { add, flags, sources, dest: heredoc::restore(&dest.value, docs) })
}

/// A RUN's command with its here-documents, as BuildKit runs them: a command that is just one
/// here-document runs the body (as a script if it starts with `#!`), any other shell command
/// runs with its here-documents appended, for the shell to read (`RUN python3 <<EOF`,
/// `RUN cat <<EOF > f`, several at once).
fn run_command(
    command: RawCommand,
    docs: &[HereDoc],
    at: &Location,
) -> Result<(RawCommand, Vec<RawSource>), DockerfileError> {
    let RawCommand::Shell(cmd) = command else {
        if let RawCommand::Exec(argv) = &command
            && argv.iter().any(|a| !heredoc::placeholders_in(a).is_empty())
        {
            return Err(DockerfileError::Invalid {
                at: at.clone(),
                message: "here-documents need the shell form of RUN, not the exec (JSON) form".into(),
            });
        }
        return Ok((command, Vec::new()));
    };
    let used: Vec<&HereDoc> = heredoc::placeholders_in(&cmd).into_iter().filter_map(|n| docs.get(n)).collect();
    if used.is_empty() {
        return Ok((RawCommand::Shell(cmd), Vec::new()));
    }
    if let [only] = used.as_slice()
        && heredoc::placeholder_index(cmd.trim()).is_some()
    {
        let doc = RawSource::HereDoc { name: only.name.clone(), body: only.content(), expand: false };
        return Ok((RawCommand::Shell(String::new()), vec![doc]));
    }
    let mut full = heredoc::restore(&cmd, docs);
    for d in used {
        full.push('\n');
        full.push_str(&d.body);
        full.push_str(&d.name);
    }
    Ok((RawCommand::Shell(full), Vec::new()))
}

fn flags(options: &[pd::Flag<'_>]) -> Vec<Flag> {
    options
        .iter()
        .map(|f| Flag { name: f.name.value.to_string(), value: f.value.as_ref().map(|v| v.value.to_string()) })
        .collect()
}

fn command(c: &pd::Command<'_>, escape: char) -> RawCommand {
    match c {
        pd::Command::Exec(e) => RawCommand::Exec(e.value.iter().map(|a| a.value.to_string()).collect()),
        pd::Command::Shell(s) => RawCommand::Shell(join_continuations(s.value, escape)),
        _ => RawCommand::Exec(Vec::new()),
    }
}

fn instruction_start(ins: &pd::Instruction<'_>) -> usize {
    let k = match ins {
        pd::Instruction::Add(i) => &i.add,
        pd::Instruction::Arg(i) => &i.arg,
        pd::Instruction::Cmd(i) => &i.cmd,
        pd::Instruction::Copy(i) => &i.copy,
        pd::Instruction::Entrypoint(i) => &i.entrypoint,
        pd::Instruction::Env(i) => &i.env,
        pd::Instruction::Expose(i) => &i.expose,
        pd::Instruction::From(i) => &i.from,
        pd::Instruction::Healthcheck(i) => &i.healthcheck,
        pd::Instruction::Label(i) => &i.label,
        pd::Instruction::Maintainer(i) => &i.maintainer,
        pd::Instruction::Onbuild(i) => &i.onbuild,
        pd::Instruction::Run(i) => &i.run,
        pd::Instruction::Shell(i) => &i.shell,
        pd::Instruction::Stopsignal(i) => &i.stopsignal,
        pd::Instruction::User(i) => &i.user,
        pd::Instruction::Volume(i) => &i.volume,
        pd::Instruction::Workdir(i) => &i.workdir,
        _ => unreachable!("parse-dockerfile added an instruction kind"),
    };
    k.span.start
}

/// The text of one instruction: everything up to the next instruction, minus the trailing
/// comment and blank lines, with continuations joined.
fn instruction_text(raw: &str, escape: char) -> String {
    let mut lines: Vec<&str> = raw.lines().collect();
    while let Some(last) = lines.last() {
        let t = last.trim();
        if t.is_empty() || t.starts_with('#') {
            lines.pop();
        } else {
            break;
        }
    }
    join_continuations(&lines.join("\n"), escape)
}

/// Byte offset -> 1-based line, skipping the implicit FROM line we may have inserted.
struct LineIndex {
    newlines: Vec<usize>,
    inserted_at: Option<usize>,
}

impl LineIndex {
    fn new(text: &str, inserted_at: Option<usize>) -> Self {
        LineIndex { newlines: text.match_indices('\n').map(|(i, _)| i).collect(), inserted_at }
    }

    fn line_of(&self, offset: usize) -> usize {
        let line = self.newlines.partition_point(|&nl| nl < offset) + 1;
        match self.inserted_at {
            // Lines after the inserted FROM move back by one; the FROM itself maps to the
            // line it was inserted before.
            Some(at) if offset > at => line - 1,
            _ => line,
        }
    }
}
