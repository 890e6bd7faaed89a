//! What `RUN --mount`s are made of on this side of the sandbox: cache directories kept between
//! builds (with BuildKit's sharing modes as file locks, so two extenders on one `/kaniko`
//! volume take turns across processes and PID namespaces), private copies of build-context
//! files for bind mounts (so `rw` writes are discarded), secret files and the SSH agent socket.
//! Nothing here ever reaches a layer: the sandbox mounts these over the image's tree.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use ext_dockerfile::{FileOwner, Location, MountKind, RunMount, Sharing};
use ext_oci::Digest;
use ext_rootfs::{MountSource, SandboxMount};

use crate::context::{BuildContext, ContextEntry, EntryKind};
use crate::error::{ExecError, Result};
use crate::paths::clean_relative;

/// Where a `--secret` comes from (buildx syntax: `id=X,src=FILE`, `id=X,env=VAR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    /// Parses a `--secret` value into its id and source. Without `src`/`env`, as buildx: the
    /// environment variable named like the id if it is set, else a file of that name.
    pub fn parse(spec: &str) -> std::result::Result<(String, SecretSource), String> {
        let mut id = None;
        let mut source = None;
        let mut kind = None;
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let (k, v) = field.split_once('=').ok_or_else(|| format!("`{field}`: expected key=value"))?;
            match k {
                "id" => id = Some(v.to_string()),
                "src" | "source" => source = Some(v.to_string()),
                "env" => {
                    kind = Some("env");
                    source = Some(v.to_string());
                }
                "type" if v == "file" || v == "env" => kind = Some(if v == "env" { "env" } else { "file" }),
                _ => return Err(format!("`{field}`: expected id=, src=, env= or type=file|env")),
            }
        }
        let id = id.filter(|i| !i.is_empty()).ok_or("a secret needs an id (id=NAME)")?;
        let source = match (kind, source) {
            (Some("env"), Some(var)) => SecretSource::Env(var),
            (Some("env"), None) => SecretSource::Env(id.clone()),
            (_, Some(path)) => SecretSource::File(PathBuf::from(path)),
            (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
            (_, None) => SecretSource::File(PathBuf::from(&id)),
        };
        Ok((id, source))
    }

    /// The secret's bytes. They go to a file or a variable of the RUN only: never a log line,
    /// a layer or a step cache key.
    fn read(&self) -> std::result::Result<Vec<u8>, String> {
        match self {
            SecretSource::File(p) => fs::read(p).map_err(|e| format!("{}: {e}", p.display())),
            SecretSource::Env(v) => std::env::var_os(v)
                .map(std::os::unix::ffi::OsStringExt::into_vec)
                .ok_or_else(|| format!("the environment variable {v} is not set")),
        }
    }
}

/// Parses an `--ssh` value: `default` (the agent at `$SSH_AUTH_SOCK`), `ID=SOCKET` or `ID`
/// alone (again `$SSH_AUTH_SOCK`).
pub fn parse_ssh(spec: &str) -> std::result::Result<(String, PathBuf), String> {
    let (id, path) = match spec.split_once('=') {
        Some((id, path)) => (id.to_string(), Some(PathBuf::from(path))),
        None => (spec.to_string(), None),
    };
    if id.is_empty() {
        return Err("an --ssh value needs an id (`default` or ID=SOCKET)".into());
    }
    let path = match path {
        Some(p) => p,
        None => std::env::var_os("SSH_AUTH_SOCK")
            .map(PathBuf::from)
            .ok_or_else(|| format!("--ssh {id}: SSH_AUTH_SOCK is not set (give the socket as {id}=PATH)"))?,
    };
    Ok((id, path))
}

/// What a session offers RUN mounts.
#[derive(Debug, Clone, Default)]
pub struct MountSources {
    pub secrets: BTreeMap<String, SecretSource>,
    pub ssh: BTreeMap<String, PathBuf>,
}

