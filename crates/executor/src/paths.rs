//! Lexical path cleaning for image paths and build-context paths (`/`-separated strings).

/// Cleans a path lexically as a process inside the image sees it: `.` and empty components go,
/// `..` removes the previous component and stops at the root. The result has no leading `/`
/// (`/a/./b/../c` -> `a/c`, `/../x` -> `x`).
pub fn clean_clamped(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join("/")
}

/// Cleans a path relative to a root that must not be left (the build context): like
/// [`clean_clamped`], but `None` if `..` would climb above the root. A leading `/` means the
/// root, as Docker reads COPY sources.
pub fn clean_relative(p: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning() {
        assert_eq!(clean_clamped("/a/./b/../c/"), "a/c");
        assert_eq!(clean_clamped("/../../x"), "x");
        assert_eq!(clean_relative("a/../b"), Some("b".into()));
        assert_eq!(clean_relative("/src//x"), Some("src/x".into()));
        assert_eq!(clean_relative("a/../../b"), None);
    }
}
