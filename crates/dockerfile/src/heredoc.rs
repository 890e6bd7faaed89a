//! Here-documents in `RUN`, `COPY` and `ADD` (BuildKit's Dockerfile syntax), found before the
//! text reaches `parse-dockerfile`, which only knows a here-document that starts the command.
//!
//! Every `<<NAME` marker (`<<-NAME` strips leading tabs, a quoted name disables expansion) of
//! such an instruction line is replaced by a placeholder word, and its body and terminator
//! lines by blank lines, so the parser sees a plain instruction and line numbers stay right.
//! The front end then puts the markers back ([`restore`]) and hands the bodies on.

use crate::error::{DockerfileError, Location};

/// One here-document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HereDoc {
    /// The delimiter word, unquoted (COPY names the file after it).
    pub name: String,
    /// The marker as written (`<<-"EOF"`), for rebuilding a shell command.
    pub marker: String,
    /// The body lines, each with its newline, as written.
    pub body: String,
    /// False when any part of the delimiter was quoted.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body lines.
    pub chomp: bool,
}

impl HereDoc {
    /// The body as a file's content: leading tabs stripped for `<<-`.
    pub fn content(&self) -> String {
        if !self.chomp {
            return self.body.clone();
        }
        self.body.split_inclusive('\n').map(|l| l.trim_start_matches('\t')).collect()
    }
}

const PLACEHOLDER_PREFIX: &str = "__ext_extend_heredoc_";
const PLACEHOLDER_SUFFIX: &str = "__";

pub fn placeholder(n: usize) -> String {
    format!("{PLACEHOLDER_PREFIX}{n}{PLACEHOLDER_SUFFIX}")
}

/// The here-document a placeholder word stands for.
pub fn placeholder_index(word: &str) -> Option<usize> {
    word.strip_prefix(PLACEHOLDER_PREFIX)?.strip_suffix(PLACEHOLDER_SUFFIX)?.parse().ok()
}

/// Indices of the placeholders in `text`, in order.
pub fn placeholders_in(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(PLACEHOLDER_PREFIX) {
        rest = &rest[i + PLACEHOLDER_PREFIX.len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let (Ok(n), true) = (digits.parse(), rest[digits.len()..].starts_with(PLACEHOLDER_SUFFIX)) {
            out.push(n);
        }
    }
    out
}

/// `text` with every placeholder turned back into its marker.
pub fn restore(text: &str, docs: &[HereDoc]) -> String {
    let mut out = text.to_string();
    for n in placeholders_in(text) {
        if let Some(d) = docs.get(n) {
            out = out.replacen(&placeholder(n), &d.marker, 1);
        }
    }
    out
}

/// Takes the here-documents out of `text`: the text for the parser and the documents, in the
/// order of their placeholders.
pub fn extract(text: &str, file: &str) -> Result<(String, Vec<HereDoc>), DockerfileError> {
    let escape = escape_directive(text);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = String::with_capacity(text.len());
    let mut docs: Vec<HereDoc> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.trim().is_empty() || trimmed.starts_with('#') {
            out.push_str(lines[i]);
            i += 1;
            continue;
        }
        // The instruction's physical lines (continuations joined by the escape character).
        let start = i;
        while i < lines.len() && ends_with_escape(lines[i], escape) {
            i += 1;
        }
        let end = i.min(lines.len() - 1);
        i = end + 1;
        let keyword: String = trimmed.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
        if !matches!(keyword.to_ascii_uppercase().as_str(), "RUN" | "COPY" | "ADD") {
            lines[start..=end].iter().for_each(|l| out.push_str(l));
            continue;
        }
        let first_doc = docs.len();
        let mut quote: Option<char> = None;
        for (k, line) in lines[start..=end].iter().enumerate() {
            // Skip the keyword itself on the first line.
            let from = if k == 0 { line.len() - trimmed.len() + keyword.len() } else { 0 };
            out.push_str(&line[..from]);
            out.push_str(&replace_markers(&line[from..], escape, &mut quote, &mut docs));
        }
        // Bodies follow in marker order, each up to its delimiter line.
        for d in &mut docs[first_doc..] {
            loop {
                let Some(line) = lines.get(i) else {
                    return Err(DockerfileError::Syntax {
                        at: Location { file: file.into(), line: start + 1 },
                        message: format!("here-document `{}` has no terminating `{}` line", d.marker, d.name),
                    });
                };
                i += 1;
                out.push('\n');
                let content = line.strip_suffix('\n').unwrap_or(line);
                let content = content.strip_suffix('\r').unwrap_or(content);
                let content = if d.chomp { content.trim_start_matches('\t') } else { content };
                if content == d.name {
                    break;
                }
                d.body.push_str(line);
                if !line.ends_with('\n') {
                    d.body.push('\n');
                }
            }
        }
    }
    Ok((out, docs))
}

