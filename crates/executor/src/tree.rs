//! A metadata-only index of the image's filesystem (paths, types, modes, owners), built by
//! reading the tar headers of the base layers once and kept current as the session adds
//! layers. COPY needs it to know which destination parents already exist (only missing ones go
//! into the layer, so `/tmp`'s mode is never clobbered), whether a destination is an existing
//! directory, and where symlinks in a destination path lead. `/etc/passwd` and `/etc/group`
//! are captured on the way for `--chown=name`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use ext_oci::{Digest, Image, layer::decompress};

use crate::error::{ExecError, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
    Symlink(String),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, Default, Clone)]
pub struct ImageTree {
    nodes: BTreeMap<String, Node>,
    captured: BTreeMap<String, Vec<u8>>,
}

impl ImageTree {
    /// Reads the headers of every layer of `image` (contents are skipped, except the captured
    /// files); each layer blob is verified against its digest as it is read.
    pub fn from_image(image: &Image) -> Result<ImageTree> {
        let mut tree = ImageTree::default();
        for desc in image.layers() {
            let digest = Digest::try_from(desc.digest())?;
            let reader = image.store.open(&digest, Some(desc.size()))?;
            // A damaged blob usually breaks gzip or tar before its digest can be checked at
            // the end; report the digest mismatch, the root cause, when there is one.
            let layer_err = |e: std::io::Error| match image.store.verify(&digest, Some(desc.size())) {
                Err(damaged) => ExecError::Image(damaged),
                Ok(()) => ExecError::Image(image.store.read_error(&digest, e)),
            };
            let tar = decompress(reader).map_err(layer_err)?;
            tree.apply_tar(tar).map_err(layer_err)?;
        }
        Ok(tree)
    }

    /// Applies one of the session's own (just written, trusted) layer blobs.
    pub fn apply_blob(&mut self, path: &std::path::Path, digest: &Digest) -> Result<()> {
        let err = |e: std::io::Error| ExecError::Io { path: path.to_path_buf(), source: e };
        let file = std::fs::File::open(path).map_err(err)?;
        let tar = decompress(std::io::BufReader::new(file)).map_err(err)?;
        self.apply_tar(tar).map_err(|e| ExecError::Io { path: format!("layer {digest}").into(), source: e })
    }

    fn apply_tar(&mut self, tar: Box<dyn Read>) -> std::io::Result<()> {
        let mut archive = tar::Archive::new(tar);
        self.apply_entries(&mut archive)?;
        // Read past the end-of-archive blocks so the blob's digest is checked at its end.
        std::io::copy(&mut archive.into_inner(), &mut std::io::sink())?;
        Ok(())
    }

    fn apply_entries(&mut self, archive: &mut tar::Archive<Box<dyn Read>>) -> std::io::Result<()> {
        let mut this_layer: BTreeSet<String> = BTreeSet::new();
        let mut opaque: Vec<String> = Vec::new();
        let mut entries = archive.entries()?;
        for entry in entries.by_ref() {
            let mut entry = entry?;
            let raw = entry.path()?.to_string_lossy().into_owned();
            let Some(path) = normalize(&raw) else { continue };
            let (dir, name) = split(&path);
            if name == ".wh..wh..opq" {
                opaque.push(dir.to_string());
                continue;
            }
            if let Some(hidden) = name.strip_prefix(".wh.") {
                self.remove(&join(dir, hidden));
                continue;
            }
            let h = entry.header();
            let kind = match h.entry_type() {
                tar::EntryType::Directory => NodeKind::Dir,
                tar::EntryType::Symlink => {
                    NodeKind::Symlink(entry.link_name()?.map(|l| l.to_string_lossy().into_owned()).unwrap_or_default())
                }
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Link => NodeKind::File,
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName => continue,
                _ => NodeKind::Other,
            };
            let node =
                Node { kind, mode: h.mode().unwrap_or(0o755), uid: h.uid().unwrap_or(0), gid: h.gid().unwrap_or(0) };
            if CAPTURED.contains(&path.as_str()) {
                if node.kind == NodeKind::File
                    && entry.header().entry_type() != tar::EntryType::Link
                    && entry.size() <= MAX_CAPTURE
                {
                    let mut content = Vec::new();
                    entry.read_to_end(&mut content)?;
                    self.captured.insert(path.clone(), content);
                } else {
                    self.captured.remove(&path);
                }
            }
            this_layer.insert(path.clone());
            self.insert(path, node);
        }
        // Opaque markers hide what lower layers had below the directory, not this layer's own
        // entries, whatever their order in the tar.
        for dir in opaque {
            let below: Vec<String> = self.descendants(&dir).filter(|p| !this_layer.contains(*p)).cloned().collect();
            for p in below {
                self.nodes.remove(&p);
                self.captured.remove(&p);
            }
        }
        Ok(())
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

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    pub fn captured(&self, path: &str) -> Option<&[u8]> {
        self.captured.get(path).map(Vec::as_slice)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Resolves symlinks in `path` inside the image root, as a process in the container would
    /// see it: absolute targets start again at the image root and `..` stops at the root. The
    /// last component is followed only if `follow_last`.
    pub fn resolve(&self, path: &str, follow_last: bool) -> String {
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
            match self.nodes.get(&candidate) {
                Some(Node { kind: NodeKind::Symlink(target), .. })
                    if (!is_last || follow_last) && hops < MAX_SYMLINK_HOPS =>
                {
                    hops += 1;
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    for t in components(target).rev() {
                        pending.push(t.to_string());
                    }
                }
                _ => resolved = candidate,
            }
        }
        resolved
    }

    pub fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.nodes.get(path), Some(Node { kind: NodeKind::Dir, .. }))
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
        assert_eq!(t.captured("etc/passwd").unwrap(), b"root:x:0:0::/root:/bin/sh\n");
        assert_eq!(t.resolve("lib/x.so", false), "usr/lib/x.so");
        assert_eq!(t.resolve("abs/lib", false), "usr/lib");
        assert_eq!(t.resolve("lib", false), "lib");
        assert_eq!(t.resolve("lib", true), "usr/lib");
        assert_eq!(t.resolve("../../etc", true), "etc", "`..` stops at the root");
        assert!(t.is_dir("usr/lib") && !t.is_dir("lib"));
    }
}
