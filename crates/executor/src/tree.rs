//! A metadata-only index of the image's filesystem (paths, types, modes, owners), built by
//! reading the tar headers of the base layers once and kept current as the session adds
//! layers. COPY needs it to know which destination parents already exist (only missing ones go
//! into the layer, so `/tmp`'s mode is never clobbered), whether a destination is an existing
//! directory, and where symlinks in a destination path lead. `/etc/passwd` and `/etc/group`
//! are captured on the way for `--chown=name`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use ext_oci::{Digest, Image, OciError, layer::decompress, layer::decompress_verified};

use crate::error::{ExecError, Result};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NodeKind {
    Dir,
    File,
    Symlink(String),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    pub kind: NodeKind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
}

/// Files whose content the tree keeps (small and needed for name lookups).
const CAPTURED: &[&str] = &["etc/passwd", "etc/group"];
const MAX_CAPTURE: u64 = 4 << 20;
const MAX_SYMLINK_HOPS: usize = 40;

/// Bumped when [`LayerIndex`]'s meaning changes, so stale cache files are ignored.
const INDEX_VERSION: u32 = 2;

#[derive(Debug, Default, Clone)]
pub struct ImageTree {
    nodes: BTreeMap<String, Node>,
    captured: BTreeMap<String, Vec<u8>>,
}

/// What COPY asks of the image's filesystem: the node at a path, a captured file's content,
/// and symlink resolution on top of those. Two implementations: [`ImageTree`], read from the
/// base layers' tar headers (the image is not unpacked anywhere), and [`LiveTree`], the
/// filesystem ext-extend runs on when that is the image (the live-root executor).
pub trait TreeView {
    fn node(&self, path: &str) -> Option<Node>;

    /// Content of `/etc/passwd` or `/etc/group` (for `--chown=name`).
    fn captured(&self, path: &str) -> Option<std::borrow::Cow<'_, [u8]>>;

    /// Resolves symlinks in `path` inside the image root, as a process in the container would
    /// see it: absolute targets start again at the image root and `..` stops at the root. The
    /// last component is followed only if `follow_last`.
    fn resolve(&self, path: &str, follow_last: bool) -> String {
        let mut resolved = String::new();
        let mut pending: Vec<String> = components(path).rev().map(String::from).collect();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                resolved = split(&resolved).0.to_string();
                continue;
            }
            let candidate = join(&resolved, &c);
            let is_last = pending.is_empty();
            match self.node(&candidate) {
                Some(Node { kind: NodeKind::Symlink(target), .. })
                    if (!is_last || follow_last) && hops < MAX_SYMLINK_HOPS =>
                {
                    hops += 1;
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    for t in components(&target).rev() {
                        pending.push(t.to_string());
                    }
                }
                _ => resolved = candidate,
            }
        }
        resolved
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.node(path), Some(Node { kind: NodeKind::Dir, .. }))
    }
}

/// The live root as a [`TreeView`]: every question is one `lstat` (or read) of the real
/// filesystem, which COPY and RUN keep current themselves, so nothing is walked or indexed.
#[derive(Debug, Clone)]
pub struct LiveTree {
    root: PathBuf,
}

impl LiveTree {
    pub fn new(root: &Path) -> LiveTree {
        LiveTree { root: root.to_path_buf() }
    }
}

impl TreeView for LiveTree {
    fn node(&self, path: &str) -> Option<Node> {
        use std::os::unix::fs::MetadataExt;
        let full = self.root.join(path);
        let md = std::fs::symlink_metadata(&full).ok()?;
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            NodeKind::Dir
        } else if ft.is_symlink() {
            NodeKind::Symlink(std::fs::read_link(&full).ok()?.to_string_lossy().into_owned())
        } else if ft.is_file() {
            NodeKind::File
        } else {
            NodeKind::Other
        };
        Some(Node { kind, mode: md.mode() & 0o7777, uid: md.uid().into(), gid: md.gid().into() })
    }

    fn captured(&self, path: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        if !CAPTURED.contains(&path) {
            return None;
        }
        match self.node(path)?.kind {
            NodeKind::File => std::fs::read(self.root.join(path)).ok().map(std::borrow::Cow::Owned),
            _ => None,
        }
    }
}

