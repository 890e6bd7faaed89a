//! What goes into a step's cache key: everything that decides the layer (or its absence) a
//! COPY/ADD, RUN or WORKDIR step produces, and nothing else.
//!
//! Every key starts from the image so far ([`parent_digest`]: the base manifest digest, which
//! also fixes the platform, and the diffIDs of the layers added since) and the layer format
//! (compression and the `SOURCE_DATE_EPOCH`/mtime policy). Then:
//! - COPY/ADD: the expanded instruction, WORKDIR when the destination is relative, and the
//!   content digest of exactly the sources it reads ([`SourceHasher`]);
//! - RUN: the command (never expanded: its text), `--network`, the image's `Env`, the ARGs in
//!   scope (the lifecycle's `build_id` only if the Dockerfile declares it; the predefined proxy
//!   args only if declared, as in Docker), USER, WORKDIR, SHELL (shell form), the executor and
//!   the ignored paths. What the command reads from the network is not in the key: like Docker,
//!   `RUN apt-get install` is cached by its text;
//! - WORKDIR: the directory and USER.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ext_dockerfile::{CopyOp, CopySource, RunCommand, RunOp};
use ext_oci::{Digest, HashingWriter, LayerBlob, LayerOptions};
use ext_stepcache::StepKey;
use serde::{Deserialize, Serialize};

use crate::context::{BuildContext, ContextEntry, EntryKind};

/// The image a step starts from.
pub fn parent_digest(base_manifest: &Digest, layers: &[LayerBlob]) -> Digest {
    let mut text = format!("base {base_manifest}\n");
    for l in layers {
        text.push_str(&format!("layer {}\n", l.diff_id));
    }
    Digest::of(text.as_bytes())
}

/// The layer format: everything in [`LayerOptions`] but the thread count (the bytes do not
/// depend on it), so an option added there reaches the key by itself.
pub fn layer_format(opts: &LayerOptions) -> String {
    format!("{:?}", LayerOptions { threads: 0, ..*opts })
}

/// The key of a RUN step.
pub struct RunInputs<'a> {
    /// One description per `--mount` (settings, and the content of what a bind mount binds).
    pub mounts: &'a [String],
    pub op: &'a RunOp,
    pub env: &'a [(String, String)],
    pub user: &'a str,
    pub workdir: &'a str,
    pub shell: &'a [String],
    pub executor: &'a str,
    pub ignore_paths: &'a [String],
}

pub fn run_key(parent: &Digest, layer: &str, i: &RunInputs<'_>) -> StepKey {
    let pair = |(k, v): &(String, String)| format!("{k}={v}");
    let mut ignore = i.ignore_paths.to_vec();
    ignore.sort();
    let mut b = StepKey::builder(parent)
        .with("layer", layer)
        .with("instruction", format!("RUN {:?}", i.op.command))
        .with("network", i.op.network.as_deref().unwrap_or("default"))
        .with_list("env", i.env.iter().map(pair))
        .with_list("args", i.op.args_env.iter().map(pair))
        .with("user", i.user)
        .with("workdir", i.workdir)
        .with("executor", i.executor)
        .with_list("ignore", ignore);
    if !i.mounts.is_empty() {
        // Only when there are mounts, so keys of RUNs without any stay as they were.
        b = b.with_list("mounts", i.mounts);
    }
    if matches!(i.op.command, RunCommand::Shell(_)) {
        b = b.with_list("shell", i.shell);
    }
    b.build()
}

pub fn workdir_key(parent: &Digest, layer: &str, dir: &str, user: &str) -> StepKey {
    StepKey::builder(parent)
        .with("layer", layer)
        .with("instruction", format!("WORKDIR {dir}"))
        .with("user", user)
        .build()
}