/// Replaces the unquoted `<<NAME` markers of one line (BuildKit: a word matching
/// `^\d*<<-?[^<]*$`) with placeholders, recording them in `docs`.
fn replace_markers(line: &str, escape: char, quote: &mut Option<char>, docs: &mut Vec<HereDoc>) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k];
        match *quote {
            Some(q) => {
                if c == q {
                    *quote = None;
                } else if c == escape && q == '"' && k + 1 < chars.len() {
                    out.push(c);
                    k += 1;
                    out.push(chars[k]);
                    k += 1;
                    continue;
                }
                out.push(c);
                k += 1;
                continue;
            }
            None if c == '\'' || c == '"' => {
                *quote = Some(c);
                out.push(c);
                k += 1;
                continue;
            }
            None if c == escape && k + 1 < chars.len() => {
                out.push(c);
                out.push(chars[k + 1]);
                k += 2;
                continue;
            }
            None => {}
        }
        // A marker starts a word, after an optional file descriptor number.
        let word_start = {
            let mut s = k;
            while s > 0 && chars[s - 1].is_ascii_digit() {
                s -= 1;
            }
            s == 0 || chars[s - 1].is_whitespace()
        };
        if c == '<'
            && word_start
            && chars.get(k + 1) == Some(&'<')
            && chars.get(k + 2) != Some(&'<')
            && let Some((doc, len)) = parse_marker(&chars[k..])
        {
            out.push_str(&placeholder(docs.len()));
            docs.push(doc);
            k += len;
            continue;
        }
        out.push(c);
        k += 1;
    }
    out
}

/// `<<[-][blanks]WORD` at the start of `chars`: the document (body still empty) and how many
/// characters the marker takes. The word may be quoted in parts; it must not contain `<`.
fn parse_marker(chars: &[char]) -> Option<(HereDoc, usize)> {
    let mut k = 2;
    let chomp = chars.get(k) == Some(&'-');
    if chomp {
        k += 1;
    }
    while chars.get(k).is_some_and(|c| *c == ' ' || *c == '\t') {
        k += 1;
    }
    let mut name = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    while let Some(&c) = chars.get(k) {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => name.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                quoted = true;
            }
            None if c.is_whitespace() => break,
            None => name.push(c),
        }
        k += 1;
    }
    if quote.is_some() || name.is_empty() || name.contains('<') {
        return None;
    }
    let marker: String = chars[..k].iter().collect();
    Some((HereDoc { name, marker, body: String::new(), expand: !quoted, chomp }, k))
}

fn ends_with_escape(line: &str, escape: char) -> bool {
    let t = line.trim_end();
    // A comment line inside a continuation does not end it.
    t.ends_with(escape) || (t.trim_start().starts_with('#') && !t.is_empty())
}

/// The `# escape=` parser directive's character (`\` without one).
fn escape_directive(text: &str) -> char {
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix('#') else { break };
        let Some((k, v)) = rest.split_once('=') else { break };
        if k.trim().eq_ignore_ascii_case("escape") {
            return v.trim().chars().next().unwrap_or('\\');
        }
    }
    '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(text: &str) -> (String, Vec<HereDoc>) {
        extract(text, "f").unwrap()
    }

    #[test]
    fn markers_become_placeholders_and_bodies_blank_lines() {
        let (text, docs) = ex("FROM x\nRUN cat <<EOF > /f && <<-'TWO' cat\nhello $X\nEOF\n\tsecond\n\tTWO\nUSER 1\n");
        assert_eq!(
            text,
            format!("FROM x\nRUN cat {} > /f && {} cat\n\n\n\n\nUSER 1\n", placeholder(0), placeholder(1))
        );
        assert_eq!(
            docs[0],
            HereDoc {
                name: "EOF".into(),
                marker: "<<EOF".into(),
                body: "hello $X\n".into(),
                expand: true,
                chomp: false
            }
        );
        assert_eq!(docs[1].name, "TWO");
        assert_eq!(docs[1].marker, "<<-'TWO'");
        assert!(!docs[1].expand && docs[1].chomp);
        assert_eq!(docs[1].body, "\tsecond\n");
        assert_eq!(docs[1].content(), "second\n");
        assert_eq!(restore(&text, &docs).lines().nth(1), Some("RUN cat <<EOF > /f && <<-'TWO' cat"));
    }

    #[test]
    fn not_markers() {
        for line in
            ["RUN echo \"a <<EOF\" 'b <<EOF'", "RUN cat <<<word", "RUN echo a<<b", "ENV A=<<EOF", "RUN echo \\<<EOF"]
        {
            let (text, docs) = ex(&format!("FROM x\n{line}\n"));
            assert!(docs.is_empty(), "{line}: {docs:?}");
            assert_eq!(text, format!("FROM x\n{line}\n"));
        }
    }

    #[test]
    fn continuations_fd_prefix_and_errors() {
        let (text, docs) =
            ex("FROM x\nCOPY <<a.txt \\\n  <<\"b.txt\" /d/\nA\na.txt\nB\nb.txt\nRUN 3<<X cat <&3\nx\nX\n");
        assert_eq!(docs.len(), 3);
        assert_eq!((docs[0].name.as_str(), docs[0].body.as_str()), ("a.txt", "A\n"));
        assert_eq!((docs[1].name.as_str(), docs[1].expand), ("b.txt", false));
        assert_eq!(docs[2].marker, "<<X");
        assert_eq!(text.lines().count(), 10);
        assert!(text.contains(&format!("RUN 3{} cat <&3", placeholder(2))));
        let e = extract("FROM x\nRUN <<EOF\nno end\n", "f").unwrap_err();
        assert_eq!(e.location().line, 2);
        assert!(e.to_string().contains("terminating `EOF`"), "{e}");
    }
}
