//! The invariant ARCHITECTURE.md states, tested: the overlay snapshot, the stat snapshot and
//! the live root give byte-identical images (the same manifest digest) for every RUN.
//!
//! A seeded generator builds a base of several layers (files with modes, owners, user xattrs and
//! content; directories; symlinks; hard links; a whiteout and an opaque directory in a later
//! layer) and two RUNs, each a random script of file system operations (create, write, delete,
//! rename, chmod, chown, utimes, truncate to the same size, an edit with its mtime put back,
//! setxattr, removexattr, hard link, symlink, a directory replaced by a file and back, a
//! directory deleted and made again, i.e. opaque) that the `fs_ops` example applies with plain
//! system calls. Every case is built with `--snapshot overlay`, `--snapshot stat`, and with
//! `--live-root` inside an unprivileged container of the base (as platforms run the drop-in
//! extender); the three digests must be equal.
//!
//! `SNAPSHOT_SEED=N` and `SNAPSHOT_CASES=N` run other or more cases (the test command runs a
//! fixed seed and a bounded count). Two things the generator does not do, because the
//! executors cannot agree on them (README "RUN" says why): operations on an inode that has
//! several names when the RUN starts (overlayfs copies one name up and breaks the link, one
//! file system changes every name), and metadata changes that end where they began (`chmod`
//! to the mode a file already has: the stat index sees its ctime, overlayfs sees a copy-up
//! identical to the lower file). And content changes to setuid/setgid files: in a user
//! namespace, writing to one clears the bits even as image root (the kernel asks for
//! `CAP_FSETID` in the host's namespace), as in rootless containers.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::container::Container;
use common::*;

/// SplitMix64: small, seedable, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() { None } else { Some(&items[self.below(items.len())]) }
    }

    /// Lowercase letters, `min..min + spread` of them.
    fn text_of(&mut self, min: usize, spread: usize) -> String {
        let len = min + self.below(spread);
        self.text(len)
    }

    fn text(&mut self, len: usize) -> String {
        (0..len).map(|_| (b'a' + self.below(26) as u8) as char).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
enum Node {
    Dir { id: u64, meta: Meta },
    File { ino: u64 },
    Symlink,
}

#[derive(Debug, Clone)]
struct Inode {
    content: String,
    meta: Meta,
}

/// The tree below `/t` as the generator believes it is.
#[derive(Debug, Clone, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
    inodes: HashMap<u64, Inode>,
    next_id: u64,
}

impl Model {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn dirs(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| matches!(n, Node::Dir { .. })).map(|(p, _)| p.clone()).collect()
    }

    fn names_of(&self, ino: u64) -> usize {
        self.nodes.values().filter(|n| matches!(n, Node::File { ino: i } if *i == ino)).count()
    }

    fn below<'a>(&'a self, dir: &'a str) -> impl Iterator<Item = (&'a String, &'a Node)> + 'a {
        self.nodes.iter().filter(move |(p, _)| p.starts_with(dir) && p.as_bytes().get(dir.len()) == Some(&b'/'))
    }

    fn remove(&mut self, path: &str) {
        let gone: Vec<String> = self.below(path).map(|(p, _)| p.clone()).chain([path.to_string()]).collect();
        for p in gone {
            if let Some(Node::File { ino }) = self.nodes.remove(&p)
                && self.names_of(ino) == 0
            {
                self.inodes.remove(&ino);
            }
        }
    }

    fn fresh_name(&self, rng: &mut Rng, dir: &str) -> String {
        loop {
            let p = format!("{dir}/n{}", rng.below(1000));
            if !self.nodes.contains_key(&p) {
                return p;
            }
        }
    }
}

fn meta(rng: &mut Rng, dir: bool) -> Meta {
    let modes: &[u32] = if dir { &[0o755, 0o700, 0o775, 0o1777] } else { &[0o644, 0o600, 0o755, 0o664, 0o4755] };
    let mut xattrs = BTreeMap::new();
    if rng.chance(30) {
        xattrs.insert("user.a".to_string(), rng.text(4));
    }
    if rng.chance(15) {
        xattrs.insert("user.b".to_string(), rng.text(2));
    }
    let owners = [(0, 0), (1000, 1000), (33, 33)];
    let (uid, gid) = *rng.pick(&owners).unwrap();
    Meta { mode: *rng.pick(modes).unwrap(), uid, gid, mtime: 1_600_000_000 + rng.below(1000) as u64, xattrs }
}