/// The key of a COPY/ADD step and the state of the files it hashed, or `None` when the sources
/// cannot be resolved (the step itself then reports why).
pub fn copy_key(
    parent: &Digest,
    layer: &LayerOptions,
    op: &CopyOp,
    workdir: &str,
    context: &BuildContext,
    downloads: &[crate::copy::Downloaded],
    hasher: &mut SourceHasher,
) -> Option<(StepKey, Vec<Stamped>)> {
    let mut sink = HashingWriter::new(std::io::sink());
    let mut stamps = Vec::new();
    let exclude = crate::copy_select::Exclude::new(op).ok()?;
    for (n, source) in op.sources.iter().enumerate() {
        if let CopySource::Url(url) = source {
            // What was downloaded (with --checksum the instruction names it already, and
            // nothing is downloaded before the lookup).
            if let Some(d) = downloads.iter().find(|d| d.url == *url) {
                writeln!(sink, "url {n} {url:?}: {} {} {:?}", d.digest, d.mtime, d.name).ok()?;
            }
            continue;
        }
        let CopySource::Path(p) = source else { continue };
        let resolved = crate::copy_select::resolve(op, context, p).ok()?;
        let matches = resolved.matches;
        writeln!(sink, "source {n} {p:?}: {} matches", matches.len()).ok()?;
        for m in matches {
            writeln!(sink, "match {:?}", m.name).ok()?;
            // Files that are one inode within one source become hard links: the grouping is
            // part of the result.
            let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
            let mut describe = |e: &ContextEntry, rel: &str, sink: &mut HashingWriter<std::io::Sink>| -> Option<()> {
                let mtime = layer.mtime.apply(e.mtime.max(0) as u64);
                match &e.kind {
                    EntryKind::Dir => writeln!(sink, "dir {rel:?} {:o} {mtime}", e.mode).ok(),
                    EntryKind::Symlink { target } => writeln!(sink, "symlink {rel:?} {mtime} -> {target:?}").ok(),
                    EntryKind::Other => writeln!(sink, "other {rel:?}").ok(),
                    EntryKind::File { .. } => {
                        let link = if e.nlink > 1 {
                            inodes.entry((e.dev, e.ino)).or_insert_with(|| rel.to_string()).clone()
                        } else {
                            String::new()
                        };
                        let (content, stamp) = hasher.file_digest(context, e).ok()?;
                        stamps.push(stamp);
                        writeln!(sink, "file {rel:?} {:o} {mtime} {content} link {link:?}", e.mode).ok()
                    }
                }
            };
            describe(m.entry, "", &mut sink)?;
            if matches!(m.entry.kind, EntryKind::Dir) {
                let skip = if m.entry.path.is_empty() { 0 } else { m.entry.path.len() + 1 };
                for child in crate::copy_select::below(context, m.entry, resolved.include.as_ref(), &exclude).ok()? {
                    describe(child, &child.path[skip..], &mut sink)?;
                }
            }
        }
    }
    let (sources, _, _) = sink.finish();
    let name = if op.add { "ADD" } else { "COPY" };
    let mut b = StepKey::builder(parent)
        .with("layer", layer_format(layer))
        .with("instruction", format!("{name} {op:?}"))
        .with("sources", sources.to_string());
    if !op.dest.starts_with('/') {
        b = b.with("workdir", workdir);
    }
    Some((b.build(), stamps))
}

/// The key of `COPY --from=IMAGE`: what the instruction says and the source image's
/// manifest digest, which fixes every byte COPY can read from it; so a hit needs the manifest
/// only, never the source's layers.
pub fn copy_from_key(parent: &Digest, layer: &LayerOptions, op: &CopyOp, workdir: &str, source: &Digest) -> StepKey {
    let mut b = StepKey::builder(parent)
        .with("layer", layer_format(layer))
        .with("instruction", format!("COPY {op:?}"))
        .with("from", source.as_str());
    if !op.dest.starts_with('/') {
        b = b.with("workdir", workdir);
    }
    b.build()
}

/// What identifies a file's state without reading it: a change to its content or metadata
/// changes its ctime, which nobody can set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(md: &fs::Metadata) -> Stamp {
        Stamp {
            dev: md.dev(),
            ino: md.ino(),
            mode: md.mode(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

/// A source file as it was when its digest went into a key.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub path: PathBuf,
    pub stamp: Stamp,
}

impl Stamped {
    /// Whether the file is still as it was hashed (checked after a miss wrote its layer from
    /// the same files: a file changed in between must not be cached under the old digest).
    pub fn unchanged(&self) -> bool {
        fs::symlink_metadata(&self.path).is_ok_and(|md| Stamp::of(&md) == self.stamp)
    }
}

/// A file's digest, remembered with the stamp it had.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Print {
    stamp: Stamp,
    digest: String,
}

/// A file modified this recently may change again within the filesystem's timestamp
/// granularity without its stamp changing: its digest is not remembered (git's "racily
/// clean" rule).
const RACY: Duration = Duration::from_secs(2);

