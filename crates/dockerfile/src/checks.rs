//! BuildKit's build checks (`docker build --check`, the `# check=` directive) that apply to a
//! single-stage Dockerfile: each finding is a warning naming its rule, line and the rule's
//! documentation; with `# check=error=true` the build fails after all are shown.
//!
//! The rules and their messages are BuildKit's (frontend/dockerfile/linter); so are the
//! directive's grammar (only its first space-separated word counts, at most three
//! `;`-separated `key=value` parts, keys `skip`, `error` and `experimental`) and the build arg
//! `BUILDKIT_DOCKERFILE_CHECK`, which replaces the directive when given. Rules about several
//! stages, platforms or base-image names cannot fire in an image extension and are not run.

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{DockerfileError, Location};
use crate::parse::{Dockerfile, Kind, RawCommand, Warning};
use crate::plan::{Op, Plan};

/// The build arg that replaces the `# check=` directive (BuildKit's).
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// Which checks run and what their findings do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    pub skip_all: bool,
    /// Rule names (case-sensitive); unknown names are ignored, as BuildKit does.
    pub skip: BTreeSet<String>,
    /// Findings fail the build.
    pub error: bool,
}

impl CheckConfig {
    /// Parses a `# check=` value (or the build arg's) as BuildKit does.
    pub fn parse(value: &str) -> Result<CheckConfig, String> {
        let mut config = CheckConfig::default();
        let value = value.trim();
        if value.is_empty() {
            return Ok(config);
        }
        for part in value.splitn(3, ';') {
            let Some((key, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let v = v.trim();
            match key.trim() {
                "skip" if v == "all" => config.skip_all = true,
                "skip" => config.skip = v.split(',').map(|r| r.trim().to_string()).collect(),
                // The only experimental rule (InvalidDefinitionDescription) is about comments
                // on stages and ARGs, which no rule here checks.
                "experimental" => {}
                "error" => {
                    config.error = parse_go_bool(v).ok_or_else(|| {
                        format!("failed to parse check option {part:?}: invalid syntax for a boolean: {v:?}")
                    })?
                }
                other => return Err(format!("invalid check option {other:?}")),
            }
        }
        Ok(config)
    }

    fn runs(&self, rule: &str) -> bool {
        !self.skip_all && !self.skip.contains(rule)
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub line: usize,
    pub message: String,
}

impl Violation {
    /// The rule's page in Docker's documentation.
    pub fn url(&self) -> String {
        let mut kebab = String::new();
        for (i, c) in self.rule.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    kebab.push('-');
                }
                kebab.push(c.to_ascii_lowercase());
            } else {
                kebab.push(c);
            }
        }
        format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
    }
}

/// What the checks found, and whether that fails the build.
#[derive(Debug, Default)]
pub struct CheckReport {
    /// One per finding, in line order: `RuleName: message (URL)`.
    pub warnings: Vec<Warning>,
    /// `# check=error=true` and something was found.
    pub failure: Option<DockerfileError>,
}

/// What the checks need to know besides the file and its plan.
#[derive(Debug, Clone, Copy)]
pub struct CheckInputs<'a> {
    pub build_args: &'a BTreeMap<String, String>,
    /// The image being extended sets a SHELL (silencing JSONArgsRecommended, as in BuildKit).
    pub base_has_shell: bool,
}

impl Dockerfile {
    /// Runs the build checks on this file and its `plan`. An invalid `# check=` value (or
    /// `BUILDKIT_DOCKERFILE_CHECK`) is an error, as in BuildKit.
    pub fn check(&self, plan: &Plan, inputs: CheckInputs<'_>) -> Result<CheckReport, DockerfileError> {
        let (value, line) = match (inputs.build_args.get(CHECK_BUILD_ARG), &self.check) {
            (Some(v), _) => (Some(v.clone()), 0),
            // Only the first space-separated word of the directive counts.
            (None, Some((v, line))) => (Some(v.split(' ').next().unwrap_or_default().to_string()), *line),
            (None, None) => (None, 0),
        };
        let config = match value {
            Some(v) => CheckConfig::parse(&v).map_err(|m| DockerfileError::Invalid {
                at: Location { file: self.file.clone(), line },
                message: format!("failed to parse check options: {m}"),
            })?,
            None => CheckConfig::default(),
        };
        let mut found: Vec<Violation> =
            violations(self, plan, inputs).into_iter().filter(|v| config.runs(v.rule)).collect();
        found.sort_by_key(|v| v.line);
        let warnings = found
            .iter()
            .map(|v| Warning {
                at: Location { file: self.file.clone(), line: v.line },
                message: format!("{}: {} ({})", v.rule, v.message, v.url()),
            })
            .collect();
        let failure = (config.error && !found.is_empty()).then(|| {
            let rules: BTreeSet<&str> = found.iter().map(|v| v.rule).collect();
            DockerfileError::Invalid {
                at: Location { file: self.file.clone(), line: 0 },
                message: format!(
                    "lint violation found for rules: {} (# check=error=true)",
                    rules.into_iter().collect::<Vec<_>>().join(", ")
                ),
            }
        });
        Ok(CheckReport { warnings, failure })
    }
}

