//! `RUN --mount=...` values, parsed as BuildKit's Dockerfile frontend parses them
//! (`instructions/parse.go` `parseMount`, defaults from `dockerfile2llb`'s run-mount dispatch):
//! comma-separated `key=value` fields (CSV quoting allowed), `type` defaulting to `bind`,
//! `ro`/`rw`/`required` usable without a value, every value expanded like other flag words.

use std::fmt;

/// One `--mount` of a RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunMount {
    /// Where the mount appears, as written (relative targets are relative to the WORKDIR the
    /// RUN runs in). `None` only for a secret given as `env=` alone.
    pub target: Option<String>,
    pub readonly: bool,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A directory or file of the build context (`source`, default its root).
    Bind { source: String },
    /// A directory kept between builds under `id` (default: the target), never in a layer.
    Cache { id: String, sharing: Sharing, owner: FileOwner },
    /// An empty tmpfs (`size` in bytes, unlimited if unset).
    Tmpfs { size: Option<u64> },
    /// A secret given to the build (`--secret id=...`): a file at the target and/or an
    /// environment variable (`env=`).
    Secret { id: String, env: Option<String>, required: bool, owner: FileOwner },
    /// The SSH agent socket given to the build (`--ssh id[=socket]`).
    Ssh { id: String, required: bool, owner: FileOwner },
}

/// `mode`, `uid` and `gid` of what a cache, secret or ssh mount makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Every build uses the one directory at the same time.
    Shared,
    /// A build that finds the directory in use gets another one.
    Private,
    /// Builds take turns.
    Locked,
}

impl fmt::Display for Sharing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        })
    }
}

impl MountKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            MountKind::Bind { .. } => "bind",
            MountKind::Cache { .. } => "cache",
            MountKind::Tmpfs { .. } => "tmpfs",
            MountKind::Secret { .. } => "secret",
            MountKind::Ssh { .. } => "ssh",
        }
    }
}

