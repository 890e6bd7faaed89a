//! The build context: a directory (normally an extension layer) indexed once in memory - paths
//! and metadata, never file contents, which are streamed from disk when a layer is written.
//!
//! Every lookup stays inside the context: `..` that would climb out and symlinks that point
//! outside are errors, never followed.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::dockerignore::DockerIgnore;
use crate::error::{ExecError, Result};
use crate::paths::clean_relative;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File {
        size: u64,
    },
    Dir,
    Symlink {
        target: String,
    },
    /// Devices, FIFOs and sockets are not copied from a context (Docker skips sockets and
    /// copies the rest; we refuse them so nothing surprising enters a layer).
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Relative path, `/`-separated; the root itself is "".
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
}

/// Indexed on first use: a Dockerfile without COPY/ADD never walks its context.
#[derive(Debug)]
pub struct BuildContext {
    root: PathBuf,
    kind: ContextKind,
    index: std::sync::OnceLock<BTreeMap<String, ContextEntry>>,
}

/// What a context's directory is, which decides how paths in it are read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ContextKind {
    /// A build context (an extension layer): `.dockerignore` honoured, and nothing may lead
    /// out of it (`..` above the root and symlinks pointing out are errors).
    Directory,
    /// Another image's files, unpacked for `COPY --from=IMAGE`: a root filesystem, read as a
    /// process in that image would (`..` stops at the root, symlinks may point anywhere in
    /// it, no `.dockerignore`). Named after the image in messages.
    ImageRoot { image: String },
    /// The directory a file `ADD <url>` downloaded was saved in: read as a build context
    /// without `.dockerignore`, named after the URL in messages.
    Download { url: String },
}

const MAX_SYMLINK_HOPS: usize = 40;

impl BuildContext {
    /// A context rooted at `root`; checked now, indexed when first needed.
    pub fn open(root: &Path) -> Result<BuildContext> {
        let meta = fs::metadata(root)
            .map_err(|e| ExecError::Context { dir: root.to_path_buf(), message: format!("cannot open: {e}") })?;
        if !meta.is_dir() {
            return Err(ExecError::Context { dir: root.to_path_buf(), message: "not a directory".into() });
        }
        Ok(BuildContext { root: root.to_path_buf(), kind: ContextKind::Directory, index: std::sync::OnceLock::new() })
    }

    /// The files of `image` unpacked at `root` (`COPY --from=IMAGE`), read as that image's
    /// root filesystem.
    pub fn open_image_root(root: &Path, image: &str) -> Result<BuildContext> {
        let mut context = BuildContext::open(root)?;
        context.kind = ContextKind::ImageRoot { image: image.to_string() };
        Ok(context)
    }

    /// The directory holding the file `ADD <url>` downloaded from `url`.
    pub fn open_download(root: &Path, url: &str) -> Result<BuildContext> {
        let mut context = BuildContext::open(root)?;
        context.kind = ContextKind::Download { url: url.to_string() };
        Ok(context)
    }

    /// Where sources are looked up, for messages: `the build context DIR` or `image NAME`.
    pub fn describe(&self) -> String {
        match &self.kind {
            ContextKind::Directory => format!("the build context {}", self.root.display()),
            ContextKind::ImageRoot { image } => format!("image {image}"),
            ContextKind::Download { url } => format!("the download of {url}"),
        }
    }

    /// Whether this is another image's root filesystem (`COPY --from=IMAGE`).
    pub fn is_image_root(&self) -> bool {
        matches!(self.kind, ContextKind::ImageRoot { .. })
    }

    /// A path cleaned relative to the root: `None` if it leaves a build context; in an image
    /// root `..` stops at the root, as it does for a process.
    fn clean(&self, path: &str) -> Option<String> {
        match self.kind {
            ContextKind::Directory | ContextKind::Download { .. } => clean_relative(path),
            ContextKind::ImageRoot { .. } => Some(crate::paths::clean_clamped(path)),
        }
    }

    fn entries(&self) -> Result<&BTreeMap<String, ContextEntry>> {
        if let Some(i) = self.index.get() {
            return Ok(i);
        }
        let index = Self::build_index(&self.root, self.kind == ContextKind::Directory)?;
        Ok(self.index.get_or_init(|| index))
    }

