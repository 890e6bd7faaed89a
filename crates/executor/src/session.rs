//! An extend session: one base image, any number of Dockerfiles applied in order (one per
//! extension), each instruction turned into config edits and/or one new layer.
//!
//! Base layers are never touched: the result is the base manifest's layers, by digest, plus
//! the layers this session wrote into its blob directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ext_dockerfile::{ConfigOp, Dockerfile, Location, Op, Plan, Step};
use ext_oci::layer::rfc3339;
use ext_oci::{HistoryEntry, Image, ImageConfig, LayerBlob, LayerOptions, LayerWriter};
use serde_json::{Value, json};

use crate::context::BuildContext;
use crate::copy::{CopyInput, CopyPlan, clean_clamped};
use crate::error::{ExecError, Result};
use crate::tree::ImageTree;
use crate::users::{self, GroupDefault};

/// How history entries name the instruction that made them.
#[derive(Debug, Clone, Default)]
pub enum Provenance {
    /// `created_by` is the instruction text; `comment` says ext-extend made it.
    #[default]
    Standalone,
    /// The CNB extender's format: `Layer: '<instruction>', Created by extension: <id>`.
    Extension(String),
}

#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub layer: LayerOptions,
    /// Private scratch space (ADD archive extraction, later the RUN rootfs).
    pub scratch: PathBuf,
}

/// What one instruction did.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub location: Location,
    pub text: String,
    /// The layer it added, if any.
    pub layer: Option<LayerBlob>,
    /// Image paths the layer holds (COPY/ADD), for reporting.
    pub paths: Vec<String>,
}

pub struct Session {
    base: Image,
    config: ImageConfig,
    layers: Vec<LayerBlob>,
    blob_dir: PathBuf,
    opts: SessionOptions,
    tree: Option<ImageTree>,
    created: String,
    copies: usize,
}

/// The result of a session: the base image plus new layers and the final config.
#[derive(Debug, Clone)]
pub struct ExtendedImage {
    pub base: Image,
    pub config: ImageConfig,
    pub new_layers: Vec<LayerBlob>,
}

impl Session {
    /// Starts a session on `base`; new layer blobs are written into `blob_dir`.
    pub fn new(base: Image, blob_dir: &Path, opts: SessionOptions) -> Session {
        let created = rfc3339(opts.layer.mtime.created_seconds());
        Session {
            config: base.config.clone(),
            base,
            layers: Vec::new(),
            blob_dir: blob_dir.to_path_buf(),
            opts,
            tree: None,
            created,
            copies: 0,
        }
    }

    pub fn base(&self) -> &Image {
        &self.base
    }

    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut ImageConfig {
        &mut self.config
    }

    pub fn new_layers(&self) -> &[LayerBlob] {
        &self.layers
    }

    /// Plans `dockerfile` against the current config and applies it.
    pub fn apply(
        &mut self,
        dockerfile: &Dockerfile,
        build_args: &BTreeMap<String, String>,
        context: &BuildContext,
        provenance: &Provenance,
    ) -> Result<Vec<StepReport>> {
        let plan = dockerfile.plan(build_args, &self.config.env())?;
        self.apply_plan(&plan, context, provenance)
    }

    pub fn apply_plan(
        &mut self,
        plan: &Plan,
        context: &BuildContext,
        provenance: &Provenance,
    ) -> Result<Vec<StepReport>> {
        let mut reports = Vec::with_capacity(plan.steps.len());
        let mut cmd_set = false;
        for step in &plan.steps {
            let at = step.location(&plan.file);
            let mut report =
                StepReport { location: at.clone(), text: step.text.clone(), layer: None, paths: Vec::new() };
            match &step.op {
                Op::Arg(_) => {}
                Op::Env(pairs) => pairs.iter().for_each(|(k, v)| self.config.set_env(k, v)),
                Op::Label(pairs) => pairs.iter().for_each(|(k, v)| self.config.set_label(k, v)),
                Op::User(u) => self.config.set_user(u),
                Op::Workdir(w) => {
                    let dir = self.resolve_workdir(w);
                    self.config.set_working_dir(&dir);
                }
                Op::Shell(s) => self.config.set_shell(s),
                Op::Copy(op) => {
                    let (layer, paths) = self.copy(op, &at, context)?;
                    report.layer = Some(layer);
                    report.paths = paths;
                }
                Op::Run(_) => {
                    return Err(ExecError::step(&at, "RUN is not supported by this version of ext-extend"));
                }
                Op::Config(c) => self.apply_config(c, &mut cmd_set),
            }
            self.record_history(step, &report, provenance);
            reports.push(report);
        }
        Ok(reports)
    }