/// What one layer does to the tree, in tar order: the unit that is cached per layer digest,
/// so the base image's headers are read once per machine, not once per build.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct LayerIndex {
    version: u32,
    /// The layer's uncompressed digest, verified while it was scanned: a cached index is
    /// used only for an image whose config lists the same diffID.
    diff_id: Option<String>,
    ops: Vec<IndexOp>,
    /// Opaque directories (applied after the layer's own entries).
    opaque: Vec<String>,
    /// Captured files (`None`: the layer replaced it with something uncapturable).
    captured: BTreeMap<String, Option<Vec<u8>>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum IndexOp {
    Entry(String, Node),
    Whiteout(String),
}

impl LayerIndex {
    /// Reads a layer's tar headers (contents skipped, except captured files) and then the rest
    /// of the stream, so a verifying reader below checks the blob's digest at its end.
    pub fn scan(tar: Box<dyn Read>) -> std::io::Result<LayerIndex> {
        let (tar, guard) = ext_oci::targuard::guard(tar);
        let mut archive = tar::Archive::new(tar);
        let mut index = LayerIndex { version: INDEX_VERSION, ..Default::default() };
        let mut entries = archive.entries()?;
        while let Some(entry) = guard.next(&mut entries) {
            let mut entry = entry?;
            index.add_entry(&mut entry)?;
            // Contents are skipped here, outside the guard's budget for the next headers.
            std::io::copy(&mut entry, &mut std::io::sink())?;
        }
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())?;
        Ok(index)
    }

    fn add_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> std::io::Result<()> {
        let raw = entry.path()?.to_string_lossy().into_owned();
        let Some(path) = normalize(&raw) else { return Ok(()) };
        let (dir, name) = split(&path);
        if name == ".wh..wh..opq" {
            self.opaque.push(dir.to_string());
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            self.ops.push(IndexOp::Whiteout(join(dir, hidden)));
            return Ok(());
        }
        let h = entry.header();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => NodeKind::Dir,
            tar::EntryType::Symlink => {
                NodeKind::Symlink(entry.link_name()?.map(|l| l.to_string_lossy().into_owned()).unwrap_or_default())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => NodeKind::File,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName => return Ok(()),
            _ => NodeKind::Other,
        };
        let node = Node { kind, mode: h.mode().unwrap_or(0o755), uid: h.uid().unwrap_or(0), gid: h.gid().unwrap_or(0) };
        if CAPTURED.contains(&path.as_str()) {
            let capturable = node.kind == NodeKind::File
                && entry.header().entry_type() != tar::EntryType::Link
                && entry.size() <= MAX_CAPTURE;
            let content = if capturable {
                let mut content = Vec::new();
                entry.read_to_end(&mut content)?;
                Some(content)
            } else {
                None
            };
            self.captured.insert(path.clone(), content);
        }
        self.ops.push(IndexOp::Entry(path, node));
        Ok(())
    }

    fn cache_path(cache: &Path, digest: &Digest) -> PathBuf {
        cache.join("layer-index").join(format!("{}.json", digest.hex()))
    }

    /// A cached index, if there is a valid one.
    fn load(cache: &Path, digest: &Digest) -> Option<LayerIndex> {
        let bytes = std::fs::read(Self::cache_path(cache, digest)).ok()?;
        serde_json::from_slice::<LayerIndex>(&bytes).ok().filter(|i| i.version == INDEX_VERSION)
    }

    /// Saves the index (temp file + rename; a failure only costs a rescan next time).
    fn store(&self, cache: &Path, digest: &Digest) {
        let path = Self::cache_path(cache, digest);
        let Some(dir) = path.parent() else { return };
        let saved = std::fs::create_dir_all(dir).and_then(|_| {
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            serde_json::to_writer(std::io::BufWriter::new(tmp.as_file_mut()), self).map_err(std::io::Error::other)?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        });
        if let Err(e) = saved {
            tracing::debug!("cannot cache the index of layer {digest}: {e}");
        }
    }
}

