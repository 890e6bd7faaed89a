//! Image references on the command line: `oci:DIR[:TAG]` (an OCI image layout) and
//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` (a registry).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::Digest;
use crate::error::OciError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Layout(LayoutRef),
    Registry(RegistryRef),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// What to ask the registry for: the digest if pinned, else the tag (default `latest`).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".into(),
        }
    }

    /// Host part without the port, for loopback checks.
    pub fn host(&self) -> &str {
        if let Some(rest) = self.registry.strip_prefix('[') {
            return rest.split(']').next().unwrap_or(rest);
        }
        self.registry.split(':').next().unwrap_or(&self.registry)
    }
}

impl FromStr for ImageRef {
    type Err = OciError;

    fn from_str(s: &str) -> Result<Self, OciError> {
        let bad = |reason: &str| OciError::BadReference { reference: s.into(), reason: reason.into() };
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad("missing directory after oci:"));
            }
            // The tag is after the last ':' unless that part looks like a path.
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((dir, tag)) if !dir.is_empty() && !tag.contains('/') => (dir, Some(tag)),
                _ => (rest, None),
            };
            if let Some(t) = tag
                && !valid_tag(t)
            {
                return Err(bad("a tag is 1-128 characters of [A-Za-z0-9_.-], not starting with . or -"));
            }
            return Ok(ImageRef::Layout(LayoutRef { dir: PathBuf::from(dir), tag: tag.map(String::from) }));
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            let (registry, path) =
                rest.split_once('/').ok_or_else(|| bad("expected docker://HOST[:PORT]/REPO[:TAG]"))?;
            if registry.is_empty() || !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
                return Err(bad(
                    "the registry host must be explicit, e.g. docker://registry.example.com/repo or docker://127.0.0.1:5000/repo",
                ));
            }
            let (path, digest) = match path.split_once('@') {
                Some((p, d)) => (p, Some(d.parse::<Digest>()?)),
                None => (path, None),
            };
            let (repository, tag) = match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, Some(t)),
                _ => (path, None),
            };
            if repository.is_empty()
                || !repository.split('/').all(|c| {
                    !c.is_empty()
                        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                })
            {
                return Err(bad("a repository is lowercase path components of [a-z0-9._-]"));
            }
            if let Some(t) = tag
                && !valid_tag(t)
            {
                return Err(bad("a tag is 1-128 characters of [A-Za-z0-9_.-], not starting with . or -"));
            }
            return Ok(ImageRef::Registry(RegistryRef {
                registry: registry.into(),
                repository: repository.into(),
                tag: tag.map(String::from),
                digest,
            }));
        }
        Err(bad("expected oci:DIR[:TAG] or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]"))
    }
}

impl ImageRef {
    /// An image as a Dockerfile names it (`COPY --from=`): `oci:` and `docker://` references
    /// as [`FromStr`] reads them, or a Docker name normalized as Docker does: no registry
    /// (a first component without `.` or `:` that is not `localhost`) means Docker Hub, and a
    /// one-component Hub name is in `library/` (`busybox` is
    /// `docker://docker.io/library/busybox`; `ghcr.io/o/r:t`, `127.0.0.1:5000/r` keep their host).
    pub fn from_docker_name(s: &str) -> Result<ImageRef, OciError> {
        if s.starts_with("oci:") || s.starts_with("docker://") {
            return s.parse();
        }
        let bad = |reason: &str| OciError::BadReference { reference: s.into(), reason: reason.into() };
        if s.contains("://") {
            return Err(bad(
                "expected a Docker image name (busybox, ghcr.io/o/r:t), docker://HOST/REPO[:TAG] or oci:DIR[:TAG]",
            ));
        }
        let (domain, path) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_string()),
            _ => ("docker.io", s.to_string()),
        };
        let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
        let path = if domain == "docker.io" && !path.split(['@', ':']).next().unwrap_or("").contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        format!("docker://{domain}/{path}").parse().map_err(|e| match e {
            OciError::BadReference { reason, .. } => bad(&reason),
            other => other,
        })
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout(l) => match &l.tag {
                Some(t) => write!(f, "oci:{}:{t}", l.dir.display()),
                None => write!(f, "oci:{}", l.dir.display()),
            },
            ImageRef::Registry(r) => {
                write!(f, "docker://{}/{}", r.registry, r.repository)?;
                if let Some(t) = &r.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &r.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_normalize_as_docker_does() {
        let reg = |s: &str| match ImageRef::from_docker_name(s).unwrap() {
            ImageRef::Registry(r) => (r.registry, r.repository, r.tag, r.digest.map(|d| d.to_string())),
            other => panic!("{s}: {other:?}"),
        };
        let t = |x: &str| Some(x.to_string());
        assert_eq!(reg("busybox"), ("docker.io".into(), "library/busybox".into(), None, None));
        assert_eq!(reg("busybox:1.36"), ("docker.io".into(), "library/busybox".into(), t("1.36"), None));
        assert_eq!(
            reg("paketobuildpacks/run:base"),
            ("docker.io".into(), "paketobuildpacks/run".into(), t("base"), None)
        );
        assert_eq!(reg("index.docker.io/library/alpine"), ("docker.io".into(), "library/alpine".into(), None, None));
        assert_eq!(reg("ghcr.io/o/r:t"), ("ghcr.io".into(), "o/r".into(), t("t"), None));
        assert_eq!(reg("127.0.0.1:5000/tools/bb:v1"), ("127.0.0.1:5000".into(), "tools/bb".into(), t("v1"), None));
        assert_eq!(reg("localhost/x"), ("localhost".into(), "x".into(), None, None));
        let pinned = format!("alpine@sha256:{}", "a".repeat(64));
        assert_eq!(reg(&pinned).3, Some(format!("sha256:{}", "a".repeat(64))));
        assert_eq!(reg(&pinned).1, "library/alpine");
        assert!(matches!(ImageRef::from_docker_name("oci:dir:tag").unwrap(), ImageRef::Layout(_)));
        assert_eq!(reg("docker://127.0.0.1:5000/x").0, "127.0.0.1:5000");
        for bad in ["Busybox", "https://example.com/x", "ghcr.io/", "busybox:"] {
            let e = ImageRef::from_docker_name(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn layout_refs() {
        assert_eq!(
            "oci:/tmp/run:latest".parse::<ImageRef>().unwrap(),
            ImageRef::Layout(LayoutRef { dir: "/tmp/run".into(), tag: Some("latest".into()) })
        );
        assert_eq!(
            "oci:out".parse::<ImageRef>().unwrap(),
            ImageRef::Layout(LayoutRef { dir: "out".into(), tag: None })
        );
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("oci:/x:bad tag".parse::<ImageRef>().is_err());
        assert!("/tmp/run".parse::<ImageRef>().is_err());
    }

    #[test]
    fn registry_refs() {
        let r = "docker://127.0.0.1:5000/test/busybox:v1".parse::<ImageRef>().unwrap();
        let ImageRef::Registry(r) = r else { panic!() };
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "test/busybox", Some("v1"))
        );
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(r.reference(), "v1");
        let d = format!("sha256:{}", "a".repeat(64));
        let r = format!("docker://localhost/x@{d}").parse::<ImageRef>().unwrap();
        let ImageRef::Registry(r) = r else { panic!() };
        assert_eq!(r.reference(), d);
        assert!("docker://busybox".parse::<ImageRef>().is_err());
        assert!("docker://reg.io/UPPER".parse::<ImageRef>().is_err());
        assert_eq!("docker://reg.io/a/b:t".parse::<ImageRef>().unwrap().to_string(), "docker://reg.io/a/b:t");
    }
}