/// A layer of the base, as tar entries (the model is updated as the layer is applied).
fn base_layer(rng: &mut Rng, model: &mut Model, first: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, path: &str, kind: tar::EntryType, m: &Meta, data: &[u8], link: &str| {
        let pax: Vec<(String, Vec<u8>)> =
            m.xattrs.iter().map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_bytes().to_vec())).collect();
        if !pax.is_empty() {
            b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_entry_type(kind);
        h.set_mode(m.mode);
        h.set_uid(m.uid.into());
        h.set_gid(m.gid.into());
        h.set_mtime(m.mtime);
        h.set_size(data.len() as u64);
        if !link.is_empty() {
            h.set_link_name(link).unwrap();
        }
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    let dir_meta = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 1_600_000_000, xattrs: BTreeMap::new() };
    if first {
        add(&mut b, "t", tar::EntryType::Directory, &dir_meta, b"", "");
        let id = model.id();
        model.nodes.insert("t".into(), Node::Dir { id, meta: dir_meta.clone() });
        for i in 0..3 {
            let m = meta(rng, true);
            let p = format!("t/d{i}");
            add(&mut b, &p, tar::EntryType::Directory, &m, b"", "");
            let id = model.id();
            model.nodes.insert(p, Node::Dir { id, meta: m });
        }
    } else {
        // A whiteout, and a directory made opaque with new content.
        let files: Vec<String> =
            model.nodes.iter().filter(|(_, n)| matches!(n, Node::File { .. })).map(|(p, _)| p.clone()).collect();
        if let Some(victim) = rng.pick(&files).cloned() {
            let (dir, name) = victim.rsplit_once('/').unwrap();
            add(&mut b, &format!("{dir}/.wh.{name}"), tar::EntryType::Regular, &dir_meta, b"", "");
            model.remove(&victim);
        }
        let dirs: Vec<String> = model.dirs().into_iter().filter(|d| d != "t").collect();
        if let Some(dir) = rng.pick(&dirs).cloned() {
            let gone: Vec<String> = model.below(&dir).map(|(p, _)| p.clone()).collect();
            for p in gone {
                model.remove(&p);
            }
            let m = meta(rng, true);
            add(&mut b, &dir, tar::EntryType::Directory, &m, b"", "");
            add(&mut b, &format!("{dir}/.wh..wh..opq"), tar::EntryType::Regular, &dir_meta, b"", "");
            let id = model.id();
            model.nodes.insert(dir, Node::Dir { id, meta: m });
        }
    }
    for _ in 0..6 + rng.below(6) {
        let dirs = model.dirs();
        let dir = rng.pick(&dirs).unwrap().clone();
        let path = model.fresh_name(rng, &dir);
        match rng.below(10) {
            0..=5 => {
                let m = meta(rng, false);
                let content = rng.text_of(1, 40);
                add(&mut b, &path, tar::EntryType::Regular, &m, content.as_bytes(), "");
                let ino = model.id();
                model.inodes.insert(ino, Inode { content, meta: m });
                model.nodes.insert(path, Node::File { ino });
            }
            6 => {
                let m = meta(rng, true);
                add(&mut b, &path, tar::EntryType::Directory, &m, b"", "");
                let id = model.id();
                model.nodes.insert(path, Node::Dir { id, meta: m });
            }
            7 | 8 => {
                let target = format!("../x{}", rng.below(10));
                let m = Meta { mode: 0o777, uid: 0, gid: 0, mtime: 1_600_000_000, xattrs: BTreeMap::new() };
                add(&mut b, &path, tar::EntryType::Symlink, &m, b"", &target);
                model.nodes.insert(path, Node::Symlink);
            }
            _ => {
                // A hard link to a file this layer wrote.
                let written: Vec<(String, u64)> = model
                    .nodes
                    .iter()
                    .filter_map(|(p, n)| match n {
                        Node::File { ino } => Some((p.clone(), *ino)),
                        _ => None,
                    })
                    .collect();
                if let Some((target, ino)) = rng.pick(&written).cloned() {
                    // Only to entries of this same layer (a hard link names an entry before it).
                    let in_layer = b.get_ref().windows(target.len()).any(|w| w == target.as_bytes());
                    if in_layer {
                        let m = model.inodes[&ino].meta.clone();
                        add(&mut b, &path, tar::EntryType::Link, &m, b"", &target);
                        model.nodes.insert(path, Node::File { ino });
                    }
                }
            }
        }
    }
    b.into_inner().unwrap()
}