impl ImageTree {
    /// The tree of `image`'s layers. Each layer's index comes from `cache` when an earlier
    /// build saved it (keyed by the layer digest, so it cannot be stale), else from reading the
    /// layer's tar headers, verified against its digest as they are read.
    pub fn from_image(image: &Image, cache: Option<&Path>) -> Result<ImageTree> {
        let mut tree = ImageTree::default();
        for (i, desc) in image.layers().iter().enumerate() {
            let digest = Digest::try_from(desc.digest())?;
            let diff_id = image.diff_id(i)?;
            if let Some(index) = cache.and_then(|c| LayerIndex::load(c, &digest)) {
                // The cached index was verified against the layer's real diffID.
                if index.diff_id.as_deref() != Some(diff_id.as_str()) {
                    return Err(ExecError::Image(OciError::DiffIdMismatch {
                        image: image.name.clone(),
                        layer: digest,
                        failure: ext_oci::digest::BlobCheckFailure::DiffId {
                            expected: diff_id,
                            actual: index.diff_id.as_deref().unwrap_or_default().parse()?,
                        },
                    }));
                }
                tree.apply_index(&index);
                continue;
            }
            let reader = image.store.open(&digest, Some(desc.size()))?;
            // A damaged blob usually breaks gzip or tar before its digest can be checked at
            // the end; report the digest mismatch, the root cause, when there is one.
            // A damaged blob is the root cause of any later failure, a wrong diffID next.
            let layer_err = |e: std::io::Error| match image.store.verify(&digest, Some(desc.size())) {
                Err(damaged) => ExecError::Image(damaged),
                Ok(()) => ExecError::Image(
                    image.diff_id_failure(&digest, &e).unwrap_or_else(|| image.store.read_error(&digest, e)),
                ),
            };
            let tar = decompress_verified(reader, diff_id.clone()).map_err(layer_err)?;
            let mut index = LayerIndex::scan(tar).map_err(layer_err)?;
            index.diff_id = Some(diff_id.to_string());
            if let Some(c) = cache {
                index.store(c, &digest);
            }
            tree.apply_index(&index);
        }
        Ok(tree)
    }

    /// Applies one of the session's own (just written, trusted) layer blobs.
    pub fn apply_blob(&mut self, path: &Path, digest: &Digest) -> Result<()> {
        let err = |e: std::io::Error| ExecError::Io { path: path.to_path_buf(), source: e };
        let file = std::fs::File::open(path).map_err(err)?;
        let tar = decompress(std::io::BufReader::new(file)).map_err(err)?;
        let index =
            LayerIndex::scan(tar).map_err(|e| ExecError::Io { path: format!("layer {digest}").into(), source: e })?;
        self.apply_index(&index);
        Ok(())
    }

    #[cfg(test)]
    fn apply_tar(&mut self, tar: Box<dyn Read>) -> std::io::Result<()> {
        let index = LayerIndex::scan(tar)?;
        self.apply_index(&index);
        Ok(())
    }

    fn apply_index(&mut self, index: &LayerIndex) {
        let mut this_layer: BTreeSet<&str> = BTreeSet::new();
        for op in &index.ops {
            match op {
                IndexOp::Whiteout(p) => self.remove(p),
                IndexOp::Entry(p, node) => {
                    this_layer.insert(p);
                    self.insert(p.clone(), node.clone());
                }
            }
        }
        for (path, content) in &index.captured {
            match content {
                Some(c) => self.captured.insert(path.clone(), c.clone()),
                None => self.captured.remove(path),
            };
        }
        // Opaque markers hide what lower layers had below the directory, not this layer's own
        // entries, whatever their order in the tar.
        for dir in &index.opaque {
            let below: Vec<String> =
                self.descendants(dir).filter(|p| !this_layer.contains(p.as_str())).cloned().collect();
            for p in below {
                self.nodes.remove(&p);
                self.captured.remove(&p);
            }
        }
    }

    /// Records an entry this session wrote (a COPY layer, or a RUN change).
    pub fn insert(&mut self, path: String, node: Node) {
        if node.kind != NodeKind::Dir {
            // A file replacing a directory hides everything below it.
            let below: Vec<String> = self.descendants(&path).cloned().collect();
            for p in below {
                self.nodes.remove(&p);
            }
        }
        self.nodes.insert(path, node);
    }

    /// Sets the content of a captured file (when a COPY writes `/etc/passwd`, say).
    pub fn capture(&mut self, path: &str, content: Vec<u8>) {
        if CAPTURED.contains(&path) {
            self.captured.insert(path.to_string(), content);
        }
    }

    pub fn is_captured(path: &str) -> bool {
        CAPTURED.contains(&path)
    }

    pub fn remove(&mut self, path: &str) {
        let below: Vec<String> = self.descendants(path).cloned().collect();
        for p in below {
            self.nodes.remove(&p);
            self.captured.remove(&p);
        }
        self.nodes.remove(path);
        self.captured.remove(path);
    }

    fn descendants<'a>(&'a self, dir: &str) -> impl Iterator<Item = &'a String> + 'a {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.nodes.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix)).map(|(k, _)| k)
    }

    /// The nodes strictly below directory `dir` (`""`: all of them), in path order.
    pub fn below<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        self.nodes.range(prefix.clone()..).take_while(move |(k, _)| k.starts_with(&prefix))
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