/// The mounts of one RUN, ready for the sandbox; holds the cache locks and temporary copies
/// until it is dropped (after the command).
#[derive(Debug, Default)]
pub struct PreparedMounts {
    pub mounts: Vec<SandboxMount>,
    /// Variables to add to the command's environment (secrets given as `env=`,
    /// `SSH_AUTH_SOCK`).
    pub env: Vec<(String, String)>,
    _locks: Vec<fs::File>,
    _temp: Vec<tempfile::TempDir>,
}

/// What [`prepare`] needs besides the mounts.
pub struct MountInputs<'a> {
    pub at: &'a Location,
    /// The WORKDIR the RUN runs in (relative targets join it).
    pub workdir: &'a str,
    pub context: &'a BuildContext,
    /// Where cache mounts live between builds (`<cache>/run-mounts`).
    pub cache_root: &'a Path,
    /// Scratch space for this build (secret files, context copies).
    pub scratch: &'a Path,
    pub sources: &'a MountSources,
}

/// A mount target as the sandbox takes it: absolute, relative ones joined with the WORKDIR.
pub fn absolute_target(target: &str, workdir: &str) -> String {
    let joined = if target.starts_with('/') { target.to_string() } else { format!("{workdir}/{target}") };
    format!("/{}", clean_relative(&joined).unwrap_or_default())
}

/// The directory of a cache mount `id` (instance `n` for `sharing=private`).
fn cache_dir(root: &Path, id: &str, n: usize) -> PathBuf {
    let hex = Digest::of(id.as_bytes()).hex().to_string();
    let name = if n == 0 { hex[..32].to_string() } else { format!("{}-{n}", &hex[..32]) };
    root.join(name)
}

pub fn prepare(run_mounts: &[RunMount], i: &MountInputs<'_>) -> Result<PreparedMounts> {
    let mut out = PreparedMounts::default();
    for m in run_mounts {
        let target = m.target.as_deref().map(|t| absolute_target(t, i.workdir));
        let what = format!(
            "RUN --mount type={}{}",
            m.kind.type_name(),
            match &target {
                Some(t) => format!(",target={t}"),
                None => String::new(),
            }
        );
        let fail = |message: String| ExecError::step(i.at, format!("{what}: {message}"));
        let source = match &m.kind {
            MountKind::Tmpfs { size } => Some(MountSource::Tmpfs { size: *size }),
            MountKind::Cache { id, sharing, owner } => {
                let (dir, lock) = open_cache(i.cache_root, id, *sharing, *owner).map_err(fail)?;
                out._locks.push(lock);
                Some(MountSource::Dir(dir))
            }
            MountKind::Bind { source } => {
                let tmp =
                    tempfile::Builder::new().prefix("bind-").tempdir_in(i.scratch).map_err(ExecError::io(i.scratch))?;
                let copy = copy_from_context(i.context, source, tmp.path()).map_err(fail)?;
                out._temp.push(tmp);
                Some(copy)
            }
            MountKind::Secret { id, env, required, owner } => match i.sources.secrets.get(id) {
                None if *required => {
                    return Err(fail(format!(
                        "the secret `{id}` is required but not given (--secret id={id},src=FILE)"
                    )));
                }
                None => None,
                Some(src) => {
                    let bytes = src.read().map_err(|e| fail(format!("secret `{id}`: {e}")))?;
                    if let Some(var) = env {
                        let value = String::from_utf8(bytes.clone()).map_err(|_| {
                            fail(format!("secret `{id}` is not UTF-8 text, so env={var} cannot hold it"))
                        })?;
                        out.env.push((var.clone(), value));
                    }
                    match target {
                        None => None,
                        Some(_) => {
                            let tmp = tempfile::Builder::new()
                                .prefix("secret-")
                                .tempdir_in(i.scratch)
                                .map_err(ExecError::io(i.scratch))?;
                            let file = tmp.path().join("secret");
                            write_owned(&file, &bytes, *owner).map_err(|e| fail(e.to_string()))?;
                            out._temp.push(tmp);
                            Some(MountSource::File(file))
                        }
                    }
                }
            },
            MountKind::Ssh { id, required, .. } => match i.sources.ssh.get(id) {
                None if *required => {
                    return Err(fail(format!("the SSH agent `{id}` is required but not given (--ssh {id})")));
                }
                None => None,
                Some(socket) => {
                    if let Some(t) = &target
                        && !out.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK")
                    {
                        out.env.push(("SSH_AUTH_SOCK".into(), t.clone()));
                    }
                    Some(MountSource::File(socket.clone()))
                }
            },
        };
        if let (Some(source), Some(target)) = (source, target) {
            out.mounts.push(SandboxMount { target, source, readonly: m.readonly });
        }
    }
    Ok(out)
}

