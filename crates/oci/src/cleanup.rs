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
    }
}

/// The name prefix for a temporary directory that [`remove_stale`] can recognise as this
/// process's: `<prefix><pid>-`.
pub fn owned_prefix(prefix: &str) -> String {
    format!("{prefix}{}-", std::process::id())
}

/// Removes the directories (or files) in `parent` named `<prefix><pid>-...` whose process is
/// gone: what runs killed outright (SIGKILL, power loss) left behind. Returns how many.
pub fn remove_stale(parent: &std::path::Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!("removing {} left by an interrupted run (pid {pid})", e.path().display());
        let gone = match e.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(e.path()),
            _ => std::fs::remove_file(e.path()),
        };
        if gone.is_ok() {
            removed += 1;
        }
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