impl TreeView for ImageTree {
    fn node(&self, path: &str) -> Option<Node> {
        self.nodes.get(path).cloned()
    }

    fn captured(&self, path: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.captured.get(path).map(|c| std::borrow::Cow::Borrowed(c.as_slice()))
    }
}

fn components(p: &str) -> impl DoubleEndedIterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty() && *c != ".")
}

/// Tar entry name -> tree key (`./usr/bin/` -> `usr/bin`); `None` for the root itself.
fn normalize(raw: &str) -> Option<String> {
    let p: Vec<&str> = components(raw).collect();
    if p.is_empty() || p.contains(&"..") {
        return None;
    }
    Some(p.join("/"))
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    }
}

pub(crate) fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_string() } else { format!("{a}/{b}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory { 0o1777 } else { 0o644 });
            h.set_size(if *kind == tar::EntryType::Regular { data.len() as u64 } else { 0 });
            if *kind == tar::EntryType::Symlink {
                b.append_link(&mut h, path, data).unwrap();
            } else {
                let body = if *kind == tar::EntryType::Regular { data.as_bytes() } else { &[][..] };
                b.append_data(&mut h, path, body).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layer_indexes_are_cached_by_digest() {
        use tar::EntryType::{Directory as D, Regular as F};
        let bytes = layer(&[("etc/", D, ""), ("etc/passwd", F, "root:x:0:0::/:/bin/sh\n")]);
        let digest = Digest::of(&bytes);
        let index = LayerIndex::scan(Box::new(std::io::Cursor::new(bytes))).unwrap();
        let cache = tempfile::tempdir().unwrap();
        assert!(LayerIndex::load(cache.path(), &digest).is_none());
        index.store(cache.path(), &digest);
        let loaded = LayerIndex::load(cache.path(), &digest).expect("cached");
        let (mut a, mut b) = (ImageTree::default(), ImageTree::default());
        a.apply_index(&index);
        b.apply_index(&loaded);
        assert_eq!(a.nodes, b.nodes);
        assert_eq!(a.captured, b.captured);
        // A damaged or outdated cache file is ignored, not trusted.
        std::fs::write(LayerIndex::cache_path(cache.path(), &digest), b"{\"version\": 0}").unwrap();
        assert!(LayerIndex::load(cache.path(), &digest).is_none());
    }

    #[test]
    fn layers_without_end_of_archive_blocks_are_read() {
        use tar::EntryType::Regular as F;
        let mut bytes = layer(&[("etc/passwd", F, "root:x:0:0::/:/bin/sh\n")]);
        // umoci writes layers like this: no two zero blocks at the end.
        while bytes.ends_with(&[0u8; 512]) {
            bytes.truncate(bytes.len() - 512);
        }
        let mut t = ImageTree::default();
        t.apply_tar(Box::new(std::io::Cursor::new(bytes))).unwrap();
        assert!(t.captured("etc/passwd").is_some());
    }

    #[test]
    fn layers_whiteouts_and_resolution() {
        use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
        let mut t = ImageTree::default();
        t.apply_tar(Box::new(std::io::Cursor::new(layer(&[
            ("./tmp/", D, ""),
            ("usr/lib/", D, ""),
            ("lib", L, "usr/lib"),
            ("abs", L, "/usr"),
            ("etc/passwd", F, "root:x:0:0::/root:/bin/sh\n"),
            ("old/a", F, "a"),
            ("opq/lower", F, "x"),
        ]))))
        .unwrap();
        t.apply_tar(Box::new(std::io::Cursor::new(layer(&[
            ("old/.wh.a", F, ""),
            ("opq/upper", F, "y"),
            ("opq/.wh..wh..opq", F, ""),
        ]))))
        .unwrap();
        assert_eq!(t.get("tmp").unwrap().mode, 0o1777);
        assert!(t.get("old/a").is_none());
        assert!(t.get("opq/lower").is_none(), "opaque dir hides the lower layer");
        assert!(t.get("opq/upper").is_some(), "but not its own layer's entries");
        assert_eq!(&*t.captured("etc/passwd").unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(t.resolve("lib/x.so", false), "usr/lib/x.so");
        assert_eq!(t.resolve("abs/lib", false), "usr/lib");
        assert_eq!(t.resolve("lib", false), "lib");
        assert_eq!(t.resolve("lib", true), "usr/lib");
        assert_eq!(t.resolve("../../etc", true), "etc", "`..` stops at the root");
        assert!(t.is_dir("usr/lib") && !t.is_dir("lib"));
    }
}
