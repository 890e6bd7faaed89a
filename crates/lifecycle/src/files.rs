//! The lifecycle's TOML files (group.toml, plan.toml, analyzed.toml, extension.toml,
//! extend-config.toml, layer metadata) and its naming rules.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{LifecycleError, Result};

/// Buildpack and extension ids in paths: `/` becomes `_` (lifecycle `launch.EscapeID`).
pub fn escape_id(id: &str) -> String {
    id.replace('/', "_")
}

pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(LifecycleError::io(path))?;
    toml::from_str(&text).map_err(|e| LifecycleError::file(path, format!("invalid TOML: {}", e.message())))
}

/// Writes a file atomically (temp name in the same dir, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(LifecycleError::io(dir))?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    fs::write(&tmp, bytes).map_err(LifecycleError::io(&tmp))?;
    fs::rename(&tmp, path).map_err(LifecycleError::io(path))
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct GroupEntry {
    pub id: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub homepage: Option<String>,
}

/// `group.toml`: buildpacks and image extensions, in order.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Group {
    #[serde(default)]
    pub group: Vec<GroupEntry>,
    #[serde(default, rename = "group-extensions")]
    pub extensions: Vec<GroupEntry>,
}

/// `extension.toml`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExtensionDescriptor {
    pub api: String,
    pub extension: ExtensionInfo,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtensionInfo {
    pub id: String,
    pub version: String,
    #[serde(default, rename = "clear-env")]
    pub clear_env: bool,
}