    /// Indexes `root`, honouring its `.dockerignore` if `dockerignore`.
    fn build_index(root: &Path, dockerignore: bool) -> Result<BTreeMap<String, ContextEntry>> {
        let err = |message: String| ExecError::Context { dir: root.to_path_buf(), message };
        let ignore = if !dockerignore {
            DockerIgnore::default()
        } else {
            match crate::special_file::read_text(
                &root.join(".dockerignore"),
                crate::special_file::Symlinks::Refuse,
                crate::special_file::MAX_DOCKERIGNORE,
            ) {
                Ok(text) => DockerIgnore::parse(&text).map_err(err)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::default(),
                Err(e) => return Err(err(format!(".dockerignore: {e}"))),
            }
        };
        let can_prune = !ignore.has_exclusions();
        let mut entries = BTreeMap::new();
        let mut walk = walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name().into_iter();
        while let Some(item) = walk.next() {
            let item = item.map_err(|e| err(e.to_string()))?;
            let rel = item
                .path()
                .strip_prefix(root)
                .expect("walkdir stays under its root")
                .to_str()
                .ok_or_else(|| err(format!("{}: path is not UTF-8", item.path().display())))?
                .to_string();
            if !rel.is_empty() && ignore.is_ignored(&rel) {
                if item.file_type().is_dir() && can_prune {
                    walk.skip_current_dir();
                }
                continue;
            }
            let md = item.metadata().map_err(|e| err(e.to_string()))?;
            let kind = if md.is_dir() {
                EntryKind::Dir
            } else if md.is_file() {
                EntryKind::File { size: md.len() }
            } else if md.file_type().is_symlink() {
                let target = fs::read_link(item.path()).map_err(|e| err(e.to_string()))?;
                EntryKind::Symlink { target: target.to_string_lossy().into_owned() }
            } else {
                EntryKind::Other
            };
            entries.insert(
                rel.clone(),
                ContextEntry {
                    path: rel,
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                    dev: md.dev(),
                    ino: md.ino(),
                    nlink: md.nlink(),
                },
            );
        }
        Ok(entries)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The on-disk path of an indexed entry (for streaming its content).
    pub fn disk_path(&self, entry: &ContextEntry) -> PathBuf {
        self.root.join(&entry.path)
    }

    /// The entry a plain path (no wildcards) leads to, symlinks on the way followed inside the
    /// context; `""` or `.` is the context's root.
    pub fn lookup_path(&self, path: &str) -> Result<Option<&ContextEntry>> {
        let cleaned = self.clean(path).ok_or_else(|| ExecError::Context {
            dir: self.root.clone(),
            message: format!("`{path}` is outside the build context"),
        })?;
        self.lookup(&cleaned, path)
    }

    pub fn get(&self, path: &str) -> Result<Option<&ContextEntry>> {
        Ok(self.entries()?.get(path))
    }

    /// Entries strictly below directory `dir`, in path order.
    pub fn children_of<'a>(&'a self, dir: &'a str) -> Result<impl Iterator<Item = &'a ContextEntry> + 'a> {
        let prefix = if dir.is_empty() { String::new() } else { format!("{dir}/") };
        Ok(self
            .entries()?
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !k.is_empty() && k.as_str() != dir)
            .map(|(_, v)| v))
    }

    /// Resolves a COPY source (a path or a wildcard pattern, relative to the context) to what
    /// it names, following symlinks on the way (the source itself included) as BuildKit does,
    /// but only inside the context. A wildcard matching nothing gives nothing (BuildKit skips
    /// it); a missing plain path gives nothing too, and the caller says it is missing.
    pub fn resolve_source(&self, source: &str) -> Result<Vec<Matched<'_>>> {
        let cleaned = self.clean(source).ok_or_else(|| ExecError::Context {
            dir: self.root.clone(),
            message: format!("`{source}` is outside the build context"),
        })?;
        let components: Vec<&str> = cleaned.split('/').collect();
        let Some(first) = components.iter().position(|c| has_glob(c)) else {
            return Ok(self
                .lookup(&cleaned, source)?
                .map(|entry| Matched { name: cleaned.clone(), entry })
                .into_iter()
                .collect());
        };
        // BuildKit (fsutil's ResolveWildcards): the components before the first wildcard are a
        // path (symlinks followed), the rest a pattern for the paths below it, matched like Go's
        // filepath.Match: `*` stays within one component, so `**` is just `*` twice.
        let prefix = components[..first].join("/");
        let pattern = collapse_stars(&components[first..].join("/"));
        let base = match self.lookup(&prefix, source)? {
            Some(ContextEntry { kind: EntryKind::Dir, path, .. }) => path.clone(),
            _ => return Ok(Vec::new()),
        };
        let glob = globset::GlobBuilder::new(&pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| ExecError::Context { dir: self.root.clone(), message: format!("`{source}`: {e}") })?
            .compile_matcher();
        let skip = if base.is_empty() { 0 } else { base.len() + 1 };
        let mut out = Vec::new();
        for e in self.children_of(&base)? {
            let rel = &e.path[skip..];
            if glob.is_match(rel) {
                out.push(Matched { name: join(&prefix, rel), entry: self.follow(&e.path, source)? });
            }
        }
        Ok(out)
    }

    /// Looks up a cleaned relative path, following symlinks in every component.
    fn lookup(&self, cleaned: &str, source: &str) -> Result<Option<&ContextEntry>> {
        let mut resolved = String::new();
        let mut hops = 0;
        let mut pending: Vec<String> = cleaned.split('/').filter(|c| !c.is_empty()).rev().map(String::from).collect();
        while let Some(component) = pending.pop() {
            let candidate = join(&resolved, &component);
            let Some(entry) = self.entries()?.get(&candidate) else { return Ok(None) };
            if let EntryKind::Symlink { target } = &entry.kind {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(self.escape_error(source, &candidate, target, "too many levels of symlinks"));
                }
                // An absolute target starts again at the context's root, as BuildKit resolves
                // it (the context is the source's root filesystem).
                let base = if target.starts_with('/') { "" } else { parent(&candidate) };
                let joined = join(base, target);
                let Some(clean) = self.clean(&joined) else {
                    return Err(self.escape_error(source, &candidate, target, "points outside the build context"));
                };
                for c in clean.split('/').filter(|c| !c.is_empty()).rev() {
                    pending.push(c.to_string());
                }
                resolved.clear();
                continue;
            }
            resolved = candidate;
        }
        Ok(self.entries()?.get(&resolved))
    }

    /// The entry a wildcard match leads to. A match is listed without following it, so a
    /// symlink can lead to nothing: BuildKit then fails the copy (its lstat of the followed
    /// path finds nothing), and so do we, naming the link.
    fn follow<'a>(&'a self, path: &str, source: &str) -> Result<&'a ContextEntry> {
        match self.lookup(path, source)? {
            Some(entry) => Ok(entry),
            None => {
                let target = match &self.entries()?.get(path).map(|e| &e.kind) {
                    Some(EntryKind::Symlink { target }) => target.clone(),
                    _ => String::new(),
                };
                let why = match &self.kind {
                    ContextKind::Directory => {
                        "leads to nothing in the build context (absolute targets are resolved inside it)".to_string()
                    }
                    ContextKind::ImageRoot { image } => format!("leads to nothing in image {image}"),
                    ContextKind::Download { url } => format!("leads to nothing in the download of {url}"),
                };
                Err(self.escape_error(source, path, &target, &why))
            }
        }
    }

    fn escape_error(&self, source: &str, link: &str, target: &str, why: &str) -> ExecError {
        ExecError::Context {
            dir: self.root.clone(),
            message: format!("`{source}`: symlink `{link}` -> `{target}` {why}"),
        }
    }

    /// Checks a symlink found inside a copied directory: Docker copies it as a link, and we
    /// refuse links that point out of the context so a layer never depends on the build host.
    pub fn check_inner_symlink(&self, link: &str, target: &str) -> Result<()> {
        if target.starts_with('/') || self.is_image_root() {
            // An image's own links were made for its root filesystem, where `..` stops at `/`.
            // An absolute link is resolved inside the image at run time, not on this host.
            return Ok(());
        }
        if clean_relative(&join(parent(link), target)).is_none() {
            return Err(self.escape_error(link, link, target, "points outside the build context"));
        }
        Ok(())
    }
}