/// Opens (creating on first use, with the mount's mode and owner) the cache directory for
/// `id` and takes the lock its sharing mode asks for: `shared` a shared lock, `locked` an
/// exclusive one (waiting for the other builds), `private` an exclusive one on the first
/// instance no other build holds.
fn open_cache(
    root: &Path,
    id: &str,
    sharing: Sharing,
    owner: FileOwner,
) -> std::result::Result<(PathBuf, fs::File), String> {
    fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
    for n in 0.. {
        let dir = cache_dir(root, id, n);
        let lock_path = dir.with_extension("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        let locked = match sharing {
            Sharing::Shared => flock(&lock, libc::LOCK_SH),
            Sharing::Locked => match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
                Ok(false) => {
                    tracing::info!("cache mount `{id}` is in use by another build; waiting for it (sharing=locked)");
                    flock(&lock, libc::LOCK_EX)
                }
                other => other,
            },
            Sharing::Private => flock(&lock, libc::LOCK_EX | libc::LOCK_NB),
        }
        .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        if !locked {
            continue;
        }
        if !dir.is_dir() {
            // Made under a temporary name and renamed: a build killed halfway leaves no
            // directory with the wrong owner behind.
            let tmp = tempfile::Builder::new()
                .prefix(".new-")
                .tempdir_in(root)
                .map_err(|e| format!("{}: {e}", root.display()))?;
            std::os::unix::fs::chown(tmp.path(), Some(owner.uid), Some(owner.gid))
                .and_then(|_| fs::set_permissions(tmp.path(), fs::Permissions::from_mode(owner.mode & 0o7777)))
                .map_err(|e| format!("{}: {e}", tmp.path().display()))?;
            let made = tmp.keep();
            if let Err(e) = fs::rename(&made, &dir) {
                let _ = fs::remove_dir(&made);
                if !dir.is_dir() {
                    return Err(format!("{}: {e}", dir.display()));
                }
            }
        }
        return Ok((dir, lock));
    }
    unreachable!("the loop returns")
}

/// `flock(2)`: `Ok(false)` when a non-blocking request finds the lock taken. The lock lives
/// as long as the open file, whichever process or PID namespace holds it.
fn flock(file: &fs::File, op: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(false) } else { Err(e) }
}

/// Writes a secret file with the mount's mode and owner (created 0600 first: its bytes are
/// never readable by anyone else, even for a moment).
fn write_owned(path: &Path, bytes: &[u8], owner: FileOwner) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)?;
    std::os::unix::fs::fchown(&f, Some(owner.uid), Some(owner.gid))?;
    f.set_permissions(fs::Permissions::from_mode(owner.mode & 0o7777))
}

