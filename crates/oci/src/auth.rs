//! Registry credentials, looked up per registry host the way the CNB lifecycle and Docker do:
//!
//! 1. `CNB_REGISTRY_AUTH`: the lifecycle's JSON map of registry to an `Authorization` header
//!    value, `{"registry.example.com": "Basic <base64 user:pass>"}` or `"Bearer <token>"`;
//! 2. the Docker config, `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`:
//!    `credHelpers[registry]`, then `auths[registry]` (`auth` = base64 `user:pass`, or
//!    `username`/`password`), then `credsStore` (helpers are run as `docker-credential-NAME get`);
//! 3. otherwise anonymous.
//!
//! Registry keys are normalized before matching: a scheme and path are dropped
//! (`https://index.docker.io/v1/` is `index.docker.io`), and Docker Hub's names
//! (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::Value;

use crate::error::{OciError, Result};

/// How to authenticate to one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Anonymous,
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// Credentials and where they came from (for error messages; never the secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub credentials: Credentials,
    pub source: String,
}

impl Resolved {
    /// What to tell a user whose request was refused.
    pub fn hint(&self) -> String {
        match self.credentials {
            Credentials::Anonymous => {
                "no credentials found: add them to ~/.docker/config.json (or $DOCKER_CONFIG) or CNB_REGISTRY_AUTH"
                    .into()
            }
            _ => format!("using credentials from {}", self.source),
        }
    }
}

/// Where credentials are read from; [`Sources::from_env`] is what the CLI uses.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The value of `CNB_REGISTRY_AUTH`.
    pub cnb_registry_auth: Option<String>,
    /// The Docker config file (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
}

impl Sources {
    pub fn from_env() -> Sources {
        let docker_dir = match std::env::var_os("DOCKER_CONFIG") {
            Some(d) if !d.is_empty() => Some(PathBuf::from(d)),
            _ => std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")),
        };
        Sources {
            cnb_registry_auth: std::env::var("CNB_REGISTRY_AUTH").ok().filter(|v| !v.trim().is_empty()),
            docker_config: docker_dir.map(|d| d.join("config.json")),
        }
    }

    /// Credentials for `registry` (`host[:port]`).
    pub fn resolve(&self, registry: &str) -> Result<Resolved> {
        let want = normalize(registry);
        if let Some(raw) = &self.cnb_registry_auth {
            let bad = |reason: String| OciError::BadCredentials { source_name: "CNB_REGISTRY_AUTH".into(), reason };
            let map: serde_json::Map<String, Value> = serde_json::from_str(raw)
                .map_err(|e| bad(format!("expected a JSON object of registry to \"Basic ...\"/\"Bearer ...\": {e}")))?;
            for (key, value) in &map {
                if normalize(key) != want {
                    continue;
                }
                let header = value.as_str().ok_or_else(|| bad(format!("the value for {key} is not a string")))?;
                let credentials = parse_header(header).map_err(|r| bad(format!("{key}: {r}")))?;
                return Ok(Resolved { credentials, source: "CNB_REGISTRY_AUTH".into() });
            }
        }
        if let Some(path) = &self.docker_config {
            match std::fs::read(path) {
                Ok(bytes) => {
                    if let Some(found) = from_docker_config(path, &bytes, &want)? {
                        return Ok(found);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(OciError::Io { path: path.clone(), source: e }),
            }
        }
        Ok(Resolved { credentials: Credentials::Anonymous, source: "none".into() })
    }
}

/// `https://index.docker.io/v1/` -> `docker.io`; `Host:5000/` -> `host:5000`.
pub fn normalize(key: &str) -> String {
    let key = key.trim();
    let key = key.strip_prefix("https://").or_else(|| key.strip_prefix("http://")).unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => host,
    }
}

fn parse_header(header: &str) -> std::result::Result<Credentials, String> {
    let (scheme, value) = header.trim().split_once(' ').ok_or("expected \"Basic <base64>\" or \"Bearer <token>\"")?;
    let value = value.trim();
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => decode_basic(value),
        "bearer" if !value.is_empty() => Ok(Credentials::Bearer(value.into())),
        _ => Err("expected \"Basic <base64>\" or \"Bearer <token>\"".into()),
    }
}

fn decode_basic(b64: &str) -> std::result::Result<Credentials, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("the basic credentials are not base64: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|_| "the basic credentials are not UTF-8")?;
    let (username, password) = text.split_once(':').ok_or("the basic credentials are not user:password")?;
    Ok(Credentials::Basic { username: username.into(), password: password.into() })
}