/// What one RUN may still do to each thing (see the module comment for why).
struct RunRules {
    /// Inodes with several names when the RUN started: left alone.
    frozen: HashSet<u64>,
    /// (identity, kind of change) already made: each kind once per thing per RUN.
    done: HashSet<(u64, &'static str)>,
    /// Metadata and content at the start, per identity.
    start_meta: HashMap<u64, Meta>,
    start_content: HashMap<u64, String>,
    /// Inodes that existed at the start and got a new name: none of their names may go.
    linked: HashSet<u64>,
    started: HashSet<u64>,
}

fn identity(model: &Model, path: &str) -> Option<u64> {
    match model.nodes.get(path)? {
        Node::Dir { id, .. } => Some(*id),
        Node::File { ino } => Some(*ino),
        Node::Symlink => None,
    }
}

fn meta_of<'a>(model: &'a mut Model, path: &str) -> Option<&'a mut Meta> {
    match model.nodes.get(path)?.clone() {
        Node::Dir { .. } => match model.nodes.get_mut(path) {
            Some(Node::Dir { meta, .. }) => Some(meta),
            _ => None,
        },
        Node::File { ino } => model.inodes.get_mut(&ino).map(|i| &mut i.meta),
        Node::Symlink => None,
    }
}

/// A random script of operations for one RUN, applied to the model.
fn run_script(rng: &mut Rng, model: &mut Model) -> Vec<String> {
    let mut rules = RunRules {
        frozen: model.inodes.keys().copied().filter(|&i| model.names_of(i) > 1).collect(),
        done: HashSet::new(),
        start_meta: HashMap::new(),
        start_content: HashMap::new(),
        linked: HashSet::new(),
        started: model.inodes.keys().copied().collect(),
    };
    for (p, n) in model.nodes.clone() {
        if let (Some(id), Node::Dir { meta, .. }) = (identity(model, &p), &n) {
            rules.start_meta.insert(id, meta.clone());
        }
    }
    for (ino, i) in &model.inodes {
        rules.start_meta.insert(*ino, i.meta.clone());
        rules.start_content.insert(*ino, i.content.clone());
    }
    let mut ops = Vec::new();
    let count = 3 + rng.below(10);
    let mut attempts = 0;
    while ops.len() < count && attempts < 500 {
        attempts += 1;
        if let Some(op) = one_op(rng, model, &mut rules) {
            ops.push(op);
        }
    }
    ops
}

/// May `path` (and all below it) be unlinked or replaced?
fn removable(model: &Model, rules: &RunRules, path: &str) -> bool {
    let blocked =
        |n: &Node| matches!(n, Node::File { ino } if rules.frozen.contains(ino) || rules.linked.contains(ino));
    path != "t" && model.nodes.get(path).is_some_and(|n| !blocked(n)) && !model.below(path).any(|(_, n)| blocked(n))
}