/// Content digests of build-context files, remembered per context directory by stamp so an
/// unchanged file is not read again (`<step cache>/contexts/<hash of the directory>.json`).
#[derive(Debug)]
pub struct SourceHasher {
    dir: Option<PathBuf>,
    contexts: HashMap<PathBuf, Prints>,
    /// [`RACY`], shorter in tests.
    racy: Duration,
    /// Files whose content was read (not recognised by their stamp), for tests and logs.
    pub files_read: usize,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Prints {
    root: PathBuf,
    files: BTreeMap<String, Print>,
    #[serde(skip)]
    dirty: bool,
}

impl SourceHasher {
    /// Remembers digests in `dir` (`None`: only for this session).
    pub fn new(dir: Option<PathBuf>) -> SourceHasher {
        SourceHasher { dir, contexts: HashMap::new(), racy: RACY, files_read: 0 }
    }

    fn prints_file(dir: &Path, root: &Path) -> PathBuf {
        let name = Digest::of(root.as_os_str().as_encoded_bytes()).hex()[..32].to_string();
        dir.join(format!("{name}.json"))
    }

    /// The digests known for the context at `given` (as the session names it), loaded once.
    fn prints(&mut self, given: &Path) -> std::io::Result<&mut Prints> {
        if !self.contexts.contains_key(given) {
            let root = fs::canonicalize(given)?;
            let loaded = self
                .dir
                .as_ref()
                .and_then(|d| fs::read(Self::prints_file(d, &root)).ok())
                .and_then(|b| serde_json::from_slice::<Prints>(&b).ok())
                .filter(|p| p.root == root)
                .unwrap_or_else(|| Prints { root, ..Prints::default() });
            self.contexts.insert(given.to_path_buf(), loaded);
        }
        Ok(self.contexts.get_mut(given).expect("just inserted"))
    }

