//! Which context entries a COPY/ADD source stands for, with BuildKit's `--parents` and
//! `--exclude` (fsutil's copy with include and exclude patterns):
//!
//! - `--parents`: a source `a/b/*.txt` becomes the context root with the include pattern
//!   `a/b/*.txt`, so what it matches keeps its path under the destination; `x/./a/b` pivots:
//!   the root is `x`, the pattern `a/b`.
//! - `--exclude`: patterns (`.dockerignore` syntax: last match wins, `!` re-includes, a match
//!   covers everything below) matched against the paths *below* each source, never against
//!   the source itself (so `COPY --exclude=a.txt a.txt /d/` copies it, as BuildKit does).
//!
//! Below a directory source an entry is taken when it matches the include pattern (if any)
//! and no exclusion; the directories between the source and a taken entry that were not taken
//! themselves are taken too, with their own metadata (fsutil makes them on demand).
//! [`copy`](crate::copy) and the step key both walk sources through here, so the key hashes
//! exactly what the layer gets.

use std::collections::HashSet;

use ext_dockerfile::CopyOp;

use crate::context::{BuildContext, ContextEntry, EntryKind, Matched};
use crate::dockerignore::DockerIgnore;
use crate::error::{ExecError, Result};
use crate::paths::clean_clamped;

/// The include pattern of a `--parents` source.
#[derive(Debug)]
pub struct Include {
    matcher: DockerIgnore,
    /// The pattern's leading components without wildcards (its last component excepted):
    /// nothing outside this directory of the source can match, so the walk starts there.
    walk_from: String,
}

/// One COPY source, resolved.
pub struct Resolved<'a> {
    pub matches: Vec<Matched<'a>>,
    pub include: Option<Include>,
    /// The path that was resolved (for `--parents`, the root or pivot).
    pub resolved: String,
}

/// The `--exclude` patterns of a COPY, compiled once.
#[derive(Debug, Default)]
pub struct Exclude(Option<DockerIgnore>);

impl Exclude {
    pub fn new(op: &CopyOp) -> std::result::Result<Exclude, String> {
        if op.exclude.is_empty() {
            return Ok(Exclude(None));
        }
        DockerIgnore::from_patterns(&op.exclude).map(|m| Exclude((!m.is_empty()).then_some(m)))
    }
}

/// Resolves one source path of `op` in `context`.
pub fn resolve<'a>(op: &CopyOp, context: &'a BuildContext, source: &str) -> Result<Resolved<'a>> {
    if !op.parents {
        return Ok(Resolved { matches: context.resolve_source(source)?, include: None, resolved: source.to_string() });
    }
    // BuildKit: the text before the first `/./` is the root (else the context root), the rest
    // the pattern, made relative.
    let (root, pattern) = match source.split_once("/./") {
        Some((root, pattern)) => (if root.is_empty() { "/" } else { root }, pattern),
        None => ("/", source),
    };
    let pattern = clean_clamped(pattern);
    let include = if pattern.is_empty() {
        None
    } else {
        let matcher = DockerIgnore::from_patterns(&[pattern.as_str()])
            .map_err(|e| ExecError::Context { dir: context.root().to_path_buf(), message: e })?;
        let parts: Vec<&str> = pattern.split('/').collect();
        let literal = parts[..parts.len() - 1].iter().take_while(|c| !c.contains(['*', '?', '[', '\\'])).count();
        Some(Include { matcher, walk_from: parts[..literal].join("/") })
    };
    Ok(Resolved { matches: context.resolve_source(root)?, include, resolved: root.to_string() })
}

