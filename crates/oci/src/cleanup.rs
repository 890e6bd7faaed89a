//! Process-wide cleanup on Ctrl-C/SIGTERM: scratch directories, staging directories and
//! sandbox processes register here while they exist; the CLI's signal handler calls
//! [`run_now`] before exiting, so an interrupted build leaves neither half-written outputs nor
//! stray processes behind. Normal exits clean up through the owners' `Drop` instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Registry {
    paths: BTreeMap<u64, PathBuf>,
    processes: BTreeMap<u64, i32>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry { paths: BTreeMap::new(), processes: BTreeMap::new() });
static NEXT: AtomicU64 = AtomicU64::new(1);
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signal that interrupted the process, if any. Work that fails because cleanup killed
/// its processes should defer to the signal handler instead of reporting that failure.
pub fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a path registered until dropped (the owner removes the path itself).
#[must_use]
#[derive(Debug)]
pub struct PathGuard(u64);

impl Drop for PathGuard {
    fn drop(&mut self) {
        registry().paths.remove(&self.0);
    }
}

/// Keeps a process registered until dropped.
#[must_use]
#[derive(Debug)]
pub struct ProcessGuard(u64);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        registry().processes.remove(&self.0);
    }
}

pub fn register_path(path: impl Into<PathBuf>) -> PathGuard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry().paths.insert(id, path.into());
    PathGuard(id)
}

pub fn register_process(pid: u32) -> ProcessGuard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry().processes.insert(id, pid as i32);
    ProcessGuard(id)
}

/// Keeps a process group (led by `pgid`) registered until dropped: an interrupt kills every
/// process in it.
pub fn register_process_group(pgid: u32) -> ProcessGuard {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    registry().processes.insert(id, -(pgid as i32));
    ProcessGuard(id)
}

/// Records `signal`, kills registered processes, waits briefly for them to go, then removes
/// registered paths.
pub fn run_now(signal: i32) {
    INTERRUPTED.store(signal, Ordering::SeqCst);
    let (paths, pids): (Vec<PathBuf>, Vec<i32>) = {
        let r = registry();
        (r.paths.values().cloned().collect(), r.processes.values().copied().collect())
    };
    // A negative pid is a process group.
    for &pid in &pids {
        // SAFETY: sending a signal has no memory-safety implications.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while pids.iter().any(|p| is_running(p.abs())) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for p in paths {
        let _ = std::fs::remove_dir_all(&p);
        // Its owner lock (see `owned_tempdir`), which `OwnerLock`'s drop would have removed.
        let _ = std::fs::remove_file(lock_path(&p));
    }
}

/// Held while a temporary directory made by [`owned_tempdir`] is in use: an exclusive `flock`
/// on `<dir>.lock` beside it. The kernel drops the lock when the process dies, however it
/// dies, and the lock is seen from every PID namespace sharing the filesystem (pack runs the
/// build and run extenders at once, each as PID 1, on one `/kaniko` volume: a PID says
/// nothing about the other's processes). Dropping it removes the lock file, so declare it
/// after the directory's owner (fields drop in order).
#[derive(Debug)]
pub struct OwnerLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for OwnerLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file of a temporary directory or file at `path`.
fn lock_path(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(LOCK_SUFFIX);
    PathBuf::from(name)
}

const LOCK_SUFFIX: &str = ".lock";

/// A directory or file without a lock (made by a version that named its owner by PID, or
/// caught between creating its directory and its lock) is stale only when this old.
const UNLOCKED_STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Takes the lock of `path` (see [`OwnerLock`]); `None` if another process holds it. Only
/// sweeps take locks this way: owners make theirs with [`owned_tempdir`].
fn try_lock(path: &std::path::Path, create: bool) -> std::io::Result<Option<OwnerLock>> {
    use std::os::fd::AsRawFd;
    let lock = lock_path(path);
    let file = std::fs::OpenOptions::new().read(true).write(true).create(create).truncate(false).open(&lock)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EWOULDBLOCK) { Ok(None) } else { Err(e) };
    }
    Ok(Some(OwnerLock { _file: file, path: lock }))
}

/// Makes a temporary directory `<parent>/<prefix><random>` and locks it as in use by this
/// process, so [`remove_stale`] in any process leaves it alone until the process ends.
pub fn owned_tempdir(parent: &std::path::Path, prefix: &str) -> std::io::Result<(tempfile::TempDir, OwnerLock)> {
    use std::os::fd::AsRawFd;
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    // The lock file appears under its name already locked (made under a temporary name,
    // locked, then renamed): a sweep that found it unlocked would take the directory for a
    // dead run's. Until then the directory has no lock file, which a sweep leaves alone.
    let file = tempfile::Builder::new().prefix(".lock-").tempfile_in(parent)?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_file().as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let path = lock_path(dir.path());
    let file = file.persist(&path).map_err(|e| e.error)?;
    Ok((dir, OwnerLock { _file: file, path }))
}

/// Removes the directories (or files) in `parent` named `<prefix>...` that no live process
/// holds (see [`OwnerLock`]): what runs killed outright (SIGKILL, power loss) left behind.
/// Returns how many.
pub fn remove_stale(parent: &std::path::Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with(prefix)) else { continue };
        if let Some(owner) = name.strip_suffix(LOCK_SUFFIX) {
            // A lock whose directory is gone: removed with its directory, or here if it
            // outlived it (a kill between the two removals).
            if !parent.join(owner).exists()
                && let Ok(Some(lock)) = try_lock(&parent.join(owner), false)
            {
                drop(lock);
            }
            continue;
        }
        let path = e.path();
        let lock = match try_lock(&path, false) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > UNLOCKED_STALE_AFTER);
                if !old {
                    continue;
                }
                match try_lock(&path, true) {
                    Ok(Some(lock)) => lock,
                    _ => continue,
                }
            }
            Err(_) => continue,
        };
        tracing::info!("removing {} left by an interrupted run", path.display());
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed += 1;
        }
        drop(lock);
    }
    removed
}

/// Alive and not a zombie (a killed child stays a zombie until its parent waits).
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"),
        Err(_) => false,
    }
}