/// Every finding of every rule, unfiltered.
fn violations(df: &Dockerfile, plan: &Plan, inputs: CheckInputs<'_>) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut add = |rule: &'static str, line: usize, message: String| out.push(Violation { rule, line, message });

    // FROM: the AS keyword's casing, the stage name's casing, reserved names.
    let from_words: Vec<&str> = df.from.text.split_whitespace().collect();
    if !df.from.implicit && from_words.len() == 4 {
        let (from_kw, as_kw, name) = (from_words[0], from_words[2], from_words[3]);
        if name != name.to_lowercase() {
            add("StageNameCasing", df.from.line, format!("Stage name '{name}' should be lowercase"));
        }
        let matches = if from_kw == from_kw.to_lowercase() {
            as_kw == as_kw.to_lowercase()
        } else if from_kw == from_kw.to_uppercase() {
            as_kw == as_kw.to_uppercase()
        } else {
            true
        };
        if !matches {
            add("FromAsCasing", df.from.line, format!("'{as_kw}' and '{from_kw}' keywords' casing do not match"));
        }
        if matches!(name, "context" | "scratch") {
            add(
                "ReservedStageName",
                df.from.line,
                format!("Stage name should not use the same name as reserved stage \"{name}\""),
            );
        }
    }

    for &line in &df.empty_continuations {
        add("NoEmptyContinuation", line, "Empty continuation line".into());
    }

    // Keyword casing: the stage's commands (FROM and what follows; not ARGs before FROM)
    // against the majority, a tie counting as upper case.
    let mut keywords: Vec<(usize, &str)> = Vec::new();
    if !df.from.implicit {
        keywords.push((df.from.line, first_word(&df.from.text)));
    }
    keywords.extend(df.instructions.iter().map(|i| (i.line, first_word(&i.text))));
    let consistent = |k: &str| k == k.to_lowercase() || k == k.to_uppercase();
    let lower = keywords.iter().filter(|(_, k)| consistent(k) && *k == k.to_lowercase()).count();
    let upper = keywords.iter().filter(|(_, k)| consistent(k) && *k != k.to_lowercase()).count();
    let majority_lower = lower > upper;
    for (line, k) in &keywords {
        let wrong = if majority_lower { k.to_lowercase() != *k } else { k.to_uppercase() != *k };
        if wrong {
            let casing = if majority_lower { "lowercase" } else { "uppercase" };
            add(
                "ConsistentInstructionCasing",
                *line,
                format!("Command '{k}' should match the case of the command majority ({casing})"),
            );
        }
    }

    // Per instruction, in order.
    let mut shell_set = inputs.base_has_shell;
    let mut workdir_seen = false;
    let mut last_of: BTreeMap<&'static str, usize> = BTreeMap::new();
    for ins in &df.instructions {
        let line = ins.line;
        match &ins.kind {
            Kind::Shell(_) => shell_set = true,
            Kind::Maintainer(_) => {
                add("MaintainerDeprecated", line, "Maintainer instruction is deprecated in favor of using label".into())
            }
            Kind::Env(text) | Kind::Label(text) => {
                let name = if matches!(ins.kind, Kind::Env(_)) { "ENV" } else { "LABEL" };
                let words = crate::words::split_words(text, df.escape);
                if words.first().is_some_and(|w| !w.contains('=')) {
                    add(
                        "LegacyKeyValueFormat",
                        line,
                        format!("\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"),
                    );
                }
            }
            Kind::Expose(ports) => {
                for port in ports {
                    let (ip_or_host, container) = match port.rsplit_once(':') {
                        Some((before, after)) => (Some(before), after),
                        None => (None, port.as_str()),
                    };
                    if let Some((_, proto)) = container.split_once('/')
                        && proto != proto.to_lowercase()
                    {
                        add(
                            "ExposeProtoCasing",
                            line,
                            format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
                        );
                    }
                    if ip_or_host.is_some_and(|p| !p.is_empty()) {
                        add(
                            "ExposeInvalidFormat",
                            line,
                            format!(
                                "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
        let used_once = match &ins.kind {
            Kind::Cmd(c) | Kind::Entrypoint(c) => {
                let name = if matches!(ins.kind, Kind::Cmd(_)) { "CMD" } else { "ENTRYPOINT" };
                if matches!(c, RawCommand::Shell(_)) && !shell_set {
                    add(
                        "JSONArgsRecommended",
                        line,
                        format!(
                            "JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"
                        ),
                    );
                }
                Some(name)
            }
            Kind::Healthcheck { .. } => Some("HEALTHCHECK"),
            _ => None,
        };
        if let Some(name) = used_once
            && let Some(earlier) = last_of.insert(name, line)
        {
            // Reported on the earlier one: it is the one that has no effect.
            add(
                "MultipleInstructionsDisallowed",
                earlier,
                format!(
                    "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                ),
            );
        }
    }

    // What needs the expanded values.
    for step in &plan.steps {
        match &step.op {
            Op::Workdir(dir) if !workdir_seen => {
                workdir_seen = true;
                if !dir.starts_with('/') {
                    add(
                        "WorkdirRelativePath",
                        step.line,
                        format!("Relative workdir {dir:?} can have unexpected results if the base image changes"),
                    );
                }
            }
            Op::Arg(pairs) => pairs.iter().for_each(|(k, _)| secret_key(&mut add, "ARG", k, step.line)),
            Op::Env(pairs) => pairs.iter().for_each(|(k, _)| secret_key(&mut add, "ENV", k, step.line)),
            _ => {}
        }
    }
    for u in &plan.undefined_vars {
        let hint = u.suggestion.as_ref().map(|s| format!(" (did you mean ${s}?)")).unwrap_or_default();
        add("UndefinedVar", u.line, format!("Usage of undefined variable '${}'{hint}", u.name));
    }
    out
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or_default()
}

/// SecretsUsedInArgOrEnv: a key one of whose `_`-separated words (or the whole of it) names a
/// secret, and none of which says it is not one (BuildKit's two case-insensitive lists).
fn secret_key(add: &mut impl FnMut(&'static str, usize, String), instruction: &str, key: &str, line: usize) {
    const DENY: &[&str] =
        &["apikey", "auth", "credential", "credentials", "key", "password", "pword", "passwd", "secret", "token"];
    const ALLOW: &[&str] = &["public", "file", "version"];
    let lower = key.to_lowercase();
    // BuildKit's pattern `(?:_|^)(?:WORD)(?:_|$)`: WORD bounded by `_` or the ends.
    let has = |words: &[&str]| {
        words.iter().any(|w| {
            lower.match_indices(w).any(|(i, _)| {
                let before = i == 0 || lower.as_bytes()[i - 1] == b'_';
                let end = i + w.len();
                let after = end == lower.len() || lower.as_bytes()[end] == b'_';
                before && after
            })
        })
    };
    if has(DENY) && !has(ALLOW) {
        add(
            "SecretsUsedInArgOrEnv",
            line,
            format!("Do not use ARG or ENV instructions for sensitive data ({instruction} {key:?})"),
        );
    }
}

/// The name among `options` that `name` is most likely a typo of: Levenshtein distance
/// below 3, the nearest first (BuildKit's `suggest.Search`, case-sensitive); none if `name`
/// itself is one of them.
pub fn suggest<'a>(name: &str, options: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut sorted: Vec<&str> = options.into_iter().collect();
    sorted.sort_unstable();
    let mut best: Option<(usize, &str)> = None;
    for opt in sorted {
        if opt == name {
            return None;
        }
        let d = levenshtein(name, opt);
        if d < best.map_or(3, |(bd, _)| bd) {
            best = Some((d, opt));
        }
    }
    best.map(|(_, o)| o.to_string())
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(text: &str, args: &[(&str, &str)], base_has_shell: bool) -> Result<CheckReport, DockerfileError> {
        let df = Dockerfile::parse(text, "Dockerfile").unwrap();
        let mut args: BTreeMap<String, String> = args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        args.insert("base_image".into(), "base".into());
        let plan = df.plan(&args, &[("PATH".into(), "/bin".into())]).unwrap();
        df.check(&plan, CheckInputs { build_args: &args, base_has_shell })
    }

    fn found(text: &str) -> Vec<String> {
        report(text, &[], false).unwrap().warnings.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn the_directive_is_read_as_buildkit_reads_it() {
        assert_eq!(CheckConfig::parse("").unwrap(), CheckConfig::default());
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap();
        assert!(c.error && c.skip.contains("StageNameCasing") && c.skip.contains("JSONArgsRecommended"));
        assert!(CheckConfig::parse("skip=all").unwrap().skip_all);
        assert!(!CheckConfig::parse("error=0").unwrap().error);
        for bad in ["skip=a;", "Skip=a", "error=yes", "nope", "error=true;skip=a;error"] {
            assert!(CheckConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_rule_reports_what_buildkit_reports() {
        let w = found(
            "FROM ${base_image} as Final\nmaintainer me\nENV PATH2 /x\nENV git_key=1 public_key=2\nCMD echo a\nCMD [\"b\"]\nWORKDIR app/\nWORKDIR /abs\nEXPOSE 80/TcP 127.0.0.1:80:80\nLABEL a=$PAHT\n",
        );
        let expect = [
            "Dockerfile:1: StageNameCasing: Stage name 'Final' should be lowercase (https://docs.docker.com/go/dockerfile/rule/stage-name-casing/)",
            "Dockerfile:1: FromAsCasing: 'as' and 'FROM' keywords' casing do not match",
            "Dockerfile:2: ConsistentInstructionCasing: Command 'maintainer' should match the case of the command majority (uppercase)",
            "Dockerfile:2: MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label",
            "Dockerfile:3: LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format",
            "Dockerfile:4: SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"git_key\")",
            "Dockerfile:5: JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals",
            "Dockerfile:5: MultipleInstructionsDisallowed: Multiple CMD instructions should not be used in the same stage because only the last one will be used",
            "Dockerfile:7: WorkdirRelativePath: Relative workdir \"app/\" can have unexpected results if the base image changes",
            "Dockerfile:9: ExposeProtoCasing: Defined protocol '80/TcP' in EXPOSE instruction should be lowercase",
            "Dockerfile:9: ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:80:80'",
            "Dockerfile:10: UndefinedVar: Usage of undefined variable '$PAHT' (did you mean $PATH?)",
        ];
        for e in expect {
            assert!(w.iter().any(|x| x.starts_with(e)), "missing {e:?} in {w:#?}");
        }
        assert_eq!(w.len(), expect.len(), "{w:#?}");
    }

    #[test]
    fn quiet_files_and_what_silences_a_rule() {
        // A typical run.Dockerfile: nothing to report.
        assert!(found("ARG base_image\nFROM ${base_image}\nARG x\nUSER root\nRUN echo $x\nCOPY a /a\n").is_empty());
        // A declared ARG without a value is not undefined; SHELL silences JSONArgsRecommended,
        // and so does a base image that sets one.
        assert!(found("FROM ${base_image}\nARG v\nSHELL [\"/bin/sh\", \"-c\"]\nCMD echo $v\n").is_empty());
        assert!(report("FROM ${base_image}\nCMD echo a\n", &[], true).unwrap().warnings.is_empty());
        // The empty continuation line is reported at the instruction's last line.
        let w = found("FROM ${base_image}\n# comment\nRUN echo a \\\n\n  b\nRUN echo c \\\n  d\n");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("Dockerfile:5: NoEmptyContinuation: Empty continuation line"), "{w:?}");
    }

    #[test]
    fn skip_and_error() {
        let text = "# check=skip=MaintainerDeprecated;error=true\nFROM ${base_image}\nMAINTAINER me\n";
        let r = report(text, &[], false).unwrap();
        assert!(r.warnings.is_empty() && r.failure.is_none());
        let text = "# check=error=true\nFROM ${base_image}\nMAINTAINER me\nCMD a\n";
        let r = report(text, &[], false).unwrap();
        assert_eq!(r.warnings.len(), 2);
        let e = r.failure.unwrap().to_string();
        assert!(e.contains("lint violation found for rules: JSONArgsRecommended, MaintainerDeprecated"), "{e}");
        // The build arg replaces the directive whole.
        let r = report(text, &[(CHECK_BUILD_ARG, "skip=all")], false).unwrap();
        assert!(r.warnings.is_empty() && r.failure.is_none());
        // Only the first word of the directive counts: `skip=A;` then fails.
        let e = report("# check=skip=A; error=true\nFROM ${base_image}\n", &[], false).unwrap_err().to_string();
        assert!(e.contains("Dockerfile:1: failed to parse check options: invalid check option"), "{e}");
    }

    #[test]
    fn suggestions_are_near_names_only() {
        assert_eq!(suggest("PAHT", ["PATH", "HOME"]), Some("PATH".into()));
        assert_eq!(suggest("DIR_ASSET", ["DIR_ASSETS"]), Some("DIR_ASSETS".into()));
        assert_eq!(suggest("FOO", ["PATH"]), None);
        assert_eq!(suggest("PATH", ["PATH", "PATHS"]), None);
    }
}