fn one_op(rng: &mut Rng, model: &mut Model, rules: &mut RunRules) -> Option<String> {
    let paths: Vec<String> = model.nodes.keys().filter(|p| *p != "t").cloned().collect();
    let dirs = model.dirs();
    let files: Vec<(String, u64)> = model
        .nodes
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { ino } if !rules.frozen.contains(ino) => Some((p.clone(), *ino)),
            _ => None,
        })
        .collect();
    // Things whose metadata may change: unfrozen files and directories (not symlinks).
    let metas: Vec<(String, u64)> = model
        .nodes
        .iter()
        .filter_map(|(p, n)| match n {
            Node::File { ino } if !rules.frozen.contains(ino) => Some((p.clone(), *ino)),
            Node::Dir { id, .. } => Some((p.clone(), *id)),
            _ => None,
        })
        .collect();
    // Content changes only to files without setuid/setgid bits: writing to one clears them in
    // a user namespace (the kernel asks for CAP_FSETID in the host's), not elsewhere.
    let writable: Vec<(String, u64)> =
        files.iter().filter(|(_, ino)| model.inodes[ino].meta.mode & 0o6000 == 0).cloned().collect();
    let abs = |p: &str| format!("/{p}");
    let once = |rules: &mut RunRules, id: u64, kind: &'static str| rules.done.insert((id, kind));
    match rng.below(16) {
        0 => {
            let dir = rng.pick(&dirs)?.clone();
            let p = model.fresh_name(rng, &dir);
            let content = rng.text_of(1, 30);
            let ino = model.id();
            let m = Meta { mode: 0o644, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
            model.inodes.insert(ino, Inode { content: content.clone(), meta: m });
            model.nodes.insert(p.clone(), Node::File { ino });
            Some(format!("create\t{}\t{content}", abs(&p)))
        }
        1 => {
            let (p, ino) = rng.pick(&writable)?.clone();
            let content = rng.text_of(1, 30);
            model.inodes.get_mut(&ino)?.content = content.clone();
            Some(format!("write\t{}\t{content}", abs(&p)))
        }
        2 => {
            // Same size, other bytes, the mtime put back.
            let (p, ino) = rng.pick(&writable)?.clone();
            let old = model.inodes[&ino].content.clone();
            let start = rules.start_content.get(&ino).cloned();
            let content: String =
                old.chars().rev().map(|c| if c == 'z' { 'a' } else { (c as u8 + 1) as char }).collect();
            if Some(&content) == start.as_ref() || !once(rules, ino, "edit") {
                return None;
            }
            model.inodes.get_mut(&ino)?.content = content.clone();
            Some(format!("edit-keep-mtime\t{}\t{content}", abs(&p)))
        }
        3 => {
            let (p, _) = rng.pick(&writable)?.clone();
            Some(format!("truncate\t{}", abs(&p)))
        }
        4 => {
            let dir = rng.pick(&dirs)?.clone();
            let p = model.fresh_name(rng, &dir);
            let id = model.id();
            let m = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
            model.nodes.insert(p.clone(), Node::Dir { id, meta: m });
            Some(format!("mkdir\t{}", abs(&p)))
        }
        5 => {
            let p = rng.pick(&paths)?.clone();
            if !removable(model, rules, &p) {
                return None;
            }
            model.remove(&p);
            Some(format!("rm\t{}", abs(&p)))
        }
        6 => {
            // Rename a file or symlink (overlayfs without redirect_dir cannot rename a lower
            // directory), to a new name or over another file.
            let p = rng.pick(&paths)?.clone();
            if matches!(model.nodes.get(&p), Some(Node::Dir { .. })) || !removable(model, rules, &p) {
                return None;
            }
            let to = if rng.chance(30) {
                let (t, _) = rng.pick(&files)?.clone();
                if t == p || !removable(model, rules, &t) {
                    return None;
                }
                model.remove(&t);
                t
            } else {
                let dir = rng.pick(&dirs)?.clone();
                model.fresh_name(rng, &dir)
            };
            let node = model.nodes.remove(&p)?;
            model.nodes.insert(to.clone(), node);
            Some(format!("rename\t{}\t{}", abs(&p), abs(&to)))
        }
        7 => {
            let (p, id) = rng.pick(&metas)?.clone();
            let is_dir = matches!(model.nodes.get(&p), Some(Node::Dir { .. }));
            let modes: &[u32] = if is_dir { &[0o750, 0o711, 0o1755] } else { &[0o640, 0o700, 0o2755, 0o444] };
            let mode = *rng.pick(modes)?;
            let start = rules.start_meta.get(&id).map(|m| m.mode);
            if start == Some(mode) || meta_of(model, &p)?.mode == mode || !once(rules, id, "chmod") {
                return None;
            }
            meta_of(model, &p)?.mode = mode;
            Some(format!("chmod\t{}\t{mode:o}", abs(&p)))
        }
        8 => {
            let (p, id) = rng.pick(&metas)?.clone();
            let (uid, gid) = *rng.pick(&[(1234u32, 1234u32), (5, 7), (1000, 0)])?;
            let start = rules.start_meta.get(&id).map(|m| (m.uid, m.gid));
            let now = meta_of(model, &p).map(|m| (m.uid, m.gid))?;
            if start == Some((uid, gid)) || now == (uid, gid) || !once(rules, id, "chown") {
                return None;
            }
            let m = meta_of(model, &p)?;
            (m.uid, m.gid) = (uid, gid);
            Some(format!("chown\t{}\t{uid}\t{gid}", abs(&p)))
        }
        9 => {
            let (p, id) = rng.pick(&metas)?.clone();
            if !once(rules, id, "utime") {
                return None;
            }
            Some(format!("utime\t{}\t{}", abs(&p), 1 + rng.below(100_000)))
        }
        10 => {
            let (p, id) = rng.pick(&metas)?.clone();
            let name = *rng.pick(&["user.a", "user.b", "user.c"])?;
            let value = rng.text(3);
            let start = rules.start_meta.get(&id).and_then(|m| m.xattrs.get(name).cloned());
            if start.as_ref() == Some(&value) || !once(rules, id, name) {
                return None;
            }
            meta_of(model, &p)?.xattrs.insert(name.to_string(), value.clone());
            Some(format!("setxattr\t{}\t{name}\t{value}", abs(&p)))
        }
        11 => {
            let (p, id) = rng.pick(&metas)?.clone();
            let present: Vec<String> = meta_of(model, &p)?.xattrs.keys().cloned().collect();
            let name = rng.pick(&present)?.clone();
            // Only what the RUN found there and did not touch: anything else would end where
            // it began.
            let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
            let was_there = rules.start_meta.get(&id).is_some_and(|m| m.xattrs.contains_key(&name));
            if !was_there || !once(rules, id, leaked) {
                return None;
            }
            meta_of(model, &p)?.xattrs.remove(&name);
            Some(format!("rmxattr\t{}\t{name}", abs(&p)))
        }
        12 => {
            let (target, ino) = rng.pick(&files)?.clone();
            let dir = rng.pick(&dirs)?.clone();
            let p = model.fresh_name(rng, &dir);
            if rules.started.contains(&ino) {
                rules.linked.insert(ino);
            }
            model.nodes.insert(p.clone(), Node::File { ino });
            Some(format!("link\t{}\t{}", abs(&target), abs(&p)))
        }
        13 => {
            let dir = rng.pick(&dirs)?.clone();
            let p = model.fresh_name(rng, &dir);
            let target = format!("../y{}", rng.below(10));
            model.nodes.insert(p.clone(), Node::Symlink);
            Some(format!("symlink\t{target}\t{}", abs(&p)))
        }
        14 => {
            // A directory replaced by a file, or a file by a directory.
            let p = rng.pick(&paths)?.clone();
            if !removable(model, rules, &p) {
                return None;
            }
            let was_dir = matches!(model.nodes.get(&p), Some(Node::Dir { .. }));
            model.remove(&p);
            if was_dir {
                let content = rng.text(5);
                let ino = model.id();
                let m = Meta { mode: 0o644, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
                model.inodes.insert(ino, Inode { content: content.clone(), meta: m });
                model.nodes.insert(p.clone(), Node::File { ino });
                Some(format!("rm\t{0}\ncreate\t{0}\t{content}", abs(&p)))
            } else {
                let id = model.id();
                let m = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
                model.nodes.insert(p.clone(), Node::Dir { id, meta: m });
                Some(format!("rm\t{0}\nmkdir\t{0}", abs(&p)))
            }
        }
        _ => {
            // A directory deleted and made again with new content: opaque.
            let p = rng.pick(&dirs)?.clone();
            if !removable(model, rules, &p) {
                return None;
            }
            model.remove(&p);
            let id = model.id();
            let m = Meta { mode: 0o755, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
            model.nodes.insert(p.clone(), Node::Dir { id, meta: m });
            let child = format!("{p}/fresh");
            let ino = model.id();
            let m = Meta { mode: 0o644, uid: 0, gid: 0, mtime: 0, xattrs: BTreeMap::new() };
            model.inodes.insert(ino, Inode { content: "new".into(), meta: m });
            model.nodes.insert(child.clone(), Node::File { ino });
            Some(format!("rm\t{0}\nmkdir\t{0}\ncreate\t{1}\tnew", abs(&p), abs(&child)))
        }
    }
}

/// One generated case: the base layout and the two scripts.
struct Case {
    dir: tempfile::TempDir,
    scripts: Vec<Vec<String>>,
}

impl Case {
    fn layout(&self) -> PathBuf {
        self.dir.path().join("base")
    }
}

/// A layer with the `fs_ops` helper and the scripts.
fn tools_layer(scripts: &[Vec<String>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_path(path).unwrap();
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    };
    add("usr/local/bin/fs-ops", 0o755, &fs::read(example_binary("fs_ops")).unwrap());
    for (i, s) in scripts.iter().enumerate() {
        add(&format!("ops/{i}"), 0o644, (s.join("\n") + "\n").as_bytes());
    }
    b.into_inner().unwrap()
}

/// A base of three generated layers on the busybox test image, then the `extra` layers, plus
/// the tools layer with the scripts `scripts` makes from the base's model.
fn generate(
    rng: &mut Rng,
    extra: Vec<Vec<u8>>,
    scripts: impl FnOnce(&mut Rng, &mut Model) -> Vec<Vec<String>>,
) -> Case {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("base");
    make_run_image(&layout, "latest", false);
    let mut model = Model::default();
    let layers: Vec<Vec<u8>> = (0..3).map(|i| base_layer(rng, &mut model, i == 0)).chain(extra).collect();
    for l in &layers {
        append_raw_layer(&layout, "latest", l);
    }
    let scripts = scripts(rng, &mut model);
    append_raw_layer(&layout, "latest", &tools_layer(&scripts));
    Case { dir, scripts }
}

fn dockerfile(case: &Case) -> String {
    let mut df = String::from("FROM ${base_image}\nUSER root\n");
    for i in 0..case.scripts.len() {
        df.push_str(&format!("RUN /usr/local/bin/fs-ops /ops/{i}\n"));
    }
    df
}

/// Builds the case on the scratch rootfs with `--snapshot mode`; returns the manifest digest.
fn build_scratch(case: &Case, mode: &str) -> Result<String, String> {
    let df = case.dir.path().join("Dockerfile");
    fs::write(&df, dockerfile(case)).unwrap();
    let out = case.dir.path().join(format!("out-{mode}"));
    let o = Command::new(bin())
        .args(["build", "--from", &format!("oci:{}", s(&case.layout())), "-f", &s(&df)])
        .args(["--output", &format!("oci:{}", s(&out)), "--snapshot", mode])
        .env("EXT_EXTEND_CACHE_DIR", test_cache())
        .env("EXT_EXTEND_NO_CACHE", "1")
        .env_remove("SOURCE_DATE_EPOCH")
        .output()
        .unwrap();
    digest_of(o)
}

/// Builds the case as platforms run the drop-in extender: `--live-root` in an unprivileged
/// container of the base image.
fn build_live(case: &Case) -> Result<String, String> {
    let (_bundle, rootfs) = umoci_unpack(&case.layout(), "latest");
    fs::copy(bin(), rootfs.join("ext-extend")).unwrap();
    let work = case.dir.path().join("live");
    fs::create_dir_all(&work).unwrap();
    fs::write(work.join("Dockerfile"), dockerfile(case)).unwrap();
    let container = Container::new(&rootfs).volume(&case.layout(), "/base").volume(&work, "/work");
    let o = container
        .command("/ext-extend")
        .args(["build", "--live-root", "--from", "oci:/base:latest", "-f", "/work/Dockerfile"])
        .args(["--output", "oci:/work/out"])
        .env("EXT_EXTEND_NO_CACHE", "1")
        .output()
        .unwrap();
    digest_of(o)
}

fn digest_of(o: std::process::Output) -> Result<String, String> {
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

/// The RUN layers of an output layout, listed entry by entry (to show how two results differ).
fn run_layers(layout: &Path) -> String {
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap()).unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    let mut out = String::new();
    for l in &layers[layers.len().saturating_sub(2)..] {
        let o =
            Command::new("tar").arg("--xattrs").arg("-tvzf").arg(blob(l["digest"].as_str().unwrap())).output().unwrap();
        out.push_str(&String::from_utf8_lossy(&o.stdout));
        out.push_str("--\n");
    }
    out
}

fn check_case(case: &Case, label: &str) -> Option<String> {
    let overlay = build_scratch(case, "overlay");
    let stat = build_scratch(case, "stat");
    let live = build_live(case);
    let results = [("overlay", &overlay), ("stat", &stat), ("live root", &live)];
    let distinct: BTreeSet<&Result<String, String>> = results.iter().map(|(_, r)| *r).collect();
    if distinct.len() == 1 && overlay.is_ok() {
        return None;
    }
    let mut report = format!("{label}: the executors disagree\nscripts:\n");
    for (i, s) in case.scripts.iter().enumerate() {
        report.push_str(&format!("  RUN {i}:\n    {}\n", s.join("\n    ").replace('\t', " ")));
    }
    for (name, r) in results {
        match r {
            Ok(d) => report.push_str(&format!("{name}: {d}\n")),
            Err(e) => report.push_str(&format!("{name}: failed: {e}\n")),
        }
    }
    for (name, dir) in [("overlay", "out-overlay"), ("stat", "out-stat"), ("live root", "live/out")] {
        let p = case.dir.path().join(dir);
        if p.join("index.json").exists() {
            report.push_str(&format!("{name} RUN layers:\n{}", run_layers(&p)));
        }
    }
    Some(report)
}

/// The three defects that had the overlay differ drop real changes, as fixed scripts on a file
/// of a generated base (then a second RUN): an xattr-only change, a same-size edit with its
/// mtime put back, a new hard link to a base file.
fn regression(kind: usize, model: &Model) -> Vec<Vec<String>> {
    let (path, ino) = model
        .nodes
        .iter()
        .find_map(|(p, n)| match n {
            Node::File { ino } if model.names_of(*ino) == 1 => Some((p.clone(), *ino)),
            _ => None,
        })
        .expect("the base has a file");
    let other: String =
        model.inodes[&ino].content.chars().map(|c| if c == 'z' { 'a' } else { (c as u8 + 1) as char }).collect();
    let op = match kind {
        0 => format!("setxattr\t/{path}\tuser.cap\tx"),
        1 => format!("edit-keep-mtime\t/{path}\t{other}"),
        _ => format!("link\t/{path}\t/t/hardlink"),
    };
    vec![vec![op], vec!["create\t/t/after\tx".to_string()]]
}

/// Debian's `var/run -> /run` (here `xvar/run -> /xrun`), then a layer with `xvar/run/x.pid`:
/// the file is `/xrun/x.pid`, as containerd and umoci unpack it. The stat mode used to refuse
/// the image and the overlay mode to leave `/xrun` without it.
fn layers_below_an_absolute_symlink() -> Vec<Vec<u8>> {
    let layer = |entries: &[(&str, tar::EntryType, &str)]| {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_path(path).unwrap();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Regular { 0o644 } else { 0o755 });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name(data).unwrap();
                h.set_size(0);
                h.set_cksum();
                b.append(&h, &[][..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
        b.into_inner().unwrap()
    };
    use tar::EntryType::{Directory as D, Regular as F, Symlink as L};
    vec![layer(&[("xrun", D, ""), ("xvar", D, ""), ("xvar/run", L, "/xrun")]), layer(&[("xvar/run/x.pid", F, "42\n")])]
}

#[test]
fn overlay_stat_and_live_root_give_identical_layers() {
    let seed: u64 = std::env::var("SNAPSHOT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261201);
    let cases: usize = std::env::var("SNAPSHOT_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut problems = Vec::new();
    let mut rng = Rng(seed);
    // SNAPSHOT_KEEP=1 keeps the directories of failed cases (their path is in the report).
    let mut check = |case: Case, label: String| {
        if let Some(report) = check_case(&case, &label) {
            let kept = std::env::var_os("SNAPSHOT_KEEP").map(|_| case.dir.keep());
            problems.push(match kept {
                Some(dir) => format!("{report}kept in {}\n", dir.display()),
                None => report,
            });
        }
    };
    for kind in 0..3 {
        check(generate(&mut rng, Vec::new(), |_, model| regression(kind, model)), format!("regression {kind}"));
    }
    check(
        generate(&mut rng, layers_below_an_absolute_symlink(), |_, _| {
            vec![vec!["rename\t/xrun/x.pid\t/t/moved".into()], vec!["create\t/xvar/run/y\tx".into()]]
        }),
        "regression 3".into(),
    );
    for i in 0..cases {
        let case = generate(&mut rng, Vec::new(), |rng, model| (0..2).map(|_| run_script(rng, model)).collect());
        check(case, format!("seed {seed}, case {i}"));
    }
    assert!(problems.is_empty(), "{} cases failed:\n\n{}", problems.len(), problems.join("\n\n"));
}
