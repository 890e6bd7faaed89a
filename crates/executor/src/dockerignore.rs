//! `.dockerignore` as Docker's pattern matcher reads it: one pattern per line, `#` comments,
//! paths relative to the context root (a leading `/` is dropped), `*`/`?` within one path
//! component, `**` across components, `!` re-includes, the last matching pattern wins, and a
//! pattern that matches a directory also matches everything below it.

use globset::{GlobBuilder, GlobMatcher};

use crate::paths::clean_clamped;

#[derive(Debug)]
struct Pattern {
    matcher: GlobMatcher,
    exclusion: bool,
}

impl Pattern {
    /// One pattern line; `None` for one that names nothing (such as `.`).
    fn new(raw: &str) -> Result<Option<Pattern>, globset::Error> {
        let line = raw.trim();
        let (exclusion, pat) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        // Like Go's `filepath.Clean`, relative to the context root.
        let cleaned = clean_clamped(pat);
        if cleaned.is_empty() {
            return Ok(None);
        }
        let matcher =
            GlobBuilder::new(&cleaned).literal_separator(true).backslash_escape(true).build()?.compile_matcher();
        Ok(Some(Pattern { matcher, exclusion }))
    }
}

#[derive(Debug, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> Result<DockerIgnore, String> {
        let lines = text.lines().enumerate().filter(|(_, raw)| {
            let line = raw.trim();
            !line.is_empty() && !line.starts_with('#')
        });
        let mut patterns = Vec::new();
        for (n, raw) in lines {
            if let Some(p) = Pattern::new(raw).map_err(|e| format!(".dockerignore line {}: `{raw}`: {e}", n + 1))? {
                patterns.push(p);
            }
        }
        Ok(DockerIgnore { patterns })
    }

    /// A matcher for patterns given one by one (`COPY --exclude`), with the same syntax as
    /// the lines of a `.dockerignore` (no comments).
    pub fn from_patterns<S: AsRef<str>>(given: &[S]) -> Result<DockerIgnore, String> {
        let mut patterns = Vec::new();
        for raw in given {
            let raw = raw.as_ref();
            if let Some(p) = Pattern::new(raw).map_err(|e| format!("`{raw}`: {e}"))? {
                patterns.push(p);
            }
        }
        Ok(DockerIgnore { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether any pattern re-includes paths; then excluded directories must still be walked.
    pub fn has_exclusions(&self) -> bool {
        self.patterns.iter().any(|p| p.exclusion)
    }

    /// Whether `path` (relative, `/`-separated) is ignored.
    pub fn is_ignored(&self, path: &str) -> bool {
        let mut ignored = false;
        for p in &self.patterns {
            if p.exclusion != ignored {
                // This pattern could not change the verdict.
                continue;
            }
            if p.matcher.is_match(path) || parents(path).any(|parent| p.matcher.is_match(parent)) {
                ignored = !p.exclusion;
            }
        }
        ignored
    }
}

fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_semantics() {
        let di = DockerIgnore::parse("# comment\n*.log\n/build\n!build/keep.txt\ndocs/**/*.md\n**/secret\n  tmp?  \n")
            .unwrap();
        let cases = [
            ("a.log", true),
            ("dir/a.log", false), // `*` does not cross `/`
            ("build", true),
            ("build/out.bin", true),   // below an ignored directory
            ("build/keep.txt", false), // re-included
            ("docs/x.md", true),
            ("docs/a/b/x.md", true),
            ("docs/x.txt", false),
            ("secret", true),
            ("deep/er/secret", true),
            ("deep/er/secret/file", true),
            ("tmp1", true),
            ("tmp12", false),
            ("keep.txt", false),
        ];
        for (path, want) in cases {
            assert_eq!(di.is_ignored(path), want, "{path}");
        }
        assert!(di.has_exclusions());
    }

    #[test]
    fn last_match_wins() {
        let di = DockerIgnore::parse("*\n!src\nsrc/gen\n").unwrap();
        assert!(di.is_ignored("README"));
        assert!(!di.is_ignored("src/main.rs"));
        assert!(di.is_ignored("src/gen/x.rs"));
    }
}