/// `plan.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Plan {
    #[serde(default)]
    pub entries: Vec<PlanEntry>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PlanEntry {
    #[serde(default)]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub requires: Vec<Require>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Provider {
    pub id: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extension: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Require {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<toml::Table>,
}

/// The Buildpack Plan an extension receives (`CNB_BP_PLAN_PATH`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BuildpackPlan {
    pub entries: Vec<BuildpackPlanEntry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildpackPlanEntry {
    pub name: String,
    pub metadata: toml::Table,
}

/// `extend-config.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ExtendConfig {
    #[serde(default)]
    pub build: ArgsSection,
    #[serde(default)]
    pub run: ArgsSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArgsSection {
    #[serde(default)]
    pub args: Vec<BuildArg>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BuildArg {
    pub name: String,
    pub value: String,
}

/// Build args the lifecycle sets itself; extend-config.toml may not.
pub const RESERVED_ARGS: &[&str] = &["build_id", "user_id", "group_id"];

impl ExtendConfig {
    pub fn read(path: &Path) -> Result<ExtendConfig> {
        let config: ExtendConfig = read_toml(path)?;
        for arg in config.build.args.iter().chain(&config.run.args) {
            if RESERVED_ARGS.contains(&arg.name.as_str()) {
                return Err(LifecycleError::file(
                    path,
                    format!("arg with name `{}` is not allowed (the lifecycle sets it)", arg.name),
                ));
            }
        }
        Ok(config)
    }
}

/// `analyzed.toml`, edited as a table so fields we do not model survive.
#[derive(Debug, Clone, Default)]
pub struct Analyzed {
    pub table: toml::Table,
}

/// Target data of the run image (`[run-image.target]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    pub os: String,
    pub arch: String,
    pub variant: String,
    pub distro_name: String,
    pub distro_version: String,
}

impl Analyzed {
    pub fn read(path: &Path) -> Result<Analyzed> {
        Ok(Analyzed { table: read_toml(path)? })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(&self.table).map_err(|e| LifecycleError::file(path, e.to_string()))?;
        write_atomic(path, text.as_bytes())
    }

    fn section(&self, name: &str) -> Option<&toml::Table> {
        self.table.get(name)?.as_table()
    }

    fn section_mut(&mut self, name: &str) -> &mut toml::Table {
        if !self.table.get(name).is_some_and(toml::Value::is_table) {
            self.table.insert(name.into(), toml::Value::Table(toml::Table::new()));
        }
        self.table.get_mut(name).and_then(toml::Value::as_table_mut).expect("just inserted")
    }

    fn str_of(&self, section: &str, key: &str) -> Option<&str> {
        self.section(section)?.get(key)?.as_str().filter(|s| !s.is_empty())
    }

    pub fn run_image_reference(&self) -> Option<&str> {
        self.str_of("run-image", "reference")
    }

    pub fn run_image_name(&self) -> Option<&str> {
        self.str_of("run-image", "image")
    }

    pub fn build_image_reference(&self) -> Option<&str> {
        self.str_of("build-image", "reference")
    }

    pub fn run_image_extend(&self) -> bool {
        self.section("run-image").and_then(|s| s.get("extend")).and_then(toml::Value::as_bool).unwrap_or(false)
    }

    pub fn target(&self) -> Target {
        let t = self.section("run-image").and_then(|s| s.get("target")).and_then(toml::Value::as_table);
        let get = |k: &str| t.and_then(|t| t.get(k)).and_then(toml::Value::as_str).unwrap_or("").to_string();
        let distro = t.and_then(|t| t.get("distro")).and_then(toml::Value::as_table);
        let dget = |k: &str| distro.and_then(|d| d.get(k)).and_then(toml::Value::as_str).unwrap_or("").to_string();
        Target {
            os: get("os"),
            arch: get("arch"),
            variant: get("variant"),
            distro_name: dget("name"),
            distro_version: dget("version"),
        }
    }

    pub fn set_run_image_extend(&mut self, extend: bool) {
        self.section_mut("run-image").insert("extend".into(), toml::Value::Boolean(extend));
    }

    /// A run image switch: the new name; reference and target cleared (spec).
    pub fn switch_run_image(&mut self, image: &str) {
        let s = self.section_mut("run-image");
        s.insert("image".into(), toml::Value::String(image.into()));
        s.remove("reference");
        s.remove("target");
    }

    pub fn set_build_image(&mut self, reference: Option<&str>, extend: bool) {
        let s = self.section_mut("build-image");
        if let Some(r) = reference {
            s.insert("reference".into(), toml::Value::String(r.into()));
        }
        s.insert("extend".into(), toml::Value::Boolean(extend));
    }
}

/// `<layers>/<id>/<layer>.toml`: the types of a layer.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LayerMetadata {
    #[serde(default)]
    pub types: LayerTypes,
    #[serde(default)]
    pub metadata: Option<toml::Table>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
pub struct LayerTypes {
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub cache: bool,
    /// Extension layers (the RFC's `CNB_EXT_LAYER_DIR`): never exported.
    #[serde(default)]
    pub extension: bool,
}

/// The metadata file written for an extension layer.
pub const EXTENSION_LAYER_TOML: &str = "[types]\nlaunch = false\nbuild = false\ncache = false\nextension = true\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analyzed_round_trip_keeps_unknown_fields() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("analyzed.toml");
        fs::write(&p, "[image]\nreference = \"prev\"\n[run-image]\nimage = \"run\"\nreference = \"r@sha256:1\"\n[run-image.target]\nos = \"linux\"\narch = \"amd64\"\n[run-image.target.distro]\nname = \"debian\"\nversion = \"12\"\n").unwrap();
        let mut a = Analyzed::read(&p).unwrap();
        assert_eq!(
            a.target(),
            Target {
                os: "linux".into(),
                arch: "amd64".into(),
                variant: "".into(),
                distro_name: "debian".into(),
                distro_version: "12".into()
            }
        );
        a.switch_run_image("other");
        a.set_run_image_extend(true);
        a.write(&p).unwrap();
        let b = Analyzed::read(&p).unwrap();
        assert_eq!(b.run_image_name(), Some("other"));
        assert_eq!(b.run_image_reference(), None);
        assert!(b.run_image_extend());
        assert_eq!(b.target(), Target::default());
        assert_eq!(b.table["image"]["reference"].as_str(), Some("prev"));
    }

    #[test]
    fn extend_config_rejects_reserved_args() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("extend-config.toml");
        fs::write(&p, "[[run.args]]\nname = \"user_id\"\nvalue = \"0\"\n").unwrap();
        assert!(ExtendConfig::read(&p).unwrap_err().to_string().contains("`user_id` is not allowed"));
        fs::write(&p, "[[build.args]]\nname = \"x\"\nvalue = \"1\"\n[[run.args]]\nname = \"y\"\nvalue = \"2\"\n")
            .unwrap();
        let c = ExtendConfig::read(&p).unwrap();
        assert_eq!((c.build.args[0].name.as_str(), c.run.args[0].value.as_str()), ("x", "2"));
    }
}
