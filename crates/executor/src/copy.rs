//! COPY and ADD: Docker's copy semantics, computed against the build context and the image's
//! metadata tree, written as exactly one layer straight from the context (the base image is
//! never unpacked for this).
//!
//! Rules implemented (Docker/BuildKit): relative destinations are relative to WORKDIR; a
//! destination ending in `/`, an existing directory, or several sources mean "copy into this
//! directory"; a directory source copies its contents; globs match within one path component;
//! new files are owned by 0:0 unless `--chown`; `--chmod` sets the mode of what is copied;
//! missing parent directories are created (0755, or the `--chmod` mode; owned like the files); existing ones are left
//! alone (they are not written into the layer, so their metadata cannot change); symlinks in
//! the destination path are followed inside the image root; hard links within one source
//! stay hard links (each link after its target in the layer), files linked across sources
//! become separate copies, as in BuildKit; ADD extracts local tar archives (plain, gzip, bzip2,
//! xz, zstd; `--chmod` not applied to their members) unless `--unpack=false`; a URL's download
//! (fetched by the session) is copied as a file, extracted only with `--unpack`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ext_dockerfile::{Chmod, CopyOp, CopySource, Location};
use ext_oci::{BUILD_TIME, EntryMeta, LayerWriter};

use crate::context::{BuildContext, ContextEntry, EntryKind};
use crate::copy_select::{self, Exclude, Include};
use crate::error::{ExecError, Result};
use crate::paths::clean_clamped;
use crate::tree::{ImageTree, Node, NodeKind, TreeView, join};
use crate::users::Ids;

#[derive(Debug, Clone)]
enum Content {
    Dir,
    /// `inode`: (source number, device, inode) of a multiply-linked file, so files that are
    /// one inode within one source become hard links (see [`CopyPlan::link_hardlinks`]).
    File {
        path: PathBuf,
        inode: Option<(usize, u64, u64)>,
    },
    Inline(Vec<u8>),
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Planned {
    meta: EntryMeta,
    content: Content,
}

/// The entries one COPY/ADD adds, keyed and ordered by image path (parents first).
#[derive(Debug, Default)]
pub struct CopyPlan {
    entries: BTreeMap<String, Planned>,
}

pub struct CopyInput<'a> {
    pub op: &'a CopyOp,
    pub at: &'a Location,
    /// Absolute WORKDIR in effect.
    pub workdir: &'a str,
    pub context: &'a BuildContext,
    pub tree: &'a dyn TreeView,
    /// `--chown`, resolved.
    pub owner: Option<Ids>,
    /// Where ADD may extract archives.
    pub scratch: &'a Path,
    /// The sources keep their owners unless `--chown` (`COPY --from=IMAGE`, as BuildKit
    /// does it since moby#38599); from a build context they become root's.
    pub keep_owners: bool,
    /// The files `ADD <url>` sources were downloaded to.
    pub downloads: &'a [Downloaded],
}

/// A file `ADD <url>` downloaded: 0600, owned by root, mtime from `Last-Modified` (else 0),
/// as BuildKit's HTTP source makes it.
#[derive(Debug)]
pub struct Downloaded {
    pub url: String,
    /// The file's name in `context` (BuildKit's: the URL path's last component).
    pub name: String,
    pub digest: ext_oci::Digest,
    pub mtime: i64,
    pub context: BuildContext,
}

/// Where a matched source is.
#[derive(Clone, Copy)]
enum Origin<'a> {
    /// In the input's context.
    Context,
    /// A file `ADD <url>` downloaded.
    Download(&'a BuildContext),
    /// An extracted archive (its index).
    Archive(usize),
}

/// One resolved source: an entry of some context (the build context, or an extracted archive).
struct Item<'a> {
    context: &'a BuildContext,
    /// The source's own path (a symlink's copy is named after the link, not its target).
    name: &'a str,
    entry: &'a ContextEntry,
    /// The entries keep their owners (unless `--chown`): an archive's members, another
    /// image's files.
    keep_owner: bool,
    /// An extracted archive: `--chmod` and `--exclude` do not reach its members.
    archive: bool,
    /// The `--parents` pattern of the source.
    include: Option<&'a Include>,
}