/// The entries below directory `dir` that a copy of it takes, in path order (parents first).
pub fn below<'a>(
    context: &'a BuildContext,
    dir: &'a ContextEntry,
    include: Option<&Include>,
    exclude: &Exclude,
) -> Result<Vec<&'a ContextEntry>> {
    let skip = if dir.path.is_empty() { 0 } else { dir.path.len() + 1 };
    let rel = |e: &'a ContextEntry| -> &'a str { &e.path[skip..] };
    if include.is_none() && exclude.0.is_none() {
        return Ok(context.children_of(&dir.path)?.collect());
    }
    let start: &'a str = match include {
        Some(Include { walk_from, .. }) if !walk_from.is_empty() => {
            // The walk does not follow symlinks (fsutil's Lstat): a prefix that is not a
            // directory of the context has nothing below it.
            match context.get(&join(&dir.path, walk_from))? {
                Some(e @ ContextEntry { kind: EntryKind::Dir, .. }) => &e.path,
                _ => return Ok(Vec::new()),
            }
        }
        _ => &dir.path,
    };
    let mut taken: Vec<&'a ContextEntry> = Vec::new();
    let mut taken_dirs: HashSet<&'a str> = HashSet::new();
    for e in context.children_of(start)? {
        let path = rel(e);
        let wanted = include.is_none_or(|i| i.matcher.is_ignored(path))
            && !exclude.0.as_ref().is_some_and(|x| x.is_ignored(path));
        if !wanted {
            continue;
        }
        // Directories on the way that were not taken themselves come first.
        let mut missing = Vec::new();
        let mut at = path;
        while let Some((parent, _)) = at.rsplit_once('/') {
            if taken_dirs.contains(parent) {
                break;
            }
            missing.push(parent);
            at = parent;
        }
        for parent in missing.into_iter().rev() {
            let entry = context.get(&join(&dir.path, parent))?.expect("a listed entry's parent is listed");
            taken_dirs.insert(rel(entry));
            taken.push(entry);
        }
        if e.kind == EntryKind::Dir {
            taken_dirs.insert(path);
        }
        taken.push(e);
    }
    Ok(taken)
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn context(files: &[&str]) -> (tempfile::TempDir, BuildContext) {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, f).unwrap();
        }
        let ctx = BuildContext::open(dir.path()).unwrap();
        (dir, ctx)
    }

    fn op(parents: bool, exclude: &[&str]) -> CopyOp {
        CopyOp { parents, exclude: exclude.iter().map(|s| s.to_string()).collect(), ..Default::default() }
    }

    /// What `source` copies, as paths relative to what it resolved to.
    fn taken(ctx: &BuildContext, op: &CopyOp, source: &str) -> Vec<String> {
        let r = resolve(op, ctx, source).unwrap();
        let exclude = Exclude::new(op).unwrap();
        let mut out = Vec::new();
        for m in &r.matches {
            if m.entry.kind != EntryKind::Dir {
                out.push(format!("={}", m.name));
                continue;
            }
            let skip = if m.entry.path.is_empty() { 0 } else { m.entry.path.len() + 1 };
            for e in below(ctx, m.entry, r.include.as_ref(), &exclude).unwrap() {
                out.push(e.path[skip..].to_string());
            }
        }
        out
    }

    #[test]
    fn parents_keep_the_path_from_the_root_or_the_pivot() {
        let (_d, ctx) = context(&["a/b/c.txt", "a/b/d.md", "a/e.txt", "x/y/z.txt", "top.txt"]);
        let p = op(true, &[]);
        assert_eq!(taken(&ctx, &p, "a/b/c.txt"), ["a", "a/b", "a/b/c.txt"]);
        assert_eq!(taken(&ctx, &p, "./a/*/*.txt"), ["a", "a/b", "a/b/c.txt"]);
        assert_eq!(taken(&ctx, &p, "a/b"), ["a", "a/b", "a/b/c.txt", "a/b/d.md"]);
        assert_eq!(taken(&ctx, &p, "*.txt"), ["top.txt"]);
        assert_eq!(taken(&ctx, &p, "x/./y/z.txt"), ["y", "y/z.txt"]);
        assert_eq!(taken(&ctx, &p, "a/b/nothing"), Vec::<String>::new());
        assert_eq!(taken(&ctx, &p, "nothing/x"), Vec::<String>::new());
    }

    #[test]
    fn excludes_match_below_each_source_only() {
        let (_d, ctx) = context(&["d/a.txt", "d/b.md", "d/sub/c.txt", "d/sub/keep.txt", "e.txt"]);
        let x = op(false, &["*.txt"]);
        assert_eq!(taken(&ctx, &x, "d"), ["b.md", "sub", "sub/c.txt", "sub/keep.txt"], "`*` stays in one level");
        assert_eq!(taken(&ctx, &op(false, &["**/*.txt"]), "d"), ["b.md", "sub"]);
        // The source itself is never excluded (BuildKit).
        assert_eq!(taken(&ctx, &x, "e.txt"), ["=e.txt"]);
        // An excluded directory whose child is re-included is still made, for the child.
        let re = op(false, &["sub", "!sub/keep.txt"]);
        assert_eq!(taken(&ctx, &re, "d"), ["a.txt", "b.md", "sub", "sub/keep.txt"]);
        // With --parents, excludes match the path from the root too.
        assert_eq!(taken(&ctx, &op(true, &["d/sub"]), "d"), ["d", "d/a.txt", "d/b.md"]);
    }
}