/// A COPY source as matched: its own path in the context (the copy is named after it, even
/// when it is a symlink) and the entry it leads to.
#[derive(Debug, Clone)]
pub struct Matched<'a> {
    pub name: String,
    pub entry: &'a ContextEntry,
}

/// `**` (or more) -> `*`, escapes kept: Go's filepath.Match reads `**` as two `*`.
fn collapse_stars(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.push(c);
            if let Some(n) = chars.next() {
                out.push(n);
            }
            continue;
        }
        if c == '*' && out.ends_with('*') && !out.ends_with("\\*") {
            continue;
        }
        out.push(c);
    }
    out
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() { b.to_string() } else { format!("{a}/{b}") }
}

fn parent(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn ctx() -> (tempfile::TempDir, BuildContext) {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("src/sub")).unwrap();
        fs::write(r.join("src/a.txt"), "a").unwrap();
        fs::write(r.join("src/b.txt"), "b").unwrap();
        fs::write(r.join("src/sub/c.txt"), "c").unwrap();
        fs::write(r.join("ignored.log"), "x").unwrap();
        fs::write(r.join(".dockerignore"), "*.log\n").unwrap();
        symlink("src/a.txt", r.join("link")).unwrap();
        symlink("src", r.join("srclink")).unwrap();
        symlink("../../etc/passwd", r.join("escape")).unwrap();
        symlink("/etc/passwd", r.join("absolute")).unwrap();
        let c = BuildContext::open(r).unwrap();
        (d, c)
    }

    fn paths(v: Vec<Matched<'_>>) -> Vec<String> {
        v.into_iter().map(|m| m.entry.path.clone()).collect()
    }

    fn names(v: Vec<Matched<'_>>) -> Vec<String> {
        v.into_iter().map(|m| m.name).collect()
    }

    #[test]
    fn lookups_and_globs() {
        let (_d, c) = ctx();
        assert!(c.get("ignored.log").unwrap().is_none(), ".dockerignore honoured");
        assert_eq!(paths(c.resolve_source("src/*.txt").unwrap()), vec!["src/a.txt", "src/b.txt"]);
        assert_eq!(paths(c.resolve_source("./src/../src/a.txt").unwrap()), vec!["src/a.txt"]);
        assert_eq!(paths(c.resolve_source("/src/a.txt").unwrap()), vec!["src/a.txt"]);
        assert_eq!(paths(c.resolve_source("link").unwrap()), vec!["src/a.txt"]);
        assert_eq!(paths(c.resolve_source("srclink/sub/c.txt").unwrap()), vec!["src/sub/c.txt"]);
        assert!(c.resolve_source("missing").unwrap().is_empty());
        assert_eq!(names(c.resolve_source("link").unwrap()), vec!["link"], "named after the source, not its target");
        // `**` is not recursive (Go's filepath.Match): it matches one component like `*`.
        assert_eq!(paths(c.resolve_source("**/*.txt").unwrap()), vec!["src/a.txt", "src/b.txt"]);
        assert_eq!(paths(c.resolve_source("src/**").unwrap()), vec!["src/a.txt", "src/b.txt", "src/sub"]);
        assert_eq!(names(c.resolve_source("srclink/*.txt").unwrap()), vec!["srclink/a.txt", "srclink/b.txt"]);
        assert!(c.resolve_source("*.none").unwrap().is_empty());
        // Below the first wildcard nothing is followed (fsutil walks the tree without following
        // links): `srclink` is not a directory to the pattern, so this matches nothing, as in
        // BuildKit - whether the link leads inside the context or out of it.
        assert!(c.resolve_source("s*/a.txt").unwrap().iter().all(|m| m.name == "src/a.txt"));
        assert!(c.resolve_source("srcl*/a.txt").unwrap().is_empty());
        assert!(c.resolve_source("esc*/passwd").unwrap().is_empty());
        let kids: Vec<String> = c.children_of("src").unwrap().map(|e| e.path.clone()).collect();
        assert_eq!(kids, vec!["src/a.txt", "src/b.txt", "src/sub", "src/sub/c.txt"]);
    }

    /// docker/Dockerfile sends the repository as its context: its .dockerignore must keep the
    /// build output (several GB) out, as any context reader that honours it does.
    #[test]
    fn the_repository_context_leaves_out_build_output() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let c = BuildContext::open(&repo).unwrap();
        assert!(c.get("Cargo.toml").unwrap().is_some() && c.get("docker/Dockerfile").unwrap().is_some());
        assert!(c.get("target").unwrap().is_none(), "target/ is ignored");
        assert!(c.get(".git").unwrap().is_none(), ".git/ is ignored");
    }

    #[test]
    fn escapes_are_errors() {
        let (_d, c) = ctx();
        for bad in ["../x", "src/../../x", "escape"] {
            let e = c.resolve_source(bad).unwrap_err().to_string();
            assert!(e.contains("outside") || e.contains("absolute"), "{bad}: {e}");
        }
        // An absolute target resolves inside the context, as BuildKit does.
        assert!(c.resolve_source("absolute").unwrap().is_empty(), "no etc/passwd in the context");
        symlink("/src/a.txt", c.root().join("abs-in")).unwrap();
        let c = BuildContext::open(c.root()).unwrap();
        assert_eq!(paths(c.resolve_source("abs-in").unwrap()), vec!["src/a.txt"]);
        // A wildcard matching a link that leads nowhere in the context (here `/etc/passwd`,
        // resolved inside it) fails naming the link; it used to panic.
        let e = c.resolve_source("abs*").unwrap_err().to_string();
        assert!(e.contains("`absolute` -> `/etc/passwd` leads to nothing"), "{e}");
        assert!(c.check_inner_symlink("src/l", "../../../x").is_err());
        assert!(c.check_inner_symlink("src/l", "../link").is_ok());
    }
}
