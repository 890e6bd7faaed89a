//! Mount points for `RUN --mount` targets in a plain directory root (the stat strategy's flat
//! root): what the image lacks is made before the run and taken away after it, so the target
//! is exactly as before, whether the command succeeded or not (as BuildKit's mount stubs).
//! The overlay strategy puts them in its mount layer instead ([`crate::Rootfs`]), where they
//! never reach an upper directory.

use std::fs;
use std::path::{Path, PathBuf};

use filetime::FileTime;

use crate::error::RootfsError;
use crate::sandbox::SandboxMount;

/// What [`make`] created in a root, to be removed by [`Stubs::remove`].
#[derive(Debug, Default)]
pub(crate) struct Stubs {
    /// Root-relative paths we created, parents before children.
    created: Vec<PathBuf>,
    /// Directories that got a new entry from us: their times before, and their mtime right
    /// after (if it is still that after the run, the command did not change the directory).
    parents: Vec<(PathBuf, FileTime, FileTime, FileTime)>,
}

impl Stubs {
    /// Paths whose stat changed when the stubs were made or removed (for a stat index).
    pub(crate) fn touched(&self) -> impl Iterator<Item = &Path> {
        self.created.iter().map(PathBuf::as_path).chain(self.parents.iter().map(|(p, ..)| p.as_path()))
    }

    /// Removes the stubs (deepest first; only what is still an empty directory or an empty
    /// file: what the command put there stays) and gives their parents back their times,
    /// unless the command changed those directories itself.
    pub(crate) fn remove(&self, root: &Path) {
        let untouched: Vec<bool> = self
            .parents
            .iter()
            .map(|(rel, _, _, after_create)| {
                fs::symlink_metadata(root.join(rel))
                    .is_ok_and(|md| FileTime::from_last_modification_time(&md) == *after_create)
            })
            .collect();
        for rel in self.created.iter().rev() {
            let p = root.join(rel);
            match fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {
                    let _ = fs::remove_dir(&p);
                }
                Ok(md) if md.is_file() && md.len() == 0 => {
                    let _ = fs::remove_file(&p);
                }
                _ => {}
            }
        }
        for ((rel, atime, mtime, _), untouched) in self.parents.iter().zip(untouched).rev() {
            if untouched {
                let _ = filetime::set_symlink_file_times(root.join(rel), *atime, *mtime);
            }
        }
    }
}

/// Resolves each mount's target in `root` (symlinks followed inside it, as the kernel would
/// follow them in the sandbox) and creates what is missing: directories, or an empty file for
/// a file source. Returns the resolved targets, relative to `root`.
pub(crate) fn make(root: &Path, mounts: &[SandboxMount]) -> Result<(Stubs, Vec<(PathBuf, SandboxMount)>), RootfsError> {
    let mut stubs = Stubs::default();
    let mut resolved = Vec::with_capacity(mounts.len());
    for m in mounts {
        match make_one(root, m, &mut stubs) {
            Ok(rel) => resolved.push((rel, m.clone())),
            Err(e) => {
                stubs.remove(root);
                return Err(e);
            }
        }
    }
    Ok((stubs, resolved))
}