impl CopyPlan {
    pub fn new(input: &CopyInput<'_>) -> Result<CopyPlan> {
        let op = input.op;
        let name = if op.add { "ADD" } else { "COPY" };
        let step = |m: String| ExecError::step(input.at, m);

        let dest_abs =
            if op.dest.starts_with('/') { op.dest.clone() } else { format!("{}/{}", input.workdir, op.dest) };
        let dest_clean = clean_clamped(&dest_abs);
        let dir_syntax = op.dest.ends_with('/') || op.dest.ends_with("/.") || op.dest == "." || op.dest.ends_with("..");

        let exclude = Exclude::new(op).map_err(|e| step(format!("{name} --exclude {e}")))?;
        // Archives are extracted into contexts of their own, which must outlive the items.
        let mut archives: Vec<BuildContext> = Vec::new();
        let mut inline: Vec<(String, Vec<u8>)> = Vec::new();
        // `--parents` include patterns, by source.
        let mut includes: Vec<Option<Include>> = Vec::new();
        // (where it is, the source's own name, the entry it leads to, its include)
        let mut matched: Vec<(Origin<'_>, String, &ContextEntry, usize)> = Vec::new();
        for src in &op.sources {
            match src {
                CopySource::Url(url) => {
                    let Some(d) = input.downloads.iter().find(|d| d.url == *url) else {
                        return Err(step(format!("ADD {url}: the download is missing")));
                    };
                    let entry =
                        d.context.get(&d.name)?.ok_or_else(|| step(format!("ADD {url}: the download is missing")))?;
                    includes.push(None);
                    let include = includes.len() - 1;
                    // BuildKit does not unpack a download unless --unpack.
                    if op.unpack == Some(true)
                        && let Some(ctx) =
                            extract_archive(&d.context.disk_path(entry), input.scratch, archives.len(), input.at)?
                    {
                        archives.push(ctx);
                        matched.push((Origin::Archive(archives.len() - 1), d.name.clone(), entry, include));
                        continue;
                    }
                    matched.push((Origin::Download(&d.context), d.name.clone(), entry, include));
                }
                CopySource::Inline { name, content } => inline.push((name.clone(), content.clone().into_bytes())),
                CopySource::Path(p) => {
                    let found = copy_select::resolve(op, input.context, p).map_err(|e| match e {
                        ExecError::Context { message, .. } => step(format!("{name} source {message}")),
                        other => other,
                    })?;
                    if op.parents && !has_wildcard(p) && found.include.is_some() {
                        // A plain path that names nothing below the root is as missing as a
                        // plain source without --parents.
                        let mut hit = false;
                        for m in found.matches.iter().filter(|m| m.entry.kind == EntryKind::Dir) {
                            let below = copy_select::below(
                                input.context,
                                m.entry,
                                found.include.as_ref(),
                                &Exclude::default(),
                            )?;
                            hit |= !below.is_empty();
                        }
                        if !hit {
                            return Err(step(format!(
                                "{name} --parents source `{p}` not found in {}",
                                input.context.describe()
                            )));
                        }
                    }
                    let include = includes.len();
                    includes.push(found.include);
                    let found = found.matches;
                    if found.is_empty() && has_wildcard(p) {
                        // BuildKit skips a wildcard that matches nothing.
                        tracing::info!(
                            "{}: {name} source `{p}` matches nothing in {}",
                            input.at,
                            input.context.describe()
                        );
                        continue;
                    }
                    if found.is_empty() {
                        return Err(step(format!("{name} source `{p}` not found in {}", input.context.describe())));
                    }
                    for m in found {
                        let e = m.entry;
                        // Local archives are extracted unless --unpack=false.
                        if op.add && op.unpack != Some(false) && matches!(e.kind, EntryKind::File { .. }) {
                            let disk = input.context.disk_path(e);
                            if let Some(ctx) = extract_archive(&disk, input.scratch, archives.len(), input.at)? {
                                archives.push(ctx);
                                matched.push((Origin::Archive(archives.len() - 1), m.name, e, include));
                                continue;
                            }
                        }
                        matched.push((Origin::Context, m.name, e, include));
                    }
                }
            }
        }
        let items: Vec<Item<'_>> = matched
            .iter()
            .map(|(a, name, e, include)| -> Result<Item<'_>> {
                Ok(match *a {
                    Origin::Context => Item {
                        context: input.context,
                        name,
                        entry: e,
                        keep_owner: input.keep_owners,
                        archive: false,
                        include: includes[*include].as_ref(),
                    },
                    // A download is root's (or --chown's), like a build context's files.
                    Origin::Download(context) => {
                        Item { context, name, entry: e, keep_owner: false, archive: false, include: None }
                    }
                    Origin::Archive(n) => {
                        let ctx = &archives[n];
                        Item {
                            context: ctx,
                            name,
                            entry: ctx.get("")?.expect("an archive context has a root"),
                            keep_owner: true,
                            archive: true,
                            include: None,
                        }
                    }
                })
            })
            .collect::<Result<_>>()?;
        if items.is_empty() && inline.is_empty() {
            // Only wildcards that matched nothing: no layer at all, as in BuildKit.
            return Ok(CopyPlan::default());
        }

        let count = items.len() + inline.len();
        let copies_files = items.iter().any(|i| !i.archive) || !inline.is_empty();
        let dest_resolved = input.tree.resolve(&dest_clean, true);
        let into_dir = dir_syntax || count > 1 || input.tree.is_dir(&dest_resolved);
        if count > 1 && !dir_syntax && !input.tree.is_dir(&dest_resolved) {
            return Err(step(format!(
                "{name} with more than one source needs a directory destination ending in `/` (got `{}`)",
                op.dest
            )));
        }
        // The file a single non-directory source becomes: parents resolved, last name kept.
        let dest_file = {
            let (parent, leaf) = split(&dest_clean);
            join(&input.tree.resolve(parent, true), leaf)
        };

        let mut plan = CopyPlan::default();
        let chmod = op.chmod.as_deref().map(|m| Chmod::parse(m).expect("validated by the planner"));
        let chmod = chmod.as_ref();
        let owner_of = |e: &ContextEntry, keep: bool| -> (u64, u64) {
            match (input.owner, keep) {
                (Some(ids), _) => (ids.uid.into(), ids.gid.into()),
                (None, true) => (e.uid.into(), e.gid.into()),
                (None, false) => (0, 0),
            }
        };

        for (source, item) in items.iter().enumerate() {
            let e = item.entry;
            // BuildKit applies --chmod to what COPY/ADD copies, never to an archive's members.
            let chmod = if item.archive { None } else { chmod };
            match &e.kind {
                EntryKind::Dir => {
                    if !input.tree.is_dir(&dest_resolved) && !dest_resolved.is_empty() {
                        // The destination is made like a missing parent (BuildKit's MkdirAll:
                        // 0755 or the --chmod mode, the --chown owner), not with the source
                        // directory's metadata; an archive's is always 0755.
                        let (uid, gid) = input.owner.map_or((0, 0), |o| (o.uid.into(), o.gid.into()));
                        // A symbolic --chmod edits the 0755 it would otherwise get.
                        let mode = chmod.map_or(0o755, |c| c.apply(0o755, true));
                        let meta = EntryMeta {
                            path: dest_resolved.clone(),
                            mode,
                            uid,
                            gid,
                            mtime: BUILD_TIME,
                            xattrs: vec![],
                        };
                        plan.add(&dest_resolved, meta, Content::Dir);
                    }
                    let base_len = if e.path.is_empty() { 0 } else { e.path.len() + 1 };
                    // BuildKit unpacks an archive whole: --exclude does not reach its members.
                    let none = Exclude::default();
                    let exclude = if item.archive { &none } else { &exclude };
                    for child in copy_select::below(item.context, e, item.include, exclude)? {
                        let target = join(&dest_resolved, &child.path[base_len..]);
                        plan.add_entry(
                            item.context,
                            child,
                            &target,
                            chmod,
                            owner_of(child, item.keep_owner),
                            source,
                            input.at,
                        )?;
                    }
                }
                _ => {
                    let target = if into_dir { join(&dest_resolved, leaf_name(item.name)) } else { dest_file.clone() };
                    plan.add_entry(item.context, e, &target, chmod, owner_of(e, item.keep_owner), source, input.at)?;
                }
            }
        }
        for (name, content) in inline {
            let target = if into_dir { join(&dest_resolved, &name) } else { dest_file.clone() };
            let (uid, gid) = input.owner.map_or((0, 0), |o| (o.uid.into(), o.gid.into()));
            let meta = EntryMeta {
                path: target.clone(),
                mode: chmod.map_or(0o644, |c| c.apply(0o644, false)),
                uid,
                gid,
                mtime: BUILD_TIME,
                xattrs: vec![],
            };
            plan.add(&target, meta, Content::Inline(content));
        }
        plan.link_hardlinks();
        if plan.entries.is_empty() && dest_resolved.is_empty() {
            return Ok(plan);
        }
        let owner = input.owner.map_or((0, 0), |o| (o.uid.into(), o.gid.into()));
        // BuildKit (fsutil since 2025) makes missing parents with the --chmod mode when there
        // is one, except for an archive's destination (its unpack makes them 0755).
        let parent_mode = match chmod.and_then(Chmod::created_dir_mode) {
            Some(mode) if copies_files => mode,
            _ => 0o755,
        };
        let dest = if into_dir { &dest_resolved } else { &dest_file };
        plan.add_missing_parents(input.tree, input.at, owner, parent_mode, dest)?;
        Ok(plan)
    }

