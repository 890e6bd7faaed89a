//! Platforms (`os/arch[/variant]`) and how an image index entry is matched against one.

use std::fmt;
use std::str::FromStr;

use crate::error::OciError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform ext-extend runs on, in Go's GOOS/GOARCH names as images use them.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            "arm" => "arm",
            other => other,
        };
        Platform { os: std::env::consts::OS.into(), architecture: architecture.into(), variant: None }
    }

    /// Whether an index entry's platform satisfies this one. A requested variant must match;
    /// none requested accepts any (arm64's `v8` is the norm, so it is treated as unset).
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let norm = |v: Option<&str>| match (architecture, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        self.os == os
            && self.architecture == architecture
            && (self.variant.is_none() || norm(self.variant.as_deref()) == norm(variant))
    }
}

impl FromStr for Platform {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Self, OciError> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => {
                Ok(Platform { os: (*os).into(), architecture: (*arch).into(), variant: None })
            }
            [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
                Ok(Platform { os: (*os).into(), architecture: (*arch).into(), variant: Some((*variant).into()) })
            }
            _ => Err(OciError::BadPlatform(s.into())),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_match() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        let arm: Platform = "linux/arm/v7".parse().unwrap();
        assert!(!arm.matches("linux", "arm", Some("v6")));
        let amd: Platform = "linux/amd64".parse().unwrap();
        assert!(amd.matches("linux", "amd64", Some("v3")));
        assert!(!amd.matches("windows", "amd64", None));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//".parse::<Platform>().is_err());
        assert_eq!(Platform::host().os, "linux");
    }
}