fn make_one(root: &Path, m: &SandboxMount, stubs: &mut Stubs) -> Result<PathBuf, RootfsError> {
    let err = |message: String| RootfsError::MountTarget { target: m.target.clone(), message };
    let rel_in = Path::new(m.target.trim_start_matches('/'));
    if rel_in.as_os_str().is_empty() {
        return Err(err("cannot mount over the root directory".into()));
    }
    let full = crate::resolve_in_root(root, rel_in).map_err(|e| err(e.to_string()))?;
    let rel = full.strip_prefix(root).map_err(|_| err("resolves outside the root".into()))?.to_path_buf();
    if rel.as_os_str().is_empty() {
        return Err(err("resolves to the root directory".into()));
    }
    let parts: Vec<_> = rel.iter().collect();
    let mut cur = PathBuf::new();
    for (i, part) in parts.iter().enumerate() {
        let parent = cur.clone();
        cur.push(part);
        let last = i + 1 == parts.len();
        let p = root.join(&cur);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() && !(last && m.source.is_file()) => continue,
            Ok(md) if last && m.source.is_file() && !md.is_dir() => continue,
            Ok(_) if last => {
                let want = if m.source.is_file() { "a file" } else { "a directory" };
                return Err(err(format!("the image has something else than {want} there")));
            }
            Ok(_) => return Err(err(format!("/{} is not a directory", cur.display()))),
            Err(_) => {}
        }
        // The first missing component: its parent gets a new entry.
        let pmd = fs::symlink_metadata(root.join(&parent)).map_err(RootfsError::io(root.join(&parent)))?;
        let (atime, mtime) = (FileTime::from_last_access_time(&pmd), FileTime::from_last_modification_time(&pmd));
        for j in i..parts.len() {
            let sub: PathBuf = parts[..=j].iter().collect();
            let p = root.join(&sub);
            if j + 1 == parts.len() && m.source.is_file() {
                fs::write(&p, b"").map_err(RootfsError::io(&p))?;
            } else {
                fs::create_dir(&p).map_err(RootfsError::io(&p))?;
            }
            stubs.created.push(sub);
        }
        let after = fs::symlink_metadata(root.join(&parent)).map_err(RootfsError::io(root.join(&parent)))?;
        stubs.parents.push((parent, atime, mtime, FileTime::from_last_modification_time(&after)));
        break;
    }
    Ok(rel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::MountSource;
    use std::os::unix::fs::symlink;

    fn dir_mount(target: &str) -> SandboxMount {
        SandboxMount { target: target.into(), source: MountSource::Tmpfs { size: None }, readonly: false }
    }

    #[test]
    fn stubs_are_made_through_in_root_symlinks_and_removed_with_the_parents_times() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("root")).unwrap();
        fs::create_dir_all(root.join("run")).unwrap();
        symlink("/run", root.join("varrun")).unwrap();
        let old = FileTime::from_unix_time(1_000_000, 0);
        filetime::set_file_times(root.join("root"), old, old).unwrap();
        let secret = SandboxMount {
            target: "/varrun/secrets/token".into(),
            source: MountSource::File("/nonexistent".into()),
            readonly: true,
        };
        let (stubs, resolved) = make(root, &[dir_mount("/root/.cache/pip"), secret]).unwrap();
        let rels: Vec<_> = resolved.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(rels, [PathBuf::from("root/.cache/pip"), PathBuf::from("run/secrets/token")]);
        assert!(root.join("root/.cache/pip").is_dir());
        assert!(root.join("run/secrets/token").is_file());
        stubs.remove(root);
        assert!(!root.join("root/.cache").exists());
        assert!(!root.join("run/secrets").exists());
        let md = fs::metadata(root.join("root")).unwrap();
        assert_eq!(FileTime::from_last_modification_time(&md), old);
    }

    #[test]
    fn what_the_command_left_stays_and_bad_targets_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("root")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        let (stubs, _) = make(root, &[dir_mount("/root/.cache/pip")]).unwrap();
        fs::write(root.join("root/.cache/other"), b"y").unwrap();
        stubs.remove(root);
        assert!(root.join("root/.cache/other").exists());
        assert!(!root.join("root/.cache/pip").exists());

        let e = make(root, &[dir_mount("/file/x")]).unwrap_err().to_string();
        assert!(e.contains("/file/x") && e.contains("`file` is not a directory"), "{e}");
        let e = make(root, &[dir_mount("/")]).unwrap_err().to_string();
        assert!(e.contains("root directory"), "{e}");
        // A failure takes back what earlier mounts made.
        let e = make(root, &[dir_mount("/new/dir"), dir_mount("/file")]).unwrap_err().to_string();
        assert!(e.contains("something else than a directory"), "{e}");
        assert!(!root.join("new").exists());
    }
}
