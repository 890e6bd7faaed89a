//! Snapshot differs: what a RUN changed, as an ordered list of [`Change`]s, and the writer that
//! turns them into a layer.
//!
//! Two ways to find the changes:
//! - **overlay**: the RUN's writes all landed in an overlayfs upper directory, so the upper
//!   directory *is* the change set (whiteouts are 0/0 character devices, replaced directories
//!   carry `trusted.overlay.opaque=y`); the cost is proportional to what changed. An entry that
//!   was only copied up is dropped if it is provably identical to the lower one: metadata,
//!   xattrs, hard-link group, and content (read only for such copy-ups, whose mtime may have
//!   been put back after an edit).
//! - **stat index**: without overlayfs, a stat index (dev, inode, size, mtime ns, ctime ns,
//!   mode, uid, gid, nlink, rdev) taken before the RUN is compared with a walk after it.
//!   `ctime` cannot be set from user space, so `touch -d` and xattr edits are caught too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ext_oci::{DeviceKind, EntryMeta, LayerWriter};

/// One entry of a RUN's layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Write the entry at this path from the snapshot source (new, changed, or a parent dir).
    Upsert(String),
    /// Whiteout: the path was deleted.
    Delete(String),
    /// The directory was replaced: lower layers' children are hidden (written after the dir).
    Opaque(String),
}

impl Change {
    pub fn path(&self) -> &str {
        match self {
            Change::Upsert(p) | Change::Delete(p) | Change::Opaque(p) => p,
        }
    }
}

/// The changes of one RUN and the directory their contents are read from.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub source: PathBuf,
    pub changes: Vec<Change>,
}

impl Snapshot {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Paths that never go into a layer: given as image paths without the leading `/`.
#[derive(Debug, Clone, Default)]
pub struct IgnoreSet {
    paths: BTreeSet<String>,
}

impl IgnoreSet {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(paths: I) -> IgnoreSet {
        IgnoreSet {
            paths: paths
                .into_iter()
                .map(|p| p.as_ref().trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        }
    }

    pub fn add(&mut self, path: &str) {
        let p = path.trim_matches('/');
        if !p.is_empty() {
            self.paths.insert(p.to_string());
        }
    }

