//! What the lifecycle's extender does after `-kind build`: the build image was extended in
//! place (the container's own filesystem), so the build phase runs right there, in the same
//! container, and buildpacks see what the build.Dockerfiles installed. Like the lifecycle:
//! `<layers>` is handed to the build user (recursively, unless that user can already write
//! it), privileges are dropped to `CNB_USER_ID:CNB_GROUP_ID`, the extended image's `Env` and
//! the user's `HOME`/`USER` are set, and the builder is executed with the same platform inputs.

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{LifecycleError, Result};

/// Where the lifecycle keeps its build phase.
pub const DEFAULT_BUILDER: &str = "/cnb/lifecycle/builder";

#[derive(Debug, Clone)]
pub struct BuilderHandoff {
    /// The build phase's executable (`/cnb/lifecycle/builder`).
    pub builder: PathBuf,
    /// Its arguments: the platform inputs the extender was given.
    pub args: Vec<OsString>,
    pub uid: u32,
    pub gid: u32,
    /// Handed to `uid:gid` before the build (buildpacks write their layers there).
    pub layers: PathBuf,
    /// The extended build image's `Env`, set on top of ours.
    pub image_env: Vec<(String, String)>,
    /// The image's `/etc/passwd`, for the user's `HOME` and `USER`.
    pub passwd: Option<Vec<u8>>,
}

/// The flags the lifecycle's builder takes, from the inputs the extender resolved.
#[allow(clippy::too_many_arguments)]
pub fn builder_args(
    app: &Path,
    layers: &Path,
    platform: &Path,
    group: &Path,
    plan: &Path,
    analyzed: &Path,
    buildpacks: &Path,
    log_level: Option<&str>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    for (flag, value) in [
        ("-app", app),
        ("-layers", layers),
        ("-platform", platform),
        ("-group", group),
        ("-plan", plan),
        ("-analyzed", analyzed),
        ("-buildpacks", buildpacks),
    ] {
        args.push(flag.into());
        args.push(value.into());
    }
    if let Some(level) = log_level {
        args.push("-log-level".into());
        args.push(level.into());
    }
    args
}

/// Replaces this process with the build phase. Returns only on failure.
pub fn exec_builder(h: &BuilderHandoff) -> LifecycleError {
    if let Err(e) = ensure_owner(&h.layers, h.uid, h.gid) {
        return e;
    }
    let (home, user) = user_entry(h.uid, h.passwd.as_deref());
    let mut cmd = Command::new(&h.builder);
    cmd.args(&h.args);
    for (k, v) in &h.image_env {
        cmd.env(k, v);
    }
    cmd.env("HOME", home);
    if ext_oci::tls::exposed_cert_file().is_some() {
        // Our in-memory trust roots mean nothing to another process.
        cmd.env_remove("SSL_CERT_FILE");
    }
    if let Some(user) = user {
        cmd.env("USER", user);
    }
    // SAFETY: geteuid/getegid have no preconditions.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if (euid, egid) != (h.uid, h.gid) {
        // As root, std also clears the supplementary groups before `setuid`: the builder holds
        // the build user's rights only.
        cmd.gid(h.gid).uid(h.uid);
    }
    tracing::info!("running the build phase: {} as {}:{}", h.builder.display(), h.uid, h.gid);
    let err = cmd.exec();
    LifecycleError::Invalid(format!("cannot run the build phase {} as {}:{}: {err}", h.builder.display(), h.uid, h.gid))
}

/// The user's home directory and name from the image's `/etc/passwd` (`/` and none if absent).
fn user_entry(uid: u32, passwd: Option<&[u8]>) -> (String, Option<String>) {
    let text = passwd.map(String::from_utf8_lossy).unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) {
            let home = if f[5].is_empty() { "/" } else { f[5] };
            return (home.to_string(), Some(f[0].to_string()));
        }
    }
    ("/".to_string(), None)
}

/// The lifecycle's `EnsureOwner`: nothing to do if `uid:gid` can already write `dir` (its
/// children are assumed to follow); otherwise chown the tree, never following symlinks.
pub fn ensure_owner(dir: &Path, uid: u32, gid: u32) -> Result<()> {
    let md = match std::fs::metadata(dir) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LifecycleError::Io { path: dir.to_path_buf(), source: e }),
    };
    let writable = md.uid() == uid || (md.gid() == gid && md.mode() & 0o020 != 0) || md.mode() & 0o002 != 0;
    if writable {
        return Ok(());
    }
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let entry = entry.map_err(|e| LifecycleError::Io { path: dir.to_path_buf(), source: e.into() })?;
        std::os::unix::fs::lchown(entry.path(), Some(uid), Some(gid))
            .map_err(|e| LifecycleError::Io { path: entry.path().to_path_buf(), source: e })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_and_name_from_passwd() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\ncnb:x:1000:1000::/home/cnb:/bin/sh\nnohome:x:7:7:::\n";
        assert_eq!(user_entry(1000, Some(passwd)), ("/home/cnb".into(), Some("cnb".into())));
        assert_eq!(user_entry(7, Some(passwd)), ("/".into(), Some("nohome".into())));
        assert_eq!(user_entry(42, Some(passwd)), ("/".into(), None));
        assert_eq!(user_entry(0, None), ("/".into(), None));
    }

    #[test]
    fn ensure_owner_chowns_only_when_the_user_cannot_write() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let layers = d.path().join("layers");
        std::fs::create_dir_all(layers.join("bp/l")).unwrap();
        std::fs::write(layers.join("bp/l/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", layers.join("bp/link")).unwrap();
        let passwd_owner = std::fs::metadata("/etc/passwd").unwrap().uid();
        ensure_owner(&layers, 1234, 5678).unwrap();
        for p in ["", "bp", "bp/l", "bp/l/f", "bp/link"] {
            let md = std::fs::symlink_metadata(layers.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (1234, 5678), "{p}");
        }
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), passwd_owner, "symlinks are not followed");
        // Already writable by the user: left alone (the lifecycle's shortcut).
        std::os::unix::fs::lchown(layers.join("bp/l/f"), Some(0), Some(0)).unwrap();
        ensure_owner(&layers, 1234, 5678).unwrap();
        assert_eq!(std::fs::metadata(layers.join("bp/l/f")).unwrap().uid(), 0);
    }
}