/// Copies what a bind mount's `source` names in the context (symlinks on the way followed
/// inside it; `.dockerignore`d files are not there) into `dest`, keeping modes, owners and
/// mtimes, and returns what to mount.
fn copy_from_context(context: &BuildContext, source: &str, dest: &Path) -> std::result::Result<MountSource, String> {
    let entry = context
        .lookup_path(source)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("source `{source}` is not in the build context"))?;
    let copy = |e: &ContextEntry, to: &Path| copy_entry(context, e, to).map_err(|err| format!("{}: {err}", e.path));
    match entry.kind {
        EntryKind::Dir => {
            let root = dest.join("d");
            copy(entry, &root)?;
            let skip = if entry.path.is_empty() { 0 } else { entry.path.len() + 1 };
            let mut dirs = Vec::new();
            for e in context.children_of(&entry.path).map_err(|e| e.to_string())? {
                let to = root.join(&e.path[skip..]);
                copy(e, &to)?;
                if e.kind == EntryKind::Dir {
                    dirs.push((e, to));
                }
            }
            // Directory times last: filling a directory changes its mtime.
            for (e, to) in dirs.iter().rev().chain(std::iter::once(&(entry, root.clone()))) {
                set_mtime(to, e.mtime).map_err(|err| format!("{}: {err}", e.path))?;
            }
            Ok(MountSource::Dir(root))
        }
        EntryKind::File { .. } => {
            let file = dest.join("f");
            copy(entry, &file)?;
            Ok(MountSource::File(file))
        }
        _ => Err(format!("source `{source}` is neither a file nor a directory")),
    }
}

fn copy_entry(context: &BuildContext, e: &ContextEntry, to: &Path) -> std::io::Result<()> {
    match &e.kind {
        EntryKind::Dir => fs::create_dir(to)?,
        EntryKind::File { .. } => {
            crate::special_file::copy_regular(&context.disk_path(e), to)?;
            set_mtime(to, e.mtime)?;
        }
        EntryKind::Symlink { target } => {
            symlink(target, to)?;
            std::os::unix::fs::lchown(to, Some(e.uid), Some(e.gid))?;
            return Ok(());
        }
        EntryKind::Other => return Ok(()),
    }
    std::os::unix::fs::chown(to, Some(e.uid), Some(e.gid))?;
    fs::set_permissions(to, fs::Permissions::from_mode(e.mode))
}

fn set_mtime(path: &Path, mtime: i64) -> std::io::Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    fs::File::open(path)?.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_ssh_values() {
        assert_eq!(
            SecretSource::parse("id=npm,src=/x/.npmrc").unwrap(),
            ("npm".into(), SecretSource::File("/x/.npmrc".into()))
        );
        assert_eq!(
            SecretSource::parse("id=tok,env=GH_TOKEN").unwrap(),
            ("tok".into(), SecretSource::Env("GH_TOKEN".into()))
        );
        assert_eq!(SecretSource::parse("id=tok,type=env").unwrap(), ("tok".into(), SecretSource::Env("tok".into())));
        assert!(SecretSource::parse("src=/x").unwrap_err().contains("needs an id"));
        assert!(SecretSource::parse("id=a,colour=red").unwrap_err().contains("colour=red"));
        assert_eq!(parse_ssh("default=/tmp/agent.sock").unwrap(), ("default".into(), PathBuf::from("/tmp/agent.sock")));
        assert_eq!(absolute_target("cache", "/work/dir"), "/work/dir/cache");
        assert_eq!(absolute_target("/a/../b/", "/w"), "/b");
    }

    #[test]
    fn private_caches_are_one_per_holder_and_made_with_their_owner() {
        let d = tempfile::tempdir().unwrap();
        let owner = FileOwner { mode: 0o700, uid: 0, gid: 0 };
        let (a, lock_a) = open_cache(d.path(), "/root/.cache", Sharing::Private, owner).unwrap();
        let (b, _lock_b) = open_cache(d.path(), "/root/.cache", Sharing::Private, owner).unwrap();
        assert_ne!(a, b, "a second private user gets another directory");
        assert_eq!(fs::metadata(&a).unwrap().permissions().mode() & 0o7777, 0o700);
        drop(lock_a);
        let (again, _l) = open_cache(d.path(), "/root/.cache", Sharing::Private, owner).unwrap();
        assert_eq!(again, a, "a released one is used again");
        let (s1, _l1) = open_cache(d.path(), "x", Sharing::Shared, owner).unwrap();
        let (s2, _l2) = open_cache(d.path(), "x", Sharing::Shared, owner).unwrap();
        assert_eq!(s1, s2, "shared users share");
    }
}