    /// True for an ignored path and everything below it.
    pub fn contains(&self, path: &str) -> bool {
        self.paths
            .iter()
            .any(|i| path == i || (path.starts_with(i.as_str()) && path.as_bytes().get(i.len()) == Some(&b'/')))
    }
}

/// Lists an overlayfs upper directory as changes. `lower_lookup(path)` returns where the path
/// is in the merged lower layers (its file and metadata), to drop entries that were copied up
/// unchanged (opened for writing and left as they were, say, as package managers do with their
/// lock files).
pub fn diff_upper(
    upper: &Path,
    ignore: &IgnoreSet,
    lower_lookup: &dyn Fn(&str) -> Option<(PathBuf, fs::Metadata)>,
) -> io::Result<Snapshot> {
    // path -> (change, unchanged copy-up)
    let mut found: BTreeMap<String, (Change, bool)> = BTreeMap::new();
    // Upper inodes with several links: every name of one, so that one changed name brings the
    // others (`ln /etc/motd /etc/motd-hl` copies /etc/motd up unchanged, but its hard-link
    // group changed).
    let mut link_groups: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut walk = walkdir::WalkDir::new(upper).follow_links(false).into_iter();
    while let Some(item) = walk.next() {
        let item = item.map_err(io::Error::other)?;
        let rel = rel_path(upper, item.path())?;
        if rel.is_empty() {
            continue;
        }
        if ignore.contains(&rel) {
            if item.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        let md = item.metadata().map_err(io::Error::other)?;
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            found.insert(rel.clone(), (Change::Delete(rel), false));
            continue;
        }
        if ft.is_socket() {
            continue;
        }
        // overlayfs makes every directory it creates over a whiteout opaque; it hides something
        // only where the lower layers have a directory (the stat differ's rule too).
        if ft.is_dir() && is_opaque(item.path()) && lower_lookup(&rel).is_some_and(|(_, md)| md.is_dir()) {
            found.insert(rel.clone(), (Change::Opaque(rel), false));
            continue;
        }
        if ft.is_file() && md.nlink() > 1 {
            link_groups.entry((md.dev(), md.ino())).or_default().push(rel.clone());
        }
        let unchanged = match lower_lookup(&rel) {
            Some((lower_path, lower)) => provably_identical(item.path(), &md, &lower_path, &lower)?,
            None => false,
        };
        found.insert(rel.clone(), (Change::Upsert(rel), unchanged));
    }
    for names in link_groups.values() {
        if names.iter().any(|n| found.get(n).is_some_and(|(_, unchanged)| !unchanged)) {
            for n in names {
                if let Some(entry) = found.get_mut(n) {
                    entry.1 = false;
                }
            }
        }
    }
    // Keep changed entries, and the directories above them (as parents), dropping unchanged
    // copy-ups with nothing changed below.
    let needed: BTreeSet<String> = found
        .iter()
        .filter(|(_, (_, unchanged))| !unchanged)
        .flat_map(|(p, _)| ancestors(p).chain(std::iter::once(p.as_str())).map(String::from).collect::<Vec<_>>())
        .collect();
    let changes = found.into_iter().filter(|(p, _)| needed.contains(p)).map(|(_, (c, _))| c).collect();
    Ok(Snapshot { source: upper.to_path_buf(), changes })
}

fn is_opaque(dir: &Path) -> bool {
    matches!(xattr::get(dir, "trusted.overlay.opaque"), Ok(Some(v)) if v == b"y")
}

/// An upper entry equal to its lower counterpart in everything a layer records: type, mode,
/// owner, times, xattrs (file capabilities among them), a device's number, a symlink's target,
/// and a file's content (read only when everything else is equal: an mtime can be put back
/// after an edit, as `cp -p`, `touch -r` and `tar -x` do).
fn provably_identical(upper: &Path, a: &fs::Metadata, lower: &Path, b: &fs::Metadata) -> io::Result<bool> {
    let same_meta = a.file_type() == b.file_type()
        && a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && (a.is_dir() || a.size() == b.size())
        && a.rdev() == b.rdev();
    if !same_meta {
        return Ok(false);
    }
    let ft = a.file_type();
    if ft.is_symlink() {
        return Ok(fs::read_link(upper)? == fs::read_link(lower)?);
    }
    if layer_xattrs(upper) != layer_xattrs(lower) {
        return Ok(false);
    }
    if ft.is_file() {
        return same_content(upper, lower);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> io::Result<bool> {
    let open = |p: &Path| File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(p);
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What the stat differ records per path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatEntry {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub rdev: u64,
    /// Birth time in ns where the file system records one (else 0): with `ino`, what tells a
    /// directory deleted and made again from the same one (inode numbers are reused at once).
    pub btime_ns: i128,
}

impl StatEntry {
    fn of(md: &fs::Metadata) -> StatEntry {
        StatEntry {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            nlink: md.nlink(),
            rdev: md.rdev(),
            btime_ns: md
                .created()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i128),
        }
    }

    fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// A stat index of a whole tree (the stat differ's "before").
#[derive(Debug, Clone, Default)]
pub struct StatIndex {
    entries: HashMap<String, StatEntry>,
}

impl StatIndex {
    /// Walks `root` (without following symlinks), skipping ignored paths.
    pub fn build(root: &Path, ignore: &IgnoreSet) -> io::Result<StatIndex> {
        let mut entries = HashMap::new();
        let mut walk = walkdir::WalkDir::new(root).follow_links(false).into_iter();
        while let Some(item) = walk.next() {
            let item = item.map_err(io::Error::other)?;
            let rel = rel_path(root, item.path())?;
            if !rel.is_empty() && ignore.contains(&rel) {
                if item.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            }
            let md = item.metadata().map_err(io::Error::other)?;
            entries.insert(rel, StatEntry::of(&md));
        }
        Ok(StatIndex { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Reads the entries of `paths` (relative to `root`) again, e.g. after mount points for a
    /// RUN came and went: what is gone leaves the index.
    pub fn refresh<'a>(&mut self, root: &Path, paths: impl IntoIterator<Item = &'a Path>) {
        for p in paths {
            let Some(rel) = p.to_str() else { continue };
            match fs::symlink_metadata(root.join(p)) {
                Ok(md) => self.entries.insert(rel.to_string(), StatEntry::of(&md)),
                Err(_) => self.entries.remove(rel),
            };
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Compares this (before) index with `after`, both of `root`.
    pub fn diff(&self, after: &StatIndex, root: &Path) -> Snapshot {
        let mut changes: BTreeMap<String, Change> = BTreeMap::new();
        for (path, now) in &after.entries {
            if path.is_empty() {
                continue;
            }
            match self.entries.get(path) {
                Some(before) if before == now => {}
                Some(before)
                    if before.is_dir() && now.is_dir() && (before.ino, before.btime_ns) != (now.ino, now.btime_ns) =>
                {
                    // Removed and re-created: hide whatever the lower layers had in it.
                    changes.insert(path.clone(), Change::Opaque(path.clone()));
                }
                _ => {
                    changes.insert(path.clone(), Change::Upsert(path.clone()));
                }
            }
        }
        for path in self.entries.keys() {
            if path.is_empty() || after.entries.contains_key(path) {
                continue;
            }
            // Only the topmost deleted path needs a whiteout.
            // (A directory replaced by a file hides what was in it, as a deleted one does.)
            let parent_gone =
                ancestors(path).any(|a| !a.is_empty() && !after.entries.get(a).is_some_and(StatEntry::is_dir));
            let parent_replaced = ancestors(path).any(|a| matches!(changes.get(a), Some(Change::Opaque(_))));
            if !parent_gone && !parent_replaced {
                changes.insert(path.clone(), Change::Delete(path.clone()));
            }
        }
        // Parents of every change go in too, so the layer carries their metadata.
        let parents: Vec<String> =
            changes.keys().flat_map(|p| ancestors(p).map(String::from).collect::<Vec<_>>()).collect();
        for p in parents {
            if !p.is_empty() {
                changes.entry(p.clone()).or_insert(Change::Upsert(p));
            }
        }
        Snapshot { source: root.to_path_buf(), changes: changes.into_values().collect() }
    }
}

/// `a/b/c` -> `a/b`, `a` (nearest first).
fn ancestors(p: &str) -> impl Iterator<Item = &str> {
    p.match_indices('/').map(move |(i, _)| &p[..i]).collect::<Vec<_>>().into_iter().rev()
}

fn rel_path(root: &Path, path: &Path) -> io::Result<String> {
    let rel = path.strip_prefix(root).map_err(io::Error::other)?;
    rel.to_str().map(String::from).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{}: path is not UTF-8", crate::error::esc(path)))
    })
}

/// Writes a snapshot as a layer: entries in path order, contents streamed from the snapshot's
/// source directory, hard links kept, xattrs carried (except overlayfs' own and SELinux).
pub fn write_snapshot(snapshot: &Snapshot, writer: &mut LayerWriter) -> io::Result<u64> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut bytes = 0;
    for change in &snapshot.changes {
        let path = change.path();
        if let Change::Delete(p) = change {
            writer.append_whiteout(p)?;
            continue;
        }
        let disk = snapshot.source.join(path);
        let md = fs::symlink_metadata(&disk)?;
        let ft = md.file_type();
        let meta = EntryMeta {
            path: path.to_string(),
            mode: md.mode() & 0o7777,
            uid: md.uid().into(),
            gid: md.gid().into(),
            mtime: md.mtime().max(0) as u64,
            xattrs: if ft.is_symlink() { Vec::new() } else { layer_xattrs(&disk) },
        };
        if ft.is_dir() {
            writer.append_dir(&meta)?;
            if matches!(change, Change::Opaque(_)) {
                writer.append_opaque(path)?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&disk)?;
            writer.append_symlink(&meta, &target.to_string_lossy())?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    writer.append_hardlink(&meta, first)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), path.to_string());
            }
            let mut f = File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&disk)?;
            let size = f.metadata()?.size();
            writer.append_file(&meta, size, &mut f)?;
            bytes += size;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() { DeviceKind::Char } else { DeviceKind::Block };
            let rdev = md.rdev();
            writer.append_device(&meta, kind, libc::major(rdev), libc::minor(rdev))?;
        } else if ft.is_fifo() {
            writer.append_device(&meta, DeviceKind::Fifo, 0, 0)?;
        }
    }
    Ok(bytes)
}

/// The xattrs of `path` a layer records (not overlayfs' own, not SELinux labels), sorted.
pub(crate) fn layer_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| !n.starts_with("trusted.overlay.") && n != "security.selinux")
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignore_set_matches_paths_and_below() {
        let i = IgnoreSet::new(["/workspace", "layers/"]);
        assert!(i.contains("workspace"));
        assert!(i.contains("workspace/f"));
        assert!(!i.contains("workspaces"));
        assert!(i.contains("layers/x/y"));
        assert!(!i.contains("etc"));
    }

    #[test]
    fn ancestors_nearest_first() {
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), vec!["a/b", "a"]);
        assert!(ancestors("a").next().is_none());
    }
}