    /// WORKDIR (BuildKit: `mkdir -p` as the USER in effect): the directory and its missing
    /// parents, 0755, owned by `owner`; empty when the directory exists. `dir` is absolute.
    pub fn workdir(tree: &dyn TreeView, dir: &str, owner: Ids, at: &Location) -> Result<CopyPlan> {
        let mut plan = CopyPlan::default();
        let resolved = tree.resolve(&clean_clamped(dir), true);
        if tree.is_dir(&resolved) {
            return Ok(plan);
        }
        if tree.node(&resolved).is_some() {
            return Err(ExecError::step(at, format!("WORKDIR {dir}: `/{resolved}` is not a directory in the image")));
        }
        let (uid, gid) = (owner.uid.into(), owner.gid.into());
        let meta = EntryMeta { path: resolved.clone(), mode: 0o755, uid, gid, mtime: BUILD_TIME, xattrs: vec![] };
        plan.add(&resolved, meta, Content::Dir);
        plan.add_missing_parents(tree, at, (uid, gid), 0o755, &resolved)?;
        Ok(plan)
    }

    fn add(&mut self, path: &str, meta: EntryMeta, content: Content) {
        self.entries.insert(path.to_string(), Planned { meta, content });
    }

    /// Files that are one inode within one source (BuildKit keeps hard links within a source,
    /// not across sources) become hard links to the first of them in written (path) order, so
    /// a link never precedes its target in the layer. Runs after every source is planned: a
    /// later source may have replaced an entry of an earlier one.
    fn link_hardlinks(&mut self) {
        let mut first: HashMap<(usize, u64, u64), String> = HashMap::new();
        for (path, planned) in &mut self.entries {
            if let Content::File { inode: Some(key), .. } = planned.content {
                match first.get(&key) {
                    Some(target) => planned.content = Content::Hardlink(target.clone()),
                    None => {
                        first.insert(key, path.clone());
                    }
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_entry(
        &mut self,
        ctx: &BuildContext,
        e: &ContextEntry,
        target: &str,
        chmod: Option<&Chmod>,
        (uid, gid): (u64, u64),
        source: usize,
        at: &Location,
    ) -> Result<()> {
        if target.is_empty() {
            return Err(ExecError::step(at, format!("cannot copy `{}` onto the image root", e.path)));
        }
        let mut meta = meta_of(target, e, chmod, uid, gid);
        let content = match &e.kind {
            EntryKind::Dir => Content::Dir,
            EntryKind::Symlink { target: t } => {
                ctx.check_inner_symlink(&e.path, t).map_err(|err| ExecError::step(at, err.to_string()))?;
                meta.mode = 0o777;
                Content::Symlink(t.clone())
            }
            EntryKind::File { .. } => {
                meta.xattrs = read_xattrs(&ctx.disk_path(e));
                let inode = (e.nlink > 1).then_some((source, e.dev, e.ino));
                Content::File { path: ctx.disk_path(e), inode }
            }
            EntryKind::Other => {
                return Err(ExecError::step(
                    at,
                    format!(
                        "`{}` in {} is a device, FIFO or socket; only files, directories and symlinks can be copied",
                        e.path,
                        ctx.describe()
                    ),
                ));
            }
        };
        self.add(target, meta, content);
        Ok(())
    }

    /// Adds the destination's missing ancestors; errors if one of them is a file in the image.
    fn add_missing_parents(
        &mut self,
        tree: &dyn TreeView,
        at: &Location,
        (uid, gid): (u64, u64),
        mode: u32,
        dest: &str,
    ) -> Result<()> {
        let mut needed: Vec<String> = Vec::new();
        let paths: Vec<String> = self.entries.keys().cloned().chain(std::iter::once(dest.to_string())).collect();
        for path in &paths {
            let mut ancestor = split(path).0;
            while !ancestor.is_empty() {
                if self.entries.contains_key(ancestor) || needed.iter().any(|n| n == ancestor) {
                    break;
                }
                match tree.node(ancestor) {
                    Some(Node { kind: NodeKind::Dir, .. }) => break,
                    Some(_) => {
                        return Err(ExecError::step(
                            at,
                            format!("cannot copy to `/{path}`: `/{ancestor}` is not a directory in the image"),
                        ));
                    }
                    None => needed.push(ancestor.to_string()),
                }
                ancestor = split(ancestor).0;
            }
        }
        for dir in needed {
            let meta = EntryMeta { path: dir.clone(), mode, uid, gid, mtime: BUILD_TIME, xattrs: vec![] };
            self.add(&dir, meta, Content::Dir);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the entries, parents before children; file contents stream from disk.
    pub fn write(&self, writer: &mut LayerWriter) -> Result<u64> {
        let mut bytes = 0;
        for planned in self.entries.values() {
            let meta = &planned.meta;
            let io_err = |p: &Path| ExecError::io(p.to_path_buf());
            match &planned.content {
                Content::Dir => writer.append_dir(meta).map_err(io_err(Path::new(&meta.path)))?,
                Content::Symlink(t) => writer.append_symlink(meta, t).map_err(io_err(Path::new(&meta.path)))?,
                Content::Hardlink(t) => writer.append_hardlink(meta, t).map_err(io_err(Path::new(&meta.path)))?,
                Content::Inline(data) => {
                    writer
                        .append_file(meta, data.len() as u64, &mut &data[..])
                        .map_err(io_err(Path::new(&meta.path)))?;
                    bytes += data.len() as u64;
                }
                Content::File { path, .. } => {
                    let mut f =
                        File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(path).map_err(io_err(path))?;
                    let size = f.metadata().map_err(io_err(path))?.size();
                    writer.append_file(meta, size, &mut f).map_err(io_err(path))?;
                    bytes += size;
                }
            }
        }
        Ok(bytes)
    }

    /// Updates the image tree with what this layer adds.
    pub fn apply_to(&self, tree: &mut ImageTree) -> Result<()> {
        for (path, p) in &self.entries {
            let kind = match &p.content {
                Content::Dir => NodeKind::Dir,
                Content::Symlink(t) => NodeKind::Symlink(t.clone()),
                _ => NodeKind::File,
            };
            if ImageTree::is_captured(path) {
                let content = match &p.content {
                    Content::Inline(d) => d.clone(),
                    Content::File { path: disk, .. } => std::fs::read(disk).map_err(ExecError::io(disk))?,
                    _ => Vec::new(),
                };
                tree.capture(path, content);
            }
            tree.insert(path.clone(), Node { kind, mode: p.meta.mode, uid: p.meta.uid, gid: p.meta.gid });
        }
        Ok(())
    }

    /// Paths this COPY writes (for reports and tests).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

fn meta_of(target: &str, e: &ContextEntry, chmod: Option<&Chmod>, uid: u64, gid: u64) -> EntryMeta {
    EntryMeta {
        path: target.to_string(),
        mode: chmod.map_or(e.mode, |c| c.apply(e.mode, e.kind == EntryKind::Dir)),
        uid,
        gid,
        mtime: e.mtime.max(0) as u64,
        xattrs: Vec::new(),
    }
}

/// Extended attributes worth carrying into a layer (capabilities, user data); SELinux labels
/// belong to the build host, not the image.
pub(crate) fn read_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else { return Vec::new() };
    let mut out: Vec<(String, Vec<u8>)> = names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n != "security.selinux")
        .filter_map(|n| xattr::get(path, &n).ok().flatten().map(|v| (n, v)))
        .collect();
    out.sort();
    out
}

/// How an ADD source is compressed (by its magic bytes, as BuildKit's DecompressStream): bzip2
/// and xz here; gzip, zstd and plain tar are told apart by ext-oci's layer decompressor.
#[derive(Debug, Clone, Copy)]
enum Compression {
    Bzip2,
    Xz,
    /// gzip, zstd or none: [`ext_oci::compression::decompress`] decides.
    LayerFormats,
}

impl Compression {
    fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Compression::Xz
        } else {
            Compression::LayerFormats
        }
    }

    fn reader(self, file: File) -> std::io::Result<Box<dyn Read>> {
        Ok(match self {
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(std::io::BufReader::new(file))),
            Compression::Xz => Box::new(lzma_rust2::XzReader::new(std::io::BufReader::new(file), true)),
            Compression::LayerFormats => ext_oci::compression::decompress(file)?,
        })
    }
}

/// If `file` is a tar archive (plain, gzip, bzip2, xz or zstd), extracts it safely into a fresh
/// directory and indexes that as a context; `None` if it is not an archive (ADD then copies it
/// as a file, like Docker: a compressed file that is not a tarball stays as it is).
fn extract_archive(file: &Path, scratch: &Path, n: usize, at: &Location) -> Result<Option<BuildContext>> {
    let open = || File::open(file).map_err(ExecError::io(file));
    let mut head = [0u8; 512];
    let got = read_up_to(&mut open()?, &mut head).map_err(ExecError::io(file))?;
    let compression = Compression::sniff(&head[..got]);
    let got = compression.reader(open()?).and_then(|mut r| read_up_to(&mut r, &mut head)).unwrap_or(0);
    let tar_head = &head[..got];
    let is_tar = (tar_head.len() >= 262 && &tar_head[257..262] == b"ustar") || is_v7_tar(tar_head);
    if !is_tar {
        return Ok(None);
    }
    let dir = scratch.join(format!("add-{n}"));
    std::fs::create_dir_all(&dir).map_err(ExecError::io(&dir))?;
    let opts = ext_rootfs::UnpackOptions {
        whiteouts: ext_rootfs::WhiteoutMode::Apply,
        layer_name: file.display().to_string(),
        filter: None,
    };
    let members = compression.reader(open()?).map_err(ExecError::io(file))?;
    ext_rootfs::unpack_layer(&dir, members, &opts).map_err(|e| ExecError::step(at, format!("ADD: {e}")))?;
    Ok(Some(BuildContext::open(&dir)?))
}

/// A pre-POSIX tar header: a checksum field that matches the header bytes.
fn is_v7_tar(h: &[u8]) -> bool {
    if h.len() < 512 {
        return false;
    }
    let field = String::from_utf8_lossy(&h[148..156]);
    let Ok(stored) = u32::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8) else { return false };
    let sum: u32 =
        h[..512].iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { u32::from(b) }).sum();
    stored == sum
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn has_wildcard(source: &str) -> bool {
    source.contains(['*', '?', '['])
}

fn leaf_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    }
}
