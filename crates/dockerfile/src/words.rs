//! Lexical helpers the parser crate leaves to us: splitting `key=value` lists the way BuildKit's
//! `parseWords` does (quotes and escapes are kept in the words; expansion removes them later),
//! and joining the line continuations of a shell-form `RUN`.

/// Splits `text` on unquoted whitespace. Quotes and escape characters stay in the words, because
/// word expansion (which removes them) runs afterwards on each word.
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None if c == escape => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            None if c == '"' || c == '\'' => {
                quote = Some(c);
                word.push(c);
                in_word = true;
            }
            None => {
                word.push(c);
                in_word = true;
            }
            Some('"') if c == escape => {
                word.push(c);
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            Some(q) => {
                if c == q {
                    quote = None;
                }
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// One `name=value` pair of ENV, LABEL or ARG, still unexpanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPair {
    pub key: String,
    /// `None` for an ARG declared without a default.
    pub value: Option<String>,
}

/// Parses `ENV`/`LABEL` arguments: `k=v k2="v 2"` or the legacy single pair `k some value`.
pub fn parse_name_values(text: &str, escape: char, instruction: &str) -> Result<Vec<RawPair>, String> {
    let words = split_words(text, escape);
    let Some(first) = words.first() else {
        return Err(format!("{instruction} needs at least one argument"));
    };
    if !first.contains('=') {
        // Legacy form `ENV key value with spaces`: the value is the rest of the line, verbatim.
        let rest = text.trim_start()[first.len()..].trim();
        if rest.is_empty() {
            return Err(format!("{instruction} {first} needs a value (use {first}=value)"));
        }
        return Ok(vec![RawPair { key: first.clone(), value: Some(rest.to_string()) }]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(format!("{instruction} has an empty name in `{w}`")),
            Some((k, v)) => Ok(RawPair { key: k.to_string(), value: Some(v.to_string()) }),
            None => Err(format!("{instruction}: cannot find `=` in `{w}`; use the form name=value")),
        })
        .collect()
}

/// Parses `ARG name[=default] ...`.
pub fn parse_args(text: &str, escape: char) -> Result<Vec<RawPair>, String> {
    let words = split_words(text, escape);
    if words.is_empty() {
        return Err("ARG needs a name".into());
    }
    words
        .into_iter()
        .map(|w| {
            let (k, v) = match w.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (w, None),
            };
            if !is_name(&k) {
                return Err(format!("ARG name `{k}` is not a valid variable name"));
            }
            Ok(RawPair { key: k, value: v })
        })
        .collect()
}

/// A variable name as shells and BuildKit accept it.
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Joins the continuation lines of a shell-form `RUN` as BuildKit does: an escape character at
/// the end of a line joins it with the next one, and comment or empty lines inside the
/// continuation are dropped (the shell must never see them).
pub fn join_continuations(raw: &str, escape: char) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut lines = raw.split('\n').peekable();
    let mut continuing = false;
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if continuing {
            let trimmed = line.trim_start();
            if trimmed.starts_with('#') || trimmed.is_empty() {
                continue;
            }
        }
        match strip_trailing_escape(line, escape) {
            Some(body) => {
                out.push_str(body);
                continuing = true;
            }
            None => {
                out.push_str(line);
                continuing = false;
                if lines.peek().is_some() {
                    out.push('\n');
                }
            }
        }
    }
    out.trim().to_string()
}

/// `Some(line without the escape)` if the line ends with an unescaped escape character
/// (trailing whitespace after it is allowed, as in BuildKit).
fn strip_trailing_escape(line: &str, escape: char) -> Option<&str> {
    let trimmed = line.trim_end();
    let body = trimmed.strip_suffix(escape)?;
    // An even number of escapes before it means the last one is itself escaped.
    let preceding = body.chars().rev().take_while(|&c| c == escape).count();
    (preceding % 2 == 0).then_some(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_quotes_for_expansion() {
        assert_eq!(split_words(r#"a=1 b="two words" c='x y'"#, '\\'), vec!["a=1", r#"b="two words""#, "c='x y'"]);
        assert_eq!(split_words(r"a=x\ y b", '\\'), vec![r"a=x\ y", "b"]);
        assert_eq!(split_words("  a   b  ", '\\'), vec!["a", "b"]);
        assert_eq!(split_words(r#"a="x \" y" b"#, '\\'), vec![r#"a="x \" y""#, "b"]);
        assert!(split_words("   ", '\\').is_empty());
    }

    #[test]
    fn name_values_new_and_legacy_forms() {
        let p = parse_name_values(r#"A=1 B="two words""#, '\\', "ENV").unwrap();
        assert_eq!(p[0], RawPair { key: "A".into(), value: Some("1".into()) });
        assert_eq!(p[1], RawPair { key: "B".into(), value: Some(r#""two words""#.into()) });
        let legacy = parse_name_values("MY_VAR  hello   world", '\\', "ENV").unwrap();
        assert_eq!(legacy, vec![RawPair { key: "MY_VAR".into(), value: Some("hello   world".into()) }]);
        assert!(parse_name_values("A=1 B", '\\', "ENV").unwrap_err().contains("cannot find `=`"));
        assert!(parse_name_values("=1", '\\', "LABEL").unwrap_err().contains("empty name"));
        assert!(parse_name_values("ONLYKEY", '\\', "ENV").unwrap_err().contains("needs a value"));
    }

    #[test]
    fn args_with_and_without_defaults() {
        let a = parse_args("base_image build_id=0", '\\').unwrap();
        assert_eq!(a[0], RawPair { key: "base_image".into(), value: None });
        assert_eq!(a[1], RawPair { key: "build_id".into(), value: Some("0".into()) });
        assert!(parse_args("1bad", '\\').is_err());
    }

    #[test]
    fn continuation_drops_inner_comments() {
        let raw = "echo a \\\n  # inner comment\n\n  && echo b";
        assert_eq!(join_continuations(raw, '\\'), "echo a   && echo b");
        let tick = "echo a `\n  && echo b";
        assert_eq!(join_continuations(tick, '`'), "echo a   && echo b");
        // An escaped escape at the end of a line is not a continuation.
        assert_eq!(join_continuations("echo a\\\\", '\\'), "echo a\\\\");
        // Without a continuation, newlines stay (heredoc bodies, for example).
        assert_eq!(join_continuations("a\nb", '\\'), "a\nb");
    }
}