impl RunMount {
    /// Parses one `--mount` value; `expand` expands each field's value (build args, ENV).
    /// `ssh_index` numbers the RUN's ssh mounts for their default targets.
    pub fn parse(
        value: &str,
        ssh_index: usize,
        expand: &mut dyn FnMut(&str) -> Result<String, String>,
    ) -> Result<RunMount, String> {
        let fields = split_csv(value)?;
        // `type` decides what the other keys mean, wherever it is written.
        let mut kind = "bind".to_string();
        for f in &fields {
            if let Some((k, v)) = f.split_once('=')
                && k.eq_ignore_ascii_case("type")
            {
                kind = expand(v)?.to_ascii_lowercase();
            }
        }
        if !matches!(kind.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
            return Err(format!("unknown mount type `{kind}` (expected bind, cache, tmpfs, secret or ssh)"));
        }
        let mut target = None;
        let mut source = None;
        let mut from = None;
        let mut readonly = None;
        let mut required = false;
        let mut id = None;
        let mut sharing = None;
        let mut size = None;
        let mut env = None;
        let (mut mode, mut uid, mut gid) = (None, None, None);
        for f in &fields {
            let (key, raw) = match f.split_once('=') {
                Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
                None => (f.to_ascii_lowercase(), None),
            };
            let value = match raw {
                Some(v) => Some(expand(v)?),
                None => None,
            };
            let needs = |v: Option<String>| v.ok_or_else(|| format!("`{key}` needs a value (`{key}=...`)"));
            match key.as_str() {
                "type" => {}
                "from" => from = Some(needs(value)?),
                "source" | "src" => source = Some(needs(value)?),
                "target" | "dst" | "destination" => target = Some(needs(value)?),
                "readonly" | "ro" => readonly = Some(value.map_or(Ok(true), |v| parse_bool(&key, &v))?),
                "readwrite" | "rw" => readonly = Some(!value.map_or(Ok(true), |v| parse_bool(&key, &v))?),
                "required" if matches!(kind.as_str(), "secret" | "ssh") => {
                    required = value.map_or(Ok(true), |v| parse_bool(&key, &v))?
                }
                "id" => id = Some(needs(value)?),
                "sharing" if kind == "cache" => {
                    sharing = Some(match needs(value)?.to_ascii_lowercase().as_str() {
                        "shared" => Sharing::Shared,
                        "private" => Sharing::Private,
                        "locked" => Sharing::Locked,
                        other => return Err(format!("sharing={other}: expected shared, private or locked")),
                    })
                }
                "size" if kind == "tmpfs" => {
                    let v = needs(value)?;
                    size = Some(parse_size(&v).ok_or_else(|| format!("size={v}: expected a size such as 64m or 1g"))?)
                }
                "env" if kind == "secret" => env = Some(needs(value)?),
                "mode" => {
                    let v = needs(value)?;
                    mode = Some(u32::from_str_radix(&v, 8).map_err(|_| format!("mode={v}: expected an octal mode"))?)
                }
                "uid" | "gid" => {
                    let v = needs(value)?;
                    let n: u32 = v.parse().map_err(|_| format!("{key}={v}: expected a number"))?;
                    if key == "uid" { uid = Some(n) } else { gid = Some(n) }
                }
                "required" | "sharing" | "size" | "env" => {
                    return Err(format!("`{key}` does not apply to a {kind} mount"));
                }
                _ => return Err(format!("unexpected key `{key}` in `{f}`")),
            }
        }
        if from.is_some() {
            return Err(format!(
                "from= mounts another stage or image, which image extensions cannot use in a {kind} mount; bind a directory of the build context instead"
            ));
        }
        let file_info = matches!(kind.as_str(), "cache" | "secret" | "ssh");
        if !file_info && (mode.is_some() || uid.is_some() || gid.is_some()) {
            return Err(format!("mode, uid and gid do not apply to a {kind} mount"));
        }
        let owner = |default_mode: u32| FileOwner {
            mode: mode.unwrap_or(default_mode),
            uid: uid.unwrap_or(0),
            gid: gid.unwrap_or(0),
        };
        let needs_target = |t: Option<String>| match t {
            Some(t) if !t.is_empty() => Ok(t),
            _ => Err(format!("a {kind} mount needs a target (`target=/path`)")),
        };
        let mount = match kind.as_str() {
            "bind" => {
                if id.is_some() {
                    return Err("`id` does not apply to a bind mount".into());
                }
                RunMount {
                    target: Some(needs_target(target)?),
                    readonly: readonly.unwrap_or(true),
                    kind: MountKind::Bind { source: source.unwrap_or_default() },
                }
            }
            "cache" => {
                if source.is_some() {
                    return Err("source= in a cache mount needs from=, which image extensions cannot use".into());
                }
                let target = needs_target(target)?;
                RunMount {
                    readonly: readonly.unwrap_or(false),
                    kind: MountKind::Cache {
                        id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| target.clone()),
                        sharing: sharing.unwrap_or(Sharing::Shared),
                        owner: owner(0o755),
                    },
                    target: Some(target),
                }
            }
            "tmpfs" => RunMount {
                target: Some(needs_target(target)?),
                readonly: readonly.unwrap_or(false),
                kind: MountKind::Tmpfs { size },
            },
            "secret" => {
                if source.is_some() && id.is_some() {
                    return Err("a secret mount takes source= or id=, not both".into());
                }
                let target = target.filter(|t| !t.is_empty());
                let id = match source.or(id).filter(|i| !i.is_empty()) {
                    Some(id) => id,
                    None => match &target {
                        Some(t) => base_name(t).to_string(),
                        None => return Err("a secret mount needs an id or a target (`id=NAME`)".into()),
                    },
                };
                let target = match (target, &env) {
                    (Some(t), _) => Some(t),
                    (None, Some(_)) => None,
                    (None, None) => Some(format!("/run/secrets/{}", base_name(&id))),
                };
                RunMount {
                    target,
                    readonly: readonly.unwrap_or(true),
                    kind: MountKind::Secret { id, env, required, owner: owner(0o400) },
                }
            }
            _ => RunMount {
                target: Some(
                    target.filter(|t| !t.is_empty()).unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_index}")),
                ),
                readonly: readonly.unwrap_or(true),
                kind: MountKind::Ssh {
                    id: id.filter(|i| !i.is_empty()).unwrap_or_else(|| "default".into()),
                    required,
                    owner: owner(0o600),
                },
            },
        };
        Ok(mount)
    }
}

fn base_name(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

pub(crate) fn parse_bool(key: &str, v: &str) -> Result<bool, String> {
    // Go's strconv.ParseBool.
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{key}={v}: expected true or false")),
    }
}

/// docker/go-units `RAMInBytes`: a number with an optional binary suffix (`k`, `m`, `g`, `t`,
/// `p`, optionally followed by `b`/`ib`), case-insensitive.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return None,
    };
    let bytes = n * (1u64 << shift) as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Splits a mount value into fields as Go's `encoding/csv` reads one record: commas separate,