fn from_docker_config(path: &Path, bytes: &[u8], want: &str) -> Result<Option<Resolved>> {
    let source = path.display().to_string();
    let bad = |reason: String| OciError::BadCredentials { source_name: source.clone(), reason };
    let config: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let find = |section: &str| -> Option<(String, Value)> {
        config
            .get(section)?
            .as_object()?
            .iter()
            .find(|(k, _)| normalize(k) == want)
            .map(|(k, v)| (k.clone(), v.clone()))
    };
    if let Some((key, helper)) = find("credHelpers")
        && let Some(helper) = helper.as_str()
    {
        return Ok(run_helper(helper, &key)
            .map(|c| Resolved { credentials: c, source: format!("docker-credential-{helper}") }));
    }
    if let Some((key, entry)) = find("auths") {
        let field = |f: &str| entry.get(f).and_then(Value::as_str).filter(|s| !s.is_empty());
        let credentials = if let Some(auth) = field("auth") {
            Some(decode_basic(auth).map_err(|r| bad(format!("auths.{key}.auth: {r}")))?)
        } else if let (Some(u), Some(p)) = (field("username"), field("password")) {
            Some(Credentials::Basic { username: u.into(), password: p.into() })
        } else {
            field("registrytoken").map(|token| Credentials::Bearer(token.into()))
        };
        if let Some(credentials) = credentials {
            return Ok(Some(Resolved { credentials, source }));
        }
    }
    if let Some(store) = config.get("credsStore").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        // Helpers are keyed by what was given to `docker login`; try the usual spellings.
        let keys = if want == "docker.io" {
            vec!["https://index.docker.io/v1/".to_string(), "docker.io".into()]
        } else {
            vec![want.to_string(), format!("https://{want}")]
        };
        for key in keys {
            if let Some(c) = run_helper(store, &key) {
                return Ok(Some(Resolved { credentials: c, source: format!("docker-credential-{store}") }));
            }
        }
    }
    Ok(None)
}

/// `docker-credential-NAME get` with the server on stdin; `None` if the helper is missing or
/// has nothing for it (Docker treats both as "no credentials").
fn run_helper(name: &str, server: &str) -> Option<Credentials> {
    let program = format!("docker-credential-{name}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::warn!("credential helper {program}: {e}"))
        .ok()?;
    let _ = child.stdin.take()?.write_all(server.as_bytes());
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let user = v.get("Username").and_then(Value::as_str).unwrap_or_default();
    let secret = v.get("Secret").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    if user == "<token>" {
        // An identity token is exchanged for an access token by an OAuth2 flow we do not do.
        tracing::warn!("{program}: identity tokens are not supported; continuing without credentials");
        return None;
    }
    Some(Credentials::Basic { username: user.into(), password: secret.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> Credentials {
        Credentials::Basic { username: u.into(), password: p.into() }
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn keys_are_normalized() {
        assert_eq!(normalize("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize("registry-1.docker.io"), "docker.io");
        assert_eq!(normalize("http://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(normalize("Registry.Example.com"), "registry.example.com");
    }

    #[test]
    fn cnb_registry_auth_wins_and_parses_both_schemes() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config.json");
        std::fs::write(&cfg, format!(r#"{{"auths":{{"r.io":{{"auth":"{}"}}}}}}"#, b64("docker:pw"))).unwrap();
        let cnb = format!(r#"{{"r.io":"Basic {}","https://t.io/v2/":"Bearer tok"}}"#, b64("cnb:secret"));
        let s = Sources { cnb_registry_auth: Some(cnb), docker_config: Some(cfg.clone()) };
        let r = s.resolve("r.io").unwrap();
        assert_eq!((r.credentials, r.source.as_str()), (basic("cnb", "secret"), "CNB_REGISTRY_AUTH"));
        assert_eq!(s.resolve("t.io").unwrap().credentials, Credentials::Bearer("tok".into()));
        // Not in CNB_REGISTRY_AUTH: falls through to the Docker config, then to anonymous.
        let s = Sources { cnb_registry_auth: Some("{}".into()), docker_config: Some(cfg) };
        assert_eq!(s.resolve("r.io").unwrap().credentials, basic("docker", "pw"));
        assert_eq!(s.resolve("other.io").unwrap().credentials, Credentials::Anonymous);
    }

    #[test]
    fn docker_config_forms() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config.json");
        std::fs::write(
            &cfg,
            format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{}"}},"127.0.0.1:5001":{{"username":"u","password":"p:w"}},"empty.io":{{}}}}}}"#,
                b64("hub:pw")
            ),
        )
        .unwrap();
        let s = Sources { cnb_registry_auth: None, docker_config: Some(cfg.clone()) };
        assert_eq!(s.resolve("docker.io").unwrap().credentials, basic("hub", "pw"));
        assert_eq!(s.resolve("127.0.0.1:5001").unwrap().credentials, basic("u", "p:w"));
        let r = s.resolve("empty.io").unwrap();
        assert_eq!(r.credentials, Credentials::Anonymous);
        assert!(r.hint().contains("no credentials found"), "{}", r.hint());
        // A missing file is no credentials; a broken one is an error naming it.
        let missing = Sources { cnb_registry_auth: None, docker_config: Some(d.path().join("nope.json")) };
        assert_eq!(missing.resolve("docker.io").unwrap().credentials, Credentials::Anonymous);
        std::fs::write(&cfg, "{not json").unwrap();
        let e = s.resolve("docker.io").unwrap_err();
        assert!(e.to_string().contains("config.json") && e.is_user_error(), "{e}");
    }

    #[test]
    fn malformed_cnb_registry_auth_is_a_clear_error() {
        for bad in ["not json", r#"{"r.io":"Digest x"}"#, r#"{"r.io":"Basic !!!"}"#, r#"{"r.io":42}"#] {
            let s = Sources { cnb_registry_auth: Some(bad.into()), docker_config: None };
            let e = s.resolve("r.io").unwrap_err();
            assert!(e.to_string().starts_with("CNB_REGISTRY_AUTH: "), "{e}");
        }
    }
}