    fn record_history(&mut self, step: &Step, report: &StepReport, provenance: &Provenance) {
        let (created_by, comment) = match provenance {
            Provenance::Standalone => (step.text.clone(), Some("ext-extend".to_string())),
            Provenance::Extension(id) => (format!("Layer: '{}', Created by extension: {id}", step.text), None),
        };
        let entry = HistoryEntry { created_by, comment, empty_layer: report.layer.is_none() };
        match &report.layer {
            Some(layer) => self.config.push_layer(&layer.diff_id, &self.created, entry),
            None => self.config.push_history(&self.created, entry),
        }
    }

    /// WORKDIR: relative paths join the current one; the result is absolute and clean.
    fn resolve_workdir(&self, w: &str) -> String {
        let joined = if w.starts_with('/') { w.to_string() } else { format!("{}/{w}", self.workdir()) };
        format!("/{}", clean_clamped(&joined))
    }

    /// The WORKDIR in effect (`/` if the image sets none).
    pub fn workdir(&self) -> String {
        match self.config.working_dir() {
            "" => "/".to_string(),
            w => w.to_string(),
        }
    }

    fn tree(&mut self) -> Result<&mut ImageTree> {
        if self.tree.is_none() {
            let started = std::time::Instant::now();
            let tree = ImageTree::from_image(&self.base)?;
            tracing::debug!(
                entries = tree.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "indexed base image"
            );
            self.tree = Some(tree);
        }
        Ok(self.tree.as_mut().expect("just built"))
    }

    fn copy(
        &mut self,
        op: &ext_dockerfile::CopyOp,
        at: &Location,
        context: &BuildContext,
    ) -> Result<(LayerBlob, Vec<String>)> {
        let workdir = self.workdir();
        let scratch = self.opts.scratch.join(format!("copy-{}", self.copies));
        self.copies += 1;
        let tree = self.tree()?.clone();
        let owner = match &op.chown {
            Some(spec) => Some(
                users::resolve(spec, tree.captured("etc/passwd"), tree.captured("etc/group"), GroupDefault::SameAsUid)
                    .map_err(|m| ExecError::step(at, format!("--chown={spec}: {m}")))?,
            ),
            None => None,
        };
        let plan =
            CopyPlan::new(&CopyInput { op, at, workdir: &workdir, context, tree: &tree, owner, scratch: &scratch })?;
        let mut writer = LayerWriter::create(&self.blob_dir, self.opts.layer).map_err(ExecError::io(&self.blob_dir))?;
        plan.write(&mut writer)?;
        let blob = writer.finish().map_err(ExecError::io(&self.blob_dir))?;
        plan.apply_to(self.tree()?)?;
        let _ = std::fs::remove_dir_all(&scratch);
        tracing::debug!("{at}: layer {} has {} entries", blob.digest.short(), blob.entries);
        self.layers.push(blob.clone());
        Ok((blob, plan.paths().map(|p| format!("/{p}")).collect()))
    }

    fn apply_config(&mut self, op: &ConfigOp, cmd_set: &mut bool) {
        let shell = self.config.shell();
        let argv = |args: &[String], prepend: bool| -> Value {
            if prepend { json!(shell.iter().chain(args).collect::<Vec<_>>()) } else { json!(args) }
        };
        match op {
            ConfigOp::Cmd { args, prepend_shell } => {
                self.config.set_field("Cmd", argv(args, *prepend_shell));
                *cmd_set = true;
            }
            ConfigOp::Entrypoint { args, prepend_shell } => {
                self.config.set_field("Entrypoint", argv(args, *prepend_shell));
                // Docker: an ENTRYPOINT resets a CMD inherited from the base image.
                if !*cmd_set {
                    self.config.set_field("Cmd", Value::Null);
                }
            }
            ConfigOp::Expose(ports) => self.config.add_to_set("ExposedPorts", ports),
            ConfigOp::Volume(v) => self.config.add_to_set("Volumes", v),
            ConfigOp::StopSignal(s) => self.config.set_field("StopSignal", json!(s)),
            ConfigOp::Healthcheck(h) => {
                let mut o = serde_json::Map::new();
                o.insert("Test".into(), json!(h.test));
                for (k, v) in [
                    ("Interval", h.interval_ns),
                    ("Timeout", h.timeout_ns),
                    ("StartPeriod", h.start_period_ns),
                    ("StartInterval", h.start_interval_ns),
                    ("Retries", h.retries),
                ] {
                    if let Some(v) = v {
                        o.insert(k.into(), json!(v));
                    }
                }
                self.config.set_field("Healthcheck", Value::Object(o));
            }
            ConfigOp::Maintainer(m) => self.config.set_author(m),
            ConfigOp::Onbuild(t) => self.config.push_onbuild(t),
        }
    }

    /// Ends the session: the final config (with `created` set) and the new layers.
    pub fn finish(mut self) -> ExtendedImage {
        self.config.set_created(&self.created);
        ExtendedImage { base: self.base, config: self.config, new_layers: self.layers }
    }
}