/// a field that starts with `"` runs to the closing quote (`""` is a quote inside it), a quote
/// anywhere else is an error.
fn split_csv(s: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("unterminated quote in `{s}`")),
                }
            }
            if !matches!(chars.peek(), None | Some(',')) {
                return Err(format!("extra text after a quoted field in `{s}`"));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if c == '"' {
                    return Err(format!("a quote inside a field in `{s}` (quote the whole field: \"key=a,b\")"));
                }
                field.push(c);
                chars.next();
            }
        }
        if !field.is_empty() {
            fields.push(field);
        }
        if chars.next().is_none() {
            break;
        }
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<RunMount, String> {
        RunMount::parse(v, 0, &mut |s: &str| Ok(s.replace("$T", "/expanded")))
    }

    #[test]
    fn defaults_per_type() {
        let cache = parse("type=cache,target=/root/.cache").unwrap();
        assert_eq!(cache.target.as_deref(), Some("/root/.cache"));
        assert!(!cache.readonly);
        assert_eq!(
            cache.kind,
            MountKind::Cache {
                id: "/root/.cache".into(),
                sharing: Sharing::Shared,
                owner: FileOwner { mode: 0o755, uid: 0, gid: 0 }
            }
        );
        let bind = parse("target=/src").unwrap();
        assert!(bind.readonly, "bind mounts are read-only unless rw");
        assert_eq!(bind.kind, MountKind::Bind { source: String::new() });
        assert!(!parse("type=bind,target=/src,rw").unwrap().readonly);
        assert!(!parse("type=bind,target=/src,readwrite=true").unwrap().readonly);
        assert!(parse("type=bind,target=/src,rw=false").unwrap().readonly);
        assert_eq!(parse("type=tmpfs,dst=/t,size=64m").unwrap().kind, MountKind::Tmpfs { size: Some(64 << 20) });
        let secret = parse("type=secret,id=npmrc").unwrap();
        assert_eq!(secret.target.as_deref(), Some("/run/secrets/npmrc"));
        assert_eq!(
            secret.kind,
            MountKind::Secret {
                id: "npmrc".into(),
                env: None,
                required: false,
                owner: FileOwner { mode: 0o400, uid: 0, gid: 0 }
            }
        );
        let by_target = parse("type=secret,target=/etc/token,required,mode=0440,gid=7").unwrap();
        assert_eq!(
            by_target.kind,
            MountKind::Secret {
                id: "token".into(),
                env: None,
                required: true,
                owner: FileOwner { mode: 0o440, uid: 0, gid: 7 }
            }
        );
        let env_only = parse("type=secret,id=tok,env=TOKEN").unwrap();
        assert_eq!(env_only.target, None);
        let ssh = RunMount::parse("type=ssh", 1, &mut |s: &str| Ok(s.to_string())).unwrap();
        assert_eq!(ssh.target.as_deref(), Some("/run/buildkit/ssh_agent.1"));
        assert!(matches!(ssh.kind, MountKind::Ssh { ref id, .. } if id == "default"));
    }

    #[test]
    fn values_are_expanded_and_quoted_fields_kept_whole() {
        let m = parse("type=cache,target=$T,\"id=a,b\",sharing=LOCKED,uid=1000").unwrap();
        assert_eq!(m.target.as_deref(), Some("/expanded"));
        assert!(
            matches!(m.kind, MountKind::Cache { ref id, sharing: Sharing::Locked, owner } if id == "a,b" && owner.uid == 1000)
        );
        assert_eq!(split_csv("\"a=x\"\"y\",b").unwrap(), ["a=x\"y", "b"]);
    }

    #[test]
    fn errors_name_the_field() {
        for (value, needle) in [
            ("type=volume,target=/x", "unknown mount type `volume`"),
            ("type=cache", "needs a target"),
            ("type=cache,target=/x,color=red", "unexpected key `color`"),
            ("type=bind,target=/x,mode=0700", "do not apply to a bind mount"),
            ("type=cache,target=/x,sharing=sometimes", "sharing=sometimes"),
            ("type=cache,target=/x,mode=999", "octal"),
            ("type=tmpfs,target=/x,size=lots", "size=lots"),
            ("type=bind,target=/x,from=builder", "from="),
            ("type=cache,target=/x,required", "does not apply to a cache mount"),
            ("type=secret", "needs an id or a target"),
            ("type=secret,id=a,src=b", "not both"),
            ("type=bind,target=/x,ro=maybe", "ro=maybe"),
            ("type=cache,\"target=/x", "unterminated quote"),
            ("type=cache,target=\"/x\"", "a quote inside a field"),
        ] {
            let err = parse(value).unwrap_err();
            assert!(err.contains(needle), "{value}: {err}");
        }
    }

    #[test]
    fn sizes_as_go_units_reads_them() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1k"), Some(1024));
        assert_eq!(parse_size("1.5G"), Some(3 << 29));
        assert_eq!(parse_size("2mb"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1"), None);
    }
}