    /// `sha256:<content> xattrs:<digest>` of a context file, and its stamp.
    pub fn file_digest(&mut self, context: &BuildContext, e: &ContextEntry) -> std::io::Result<(String, Stamped)> {
        let path = context.disk_path(e);
        let stamp = Stamp::of(&fs::symlink_metadata(&path)?);
        let prints = self.prints(context.root())?;
        if let Some(p) = prints.files.get(&e.path).filter(|p| p.stamp == stamp) {
            return Ok((p.digest.clone(), Stamped { path, stamp }));
        }
        self.files_read += 1;
        let racy_window = self.racy;
        let prints = self.prints(context.root())?;
        let mut file = fs::File::options().read(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
        let before = Stamp::of(&file.metadata()?);
        let mut hashing = HashingWriter::new(std::io::sink());
        std::io::copy(&mut file, &mut hashing)?;
        let after = Stamp::of(&file.metadata()?);
        let (content, _, _) = hashing.finish();
        let xattrs = serde_json::to_vec(&crate::copy::read_xattrs(&path)).expect("xattrs serialize");
        let digest = format!("{content} xattrs:{}", Digest::of(&xattrs).short());
        let settled = SystemTime::UNIX_EPOCH + Duration::new(after.ctime.0.max(0) as u64, after.ctime.1.max(0) as u32);
        let racy = !SystemTime::now().duration_since(settled).is_ok_and(|age| age >= racy_window);
        if before == after && after == stamp && !racy {
            prints.files.insert(e.path.clone(), Print { stamp, digest: digest.clone() });
            prints.dirty = true;
        }
        Ok((digest, Stamped { path, stamp: before }))
    }

    /// Writes the digests learnt in this session (by rename: concurrent builds may share them).
    pub fn save(&mut self) {
        let Some(dir) = self.dir.clone() else { return };
        let files: Vec<(PathBuf, Vec<u8>)> = self
            .contexts
            .values_mut()
            .filter(|p| p.dirty)
            .filter_map(|p| {
                p.dirty = false;
                Some((Self::prints_file(&dir, &p.root), serde_json::to_vec(&*p).ok()?))
            })
            .collect();
        if files.is_empty() || fs::create_dir_all(&dir).is_err() {
            return;
        }
        for (path, bytes) in files {
            let written = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(&dir)
                .and_then(|mut t| t.write_all(&bytes).map(|_| t))
                .and_then(|t| t.persist(&path).map_err(|e| e.error));
            if let Err(e) = written {
                tracing::debug!("cannot remember COPY source digests in {}: {e}", path.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_dockerfile::Dockerfile;
    use ext_oci::{Compression, MtimePolicy};
    use std::collections::BTreeMap;

    fn plan_op(text: &str, args: &[(&str, &str)]) -> ext_dockerfile::Op {
        let df = Dockerfile::parse(&format!("FROM ${{base_image}}\n{text}\n"), "Dockerfile").unwrap();
        let mut build_args: BTreeMap<String, String> = BTreeMap::new();
        build_args.insert("base_image".into(), "b".into());
        for (k, v) in args {
            build_args.insert(k.to_string(), v.to_string());
        }
        df.plan(&build_args, &[]).unwrap().steps.pop().unwrap().op
    }

    fn run_op(text: &str, args: &[(&str, &str)]) -> RunOp {
        match plan_op(text, args) {
            ext_dockerfile::Op::Run(r) => r,
            other => panic!("{other:?}"),
        }
    }

    struct Run {
        op: RunOp,
        env: Vec<(String, String)>,
        user: &'static str,
        workdir: &'static str,
        shell: Vec<String>,
        executor: &'static str,
        ignore: Vec<String>,
        layer: LayerOptions,
        mounts: Vec<String>,
    }

    impl Run {
        fn new(op: RunOp) -> Run {
            Run {
                op,
                env: vec![("PATH".into(), "/bin".into())],
                user: "1000",
                workdir: "/",
                shell: vec!["/bin/sh".into(), "-c".into()],
                executor: "sandbox",
                ignore: vec!["/a".into(), "/b".into()],
                layer: LayerOptions::default(),
                mounts: Vec::new(),
            }
        }

        fn key(&self) -> StepKey {
            let inputs = RunInputs {
                op: &self.op,
                env: &self.env,
                user: self.user,
                workdir: self.workdir,
                shell: &self.shell,
                executor: self.executor,
                ignore_paths: &self.ignore,
                mounts: &self.mounts,
            };
            run_key(&Digest::of(b"image"), &layer_format(&self.layer), &inputs)
        }
    }

    #[test]
    fn run_keys_follow_exactly_what_the_command_sees() {
        let base = Run::new(run_op("ARG V=1\nRUN echo $V", &[]));
        let key = base.key();
        let changed = |r: Run| r.key().differing(key.components());
        assert_eq!(changed(Run { executor: "live root", ..Run::new(base.op.clone()) }), ["executor"]);
        assert_eq!(changed(Run { user: "0", ..Run::new(base.op.clone()) }), ["user"]);
        assert_eq!(changed(Run { workdir: "/tmp", ..Run::new(base.op.clone()) }), ["workdir"]);
        assert_eq!(changed(Run { env: vec![], ..Run::new(base.op.clone()) }), ["env"]);
        assert_eq!(
            changed(Run { shell: vec!["/bin/bash".into(), "-c".into()], ..Run::new(base.op.clone()) }),
            ["shell"]
        );
        assert_eq!(changed(Run { ignore: vec!["/a".into()], ..Run::new(base.op.clone()) }), ["ignore"]);
        assert_eq!(changed(Run { mounts: vec!["cache target=/c".into()], ..Run::new(base.op.clone()) }), ["mounts"]);
        let level6 = LayerOptions { compression: Compression::Gzip { level: 6 }, ..LayerOptions::default() };
        assert_eq!(changed(Run { layer: level6, ..Run::new(base.op.clone()) }), ["layer"]);
        let zstd = LayerOptions { compression: Compression::Zstd { level: 3 }, ..LayerOptions::default() };
        assert_eq!(changed(Run { layer: zstd, ..Run::new(base.op.clone()) }), ["layer"]);
        let epoch = LayerOptions { mtime: MtimePolicy::Clamp(1_700_000_000), ..LayerOptions::default() };
        assert_eq!(changed(Run { layer: epoch, ..Run::new(base.op.clone()) }), ["layer"]);
        assert_eq!(changed(Run::new(run_op("ARG V=1\nRUN echo $V", &[("V", "2")]))), ["args"]);
        assert_eq!(changed(Run::new(run_op("ARG V=1\nRUN --network=none echo $V", &[]))), ["network"]);
        assert_eq!(changed(Run::new(run_op("ARG V=1\nRUN echo  $V", &[]))), ["instruction"]);

        // Not in the key: the order of ignored paths, the thread count, undeclared proxies,
        // undeclared build args.
        let unchanged = [
            Run { ignore: vec!["/b".into(), "/a".into()], ..Run::new(base.op.clone()) },
            Run { layer: LayerOptions { threads: 7, ..LayerOptions::default() }, ..Run::new(base.op.clone()) },
            Run::new(run_op("ARG V=1\nRUN echo $V", &[("HTTP_PROXY", "http://p"), ("OTHER", "x")])),
        ];
        for r in unchanged {
            assert_eq!(r.key().digest(), key.digest());
        }
        // A declared proxy arg is an ARG like any other.
        let declared = Run::new(run_op("ARG V=1\nARG HTTP_PROXY\nRUN echo $V", &[("HTTP_PROXY", "http://p")]));
        assert_eq!(declared.key().differing(key.components()), ["args"]);
        // The exec form does not read SHELL.
        let exec = Run::new(run_op("RUN [\"echo\"]", &[]));
        let exec_bash = Run { shell: vec!["/bin/bash".into(), "-c".into()], ..Run::new(exec.op.clone()) };
        assert_eq!(exec.key().digest(), exec_bash.key().digest());
    }

    #[test]
    fn workdir_and_parent() {
        let k = workdir_key(&Digest::of(b"image"), "fmt", "/w", "0");
        assert_eq!(workdir_key(&Digest::of(b"image"), "fmt", "/w", "1000").differing(k.components()), ["user"]);
        assert_eq!(workdir_key(&Digest::of(b"other"), "fmt", "/w", "0").differing(k.components()), ["parent"]);
        let base = Digest::of(b"manifest");
        assert_ne!(parent_digest(&base, &[]), parent_digest(&Digest::of(b"another manifest"), &[]));
    }

    fn copy_op(text: &str) -> CopyOp {
        match plan_op(text, &[]) {
            ext_dockerfile::Op::Copy(c) => c,
            other => panic!("{other:?}"),
        }
    }

    fn copy_key_of(ctx: &Path, text: &str, hasher: &mut SourceHasher) -> StepKey {
        let context = BuildContext::open(ctx).unwrap();
        let op = copy_op(text);
        copy_key(&Digest::of(b"image"), &LayerOptions::default(), &op, "/w", &context, &[], hasher).unwrap().0
    }

    #[test]
    fn copy_keys_hash_only_the_sources_read() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        fs::create_dir_all(ctx.join("src/sub")).unwrap();
        fs::write(ctx.join("src/a"), "a").unwrap();
        fs::write(ctx.join("src/sub/b"), "b").unwrap();
        fs::write(ctx.join("other"), "o").unwrap();
        let mut h = SourceHasher::new(None);
        let k = copy_key_of(&ctx, "COPY src/ /dst/", &mut h);
        fs::write(ctx.join("other"), "changed").unwrap();
        assert_eq!(copy_key_of(&ctx, "COPY src/ /dst/", &mut h).digest(), k.digest(), "a file not read");
        fs::write(ctx.join("src/sub/b"), "B").unwrap();
        let nested = copy_key_of(&ctx, "COPY src/ /dst/", &mut h);
        assert_eq!(nested.differing(k.components()), ["sources"], "a file in a copied directory");
        std::os::unix::fs::symlink("a", ctx.join("src/link")).unwrap();
        let linked = copy_key_of(&ctx, "COPY src/ /dst/", &mut h);
        assert_eq!(linked.differing(nested.components()), ["sources"], "a new symlink");
        fs::hard_link(ctx.join("src/a"), ctx.join("src/a2")).unwrap();
        fs::write(ctx.join("src/c"), "a").unwrap();
        let with_hardlink = copy_key_of(&ctx, "COPY src/ /dst/", &mut h);
        fs::remove_file(ctx.join("src/a2")).unwrap();
        fs::write(ctx.join("src/a2"), "a").unwrap();
        let with_copy = copy_key_of(&ctx, "COPY src/ /dst/", &mut h);
        assert_ne!(with_hardlink.digest(), with_copy.digest(), "a hard link and a copy are different layers");
        // A relative destination reads WORKDIR; an absolute one does not.
        assert!(k.components().get("workdir").is_none());
        assert!(copy_key_of(&ctx, "COPY src/ dst/", &mut h).components().contains_key("workdir"));
        // Here-documents are in the instruction.
        let a = copy_key_of(&ctx, "COPY <<EOF /f\none\nEOF", &mut h);
        let b = copy_key_of(&ctx, "COPY <<EOF /f\ntwo\nEOF", &mut h);
        assert_eq!(a.differing(b.components()), ["instruction"]);
        // A missing source: no key (the step reports the error).
        let context = BuildContext::open(&ctx).unwrap();
        let missing = copy_op("COPY nothing-here /x");
        assert!(
            copy_key(&Digest::of(b"image"), &LayerOptions::default(), &missing, "/", &context, &[], &mut h).is_some(),
            "a missing plain path resolves to nothing: keyed, and the step fails before storing"
        );
    }

    #[test]
    fn excluded_and_unselected_files_are_not_read() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        fs::create_dir_all(ctx.join("src/docs")).unwrap();
        fs::write(ctx.join("src/a.txt"), "a").unwrap();
        fs::write(ctx.join("src/docs/x.md"), "x").unwrap();
        let mut h = SourceHasher::new(None);
        let exclude = "COPY --exclude=docs src /dst/";
        let parents = "COPY --parents src/*.txt /dst/";
        let (k1, p1) = (copy_key_of(&ctx, exclude, &mut h), copy_key_of(&ctx, parents, &mut h));
        fs::write(ctx.join("src/docs/x.md"), "changed").unwrap();
        assert_eq!(copy_key_of(&ctx, exclude, &mut h).digest(), k1.digest(), "an excluded file");
        assert_eq!(copy_key_of(&ctx, parents, &mut h).digest(), p1.digest(), "a file --parents does not take");
        fs::write(ctx.join("src/a.txt"), "changed").unwrap();
        assert_eq!(copy_key_of(&ctx, exclude, &mut h).differing(k1.components()), ["sources"]);
        assert_eq!(copy_key_of(&ctx, parents, &mut h).differing(p1.components()), ["sources"]);
        let plain = copy_key_of(&ctx, "COPY src /dst/", &mut h);
        assert!(plain.differing(copy_key_of(&ctx, exclude, &mut h).components()).iter().any(|c| c == "instruction"));
    }

    #[test]
    fn a_changed_file_is_never_recognised_by_its_old_stamp() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path().join("ctx");
        fs::create_dir_all(&ctx).unwrap();
        let file = ctx.join("f");
        fs::write(&file, "aaaa").unwrap();
        let prints = d.path().join("prints");
        let mut h = SourceHasher { racy: Duration::ZERO, ..SourceHasher::new(Some(prints.clone())) };
        let first = copy_key_of(&ctx, "COPY f /f", &mut h);
        assert_eq!(h.files_read, 1);
        h.save();
        // Unchanged: recognised by its stamp, not read again (also by a later build).
        let mut later = SourceHasher { racy: Duration::ZERO, ..SourceHasher::new(Some(prints.clone())) };
        assert_eq!(copy_key_of(&ctx, "COPY f /f", &mut later).digest(), first.digest());
        assert_eq!(later.files_read, 0, "known by its stamp");
        // Same size, same mtime, other content: the ctime still changed.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        fs::write(&file, "bbbb").unwrap();
        fs::File::options().write(true).open(&file).unwrap().set_modified(mtime).unwrap();
        let changed = copy_key_of(&ctx, "COPY f /f", &mut later);
        assert_ne!(changed.digest(), first.digest());
        assert_eq!(later.files_read, 1);

        // With the real window, a file changed just now is hashed but not remembered: its
        // stamp could stay the same through a second change within the clock's granularity.
        let mut fresh = SourceHasher::new(Some(d.path().join("fresh")));
        copy_key_of(&ctx, "COPY f /f", &mut fresh);
        copy_key_of(&ctx, "COPY f /f", &mut fresh);
        assert_eq!(fresh.files_read, 2);

        // What a miss checks before storing: the files are still as they were hashed.
        let context = BuildContext::open(&ctx).unwrap();
        let (_, stamps) = copy_key(
            &Digest::of(b"image"),
            &LayerOptions::default(),
            &copy_op("COPY f /f"),
            "/",
            &context,
            &[],
            &mut fresh,
        )
        .unwrap();
        assert!(stamps.iter().all(Stamped::unchanged));
        fs::write(&file, "cccc").unwrap();
        assert!(!stamps.iter().all(Stamped::unchanged));
    }
}
