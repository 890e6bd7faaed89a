//! Dockerfile word expansion (the "shell lexer").
//!
//! This module reproduces the behaviour of BuildKit's Dockerfile shell lexer
//! (`frontend/dockerfile/shell/lex.go` in moby/buildkit): quote removal,
//! escape processing and variable substitution for instruction arguments.
//! It is *not* a POSIX shell: there is no command substitution, no
//! arithmetic, no tilde or glob expansion, and only the parameter expansion
//! forms that BuildKit understands:
//!
//! | form | result |
//! | --- | --- |
//! | `$VAR`, `${VAR}` | value, or `""` when unset |
//! | `${VAR:-word}` / `${VAR-word}` | `word` when unset or empty / when unset |
//! | `${VAR:+word}` / `${VAR+word}` | `word` when set and non-empty / when set |
//! | `${VAR:?msg}` / `${VAR?msg}` | error when unset or empty / when unset |
//! | `${VAR#pat}` / `${VAR##pat}` | strip shortest / longest matching prefix |
//! | `${VAR%pat}` / `${VAR%%pat}` | strip shortest / longest matching suffix |
//! | `${VAR/pat/repl}` / `${VAR//pat/repl}` | replace first / every match |
//!
//! The `word` of a modifier is itself expanded, always (even when the value
//! of the variable makes it unnecessary, exactly like BuildKit, so an error
//! inside an unused default is still reported).
//!
//! Patterns support `*` (any string), `?` (any single character) and the
//! escapes `\*`, `\?`, `\\` (plus `\}` and `\/`, which just protect the
//! closing brace / separator). Like BuildKit, bracket expressions (`[...]`)
//! are **not** supported: `[` and `]` match themselves. Wildcards do not
//! match a newline (BuildKit compiles patterns to Go regular expressions, in
//! which `.` excludes `\n`).
//!
//! Names are read like BuildKit does: a run of letters, digits and `_`; a
//! name starting with a digit is a positional parameter (all following
//! digits belong to it, `$12x` is `$12` then `x`); one of `@ * # ? - $ !`
//! is a special parameter of one character. Positional and special
//! parameters are looked up like any other name (so they are normally unset
//! and expand to `""`). A `$` not followed by a name (`$.`, `$/`, `$ `, `$`
//! at the end) stays a literal `$`.
//!
//! Known differences from BuildKit (dockerfile/1.10 and later):
//! - In [`ShellLex::process_words`], the text before a modifier form in the
//!   same word is kept (`80${P:-80}/tcp` gives `8080/tcp`). BuildKit drops
//!   it (`80/tcp`) because its nested expansions reset a shared word
//!   buffer; earlier BuildKit versions kept it.
//! - `${NAME` cut off right after the name is reported as a missing `}`
//!   rather than BuildKit's "unsupported modifier (\u{FFFD})".
//! - A pattern ending in a lone `\` reports "invalid escape '\' at the end
//!   of the pattern" (BuildKit prints the EOF rune).
//! - Go's `unicode.IsLetter` / `unicode.IsDigit`, used for names, are
//!   approximated with `char::is_alphabetic` / `char::is_numeric` outside
//!   ASCII.
//! - BuildKit's lexer options `RawQuotes`, `RawEscapes`, `SkipUnsetEnv` and
//!   `SkipProcessQuotes` are not offered.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// How deeply `${...}` forms may nest (`${a:-${b:-...}}`). BuildKit has no limit (Go stacks
/// grow to 1 GB); a recursive expander needs one, and no real Dockerfile comes near it.
pub const MAX_NESTING: usize = 64;

/// The longest result one word may expand to, in bytes. Docker has no such limit, but no word
/// of a real Dockerfile comes near it, and without one a few lines of `ARG L2=${L1}${L1}`
/// reach gigabytes.
pub const MAX_WORD_BYTES: usize = 1 << 20;

/// How many steps a `#`, `%` or `/` pattern may take to match one value: patterns with several
/// `*` on a long value are quadratic or worse, so their cost is bounded rather than their size.
pub const MAX_PATTERN_STEPS: usize = 20_000_000;

/// Where variable values come from. Unset variables expand to "".
pub trait VarLookup {
    /// The value of `name`, or `None` when the variable is not set.
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl VarLookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl<S: std::hash::BuildHasher> VarLookup for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

/// A list of `(name, value)` pairs; when a name occurs more than once, the
/// last occurrence wins (like a process environment built from a list).
impl VarLookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Same as the slice implementation: the last occurrence of a name wins.
impl VarLookup for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

impl<T: VarLookup + ?Sized> VarLookup for &T {
    fn lookup(&self, name: &str) -> Option<&str> {
        (**self).lookup(name)
    }
}

/// An error while expanding a word. The messages are BuildKit's; BuildKit
/// additionally prefixes them with `failed to process "<word>": `, which a
/// caller can add when reporting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// A `'` without its closing `'`.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// A `"` without its closing `"`.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// A `${` without its closing `}`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// A `${VAR/pattern` without the `/` that ends the pattern.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{...}`, `${:...}` and the like.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// An operator that is not supported after the name, e.g. `${VAR:=x}`,
    /// `${VAR:#x}`, `${VAR.}`, `${#VAR}`.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${VAR?msg}` / `${VAR:?msg}` on an unset (or empty) variable. The
    /// message is the expanded `msg`, or BuildKit's default
    /// (`is not allowed to be unset` / `is not allowed to be empty`).
    #[error("{name}: {message}")]
    Required {
        /// The variable's name.
        name: String,
        /// The (expanded) message.
        message: String,
    },
    /// `${` forms nested deeper than [`MAX_NESTING`].
    #[error("`${{...}}` nested more than {MAX_NESTING} levels deep")]
    TooDeep,
    /// A result longer than [`MAX_WORD_BYTES`].
    #[error("the expansion is longer than {} MiB", MAX_WORD_BYTES >> 20)]
    TooLong,
    /// A pattern whose match would take more than [`MAX_PATTERN_STEPS`].
    #[error("the pattern `{pattern}` is too costly to match against a value of {chars} characters")]
    PatternTooCostly {
        /// The pattern after expansion.
        pattern: String,
        /// The length of the value it is matched against.
        chars: usize,
    },
    /// A pattern of `#`, `%` or `/` with an invalid escape, e.g. `\x`.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        /// The pattern after expansion.
        pattern: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// The full result of expanding one word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessedWord {
    /// The expanded word.
    pub result: String,
    /// Names that were looked up and were set (BuildKit's `Matched`).
    pub matched: BTreeSet<String>,
    /// Names that were looked up and were not set (BuildKit's `Unmatched`).
    pub unmatched: BTreeSet<String>,
}

/// The Dockerfile word expander.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLex {
    escape: char,
}

impl Default for ShellLex {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl ShellLex {
    /// A lexer whose escape character is `escape`: `'\\'` by default, or
    /// `` '`' `` from the `# escape=` parser directive.
    pub fn new(escape: char) -> Self {
        Self { escape }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expand one word: quotes are removed, escapes processed, variables
    /// substituted. Whitespace is kept.
    pub fn process_word(&self, word: &str, vars: &dyn VarLookup) -> Result<String, ExpandError> {
        let mut st = State::new(self.escape, word, vars);
        st.process_top(false).map(|(s, _)| s)
    }

    /// Expand and split into words on unquoted whitespace, like BuildKit's
    /// `ProcessWords` (used there for `EXPOSE` and heredoc markers).
    ///
    /// Whitespace produced by an unquoted variable splits words too;
    /// whitespace inside quotes or escaped with the escape character does
    /// not. As in BuildKit, a word whose expansion is empty is dropped,
    /// even when it was quoted: `""` gives no word, and `a "" b` gives
    /// `["a", "b"]`. `<<` plus the blanks after it stays attached to the
    /// next word (heredoc marker handling).
    pub fn process_words(&self, word: &str, vars: &dyn VarLookup) -> Result<Vec<String>, ExpandError> {
        let mut st = State::new(self.escape, word, vars);
        st.process_top(true).map(|(_, w)| w)
    }

    /// Like [`process_word`](Self::process_word), but also returns the names
    /// of the variables that were referenced *and set* (BuildKit's
    /// `Matched` set, which is what marks a build argument as used). See
    /// [`process_word_detailed`](Self::process_word_detailed) for the names
    /// that were referenced but unset as well.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        vars: &dyn VarLookup,
    ) -> Result<(String, BTreeSet<String>), ExpandError> {
        let r = self.process_word_detailed(word, vars)?;
        Ok((r.result, r.matched))
    }

    /// Expand one word and report both the referenced names that were set
    /// and those that were not (for "undefined variable" diagnostics).
    pub fn process_word_detailed(&self, word: &str, vars: &dyn VarLookup) -> Result<ProcessedWord, ExpandError> {
        let mut st = State::new(self.escape, word, vars);
        let (result, _) = st.process_top(false)?;
        Ok(ProcessedWord { result, matched: st.matched, unmatched: st.unmatched })
    }
}

/// Accumulates the words of `process_words`.
#[derive(Default)]
struct Splitter {
    words: Vec<String>,
    buf: String,
    in_word: bool,
}

impl Splitter {
    /// A character that splits words when it is whitespace.
    fn add_char(&mut self, c: char) {
        if c.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    /// A character that is part of the current word whatever it is.
    fn add_raw_char(&mut self, c: char) {
        self.buf.push(c);
        self.in_word = true;
    }

    fn add_str(&mut self, s: &str) {
        s.chars().for_each(|c| self.add_char(c));
    }

    fn add_raw_str(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(self.buf);
        }
        self.words
    }
}

/// The state of the expansion of one word.
struct State<'a> {
    escape: char,
    chars: Vec<char>,
    pos: usize,
    vars: &'a dyn VarLookup,
    /// Keep escape characters in the output (pattern and replacement words
    /// of `#`, `%` and `/`, which the pattern compiler unescapes itself).
    raw_escapes: bool,
    /// How many `${` forms enclose the current position.
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> State<'a> {
    fn new(escape: char, word: &str, vars: &'a dyn VarLookup) -> Self {
        Self {
            escape,
            chars: word.chars().collect(),
            pos: 0,
            vars,
            raw_escapes: false,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next_char(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn process_top(&mut self, split: bool) -> Result<(String, Vec<String>), ExpandError> {
        self.process_until(None, false, split)
    }

    /// Process up to the end of the input, or up to and including `stop`.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        split: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let r = self.process_until_inner(stop, split);
        self.raw_escapes = saved;
        r
    }

    fn process_until_inner(&mut self, stop: Option<char>, split: bool) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Splitter::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.pos += 1;
                return Ok((result, if split { words.finish() } else { Vec::new() }));
            }
            match ch {
                '$' => {
                    let v = self.process_dollar()?;
                    check_len(result.len() + v.len())?;
                    if split {
                        words.add_str(&v);
                    }
                    result.push_str(&v);
                }
                '\'' | '"' | '<' => {
                    let v = match ch {
                        '\'' => self.process_single_quote()?,
                        '"' => self.process_double_quote()?,
                        _ => self.process_possible_heredoc(),
                    };
                    if split {
                        words.add_raw_str(&v);
                    }
                    result.push_str(&v);
                }
                _ => {
                    self.pos += 1;
                    if ch == self.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next character;
                        // a lone one at the very end is dropped.
                        let Some(escaped) = self.next_char() else {
                            break;
                        };
                        words.add_raw_char(escaped);
                        result.push(escaped);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        match stop {
            None => Ok((result, if split { words.finish() } else { Vec::new() })),
            Some('/') => Err(ExpandError::MissingSlash),
            Some(_) => Err(ExpandError::MissingBrace),
        }
    }

    /// Everything up to the next `'` is literal; there is no escape.
    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next_char() {
                None => return Err(ExpandError::UnterminatedSingleQuote),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    /// `$` expands; the escape character escapes `"`, `$` and itself and is
    /// kept before anything else.
    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(ExpandError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    check_len(out.len() + v.len())?;
                    out.push_str(&v);
                }
                Some(mut c) => {
                    self.pos += 1;
                    if c == self.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            // The error for the missing quote comes next.
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.escape => {
                                self.pos += 1;
                                c = n;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// `<<` and the blanks after it form one unit, so that a heredoc marker
    /// written as `<< EOF` stays one word.
    fn process_possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".to_string();
        }
        self.pos += 1;
        let mut out = "<<".to_string();
        while let Some(c @ (' ' | '\t' | '\r')) = self.peek() {
            out.push(c);
            self.pos += 1;
        }
        out
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        let vars = self.vars;
        match vars.lookup(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Read a name: a positional parameter (digits), a one-character special
    /// parameter, or letters, digits and `_`. May be empty.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && is_special_param(c) {
                self.pos += 1;
                return c.to_string();
            }
            if !is_letter(c) && !is_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        self.pos += 1; // '$'
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.get_env(&name).unwrap_or_default());
        }
        self.pos += 1; // '{'
        if self.depth >= MAX_NESTING {
            return Err(ExpandError::TooDeep);
        }
        self.depth += 1;
        let r = self.process_braced();
        self.depth -= 1;
        r
    }

    /// The rest of a `${...}` form, after the `{`.
    fn process_braced(&mut self) -> Result<String, ExpandError> {
        match self.peek() {
            None => return Err(ExpandError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ExpandError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.process_name();
        let Some(ch) = self.next_char() else {
            // BuildKit reports this as an unsupported modifier of the EOF
            // rune; the missing brace is what is meant.
            return Err(ExpandError::MissingBrace);
        };
        match ch {
            '}' => Ok(self.get_env(&name).unwrap_or_default()),
            ':' | '+' | '-' | '?' | '#' | '%' => {
                let (null_is_unset, op) = if ch == ':' { (true, self.next_char()) } else { (false, Some(ch)) };
                let modifier = match (null_is_unset, op) {
                    (true, Some(op)) => format!(":{op}"),
                    (true, None) => ":".to_string(),
                    (false, _) => ch.to_string(),
                };
                let pattern_op = matches!(op, Some('#' | '%'));
                if null_is_unset && pattern_op {
                    return Err(ExpandError::UnsupportedModifier(modifier));
                }
                let word = self.process_nested(Some('}'), pattern_op, ExpandError::MissingBrace)?;
                let value = self.get_env(&name);
                match op {
                    Some('-') => Ok(match value {
                        Some(v) if !(null_is_unset && v.is_empty()) => v,
                        _ => word,
                    }),
                    Some('+') => Ok(match value {
                        Some(v) if !(null_is_unset && v.is_empty()) => word,
                        _ => String::new(),
                    }),
                    Some('?') => match value {
                        None => Err(required(name, word, "is not allowed to be unset")),
                        Some(v) if null_is_unset && v.is_empty() => {
                            Err(required(name, word, "is not allowed to be empty"))
                        }
                        Some(v) => Ok(v),
                    },
                    Some(op @ ('#' | '%')) => {
                        let value = value.unwrap_or_default();
                        // A doubled operator (`##`, `%%`) asks for the longest
                        // match. Like BuildKit, this is decided after the
                        // expansion of the pattern.
                        let (greedy, pattern) = match word.strip_prefix(op) {
                            Some(rest) => (true, rest),
                            None => (false, word.as_str()),
                        };
                        if op == '%' {
                            trim_suffix(pattern, &value, greedy)
                        } else {
                            trim_prefix(pattern, &value, greedy)
                        }
                    }
                    _ => Err(ExpandError::UnsupportedModifier(modifier)),
                }
            }
            '/' => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let pattern = self.process_nested(Some('/'), true, ExpandError::MissingSlash)?;
                let replacement = self.process_nested(Some('}'), true, ExpandError::MissingBrace)?;
                let value = self.get_env(&name).unwrap_or_default();
                let compiled = Pattern::compile(&pattern, true)?;
                let text: Vec<char> = value.chars().collect();
                if replace_all {
                    replace_all_matches(&compiled, &pattern, &text, &replacement)
                } else {
                    Ok(match compiled.find(&pattern, &text)? {
                        Some((start, end)) => {
                            let mut out: String = text[..start].iter().collect();
                            out.push_str(&replacement);
                            out.extend(&text[end..]);
                            check_len(out.len())?;
                            out
                        }
                        None => value,
                    })
                }
            }
            other => Err(ExpandError::UnsupportedModifier(other.to_string())),
        }
    }

    /// Process the word of a modifier. An error hit at the end of the input
    /// is reported as the missing terminator (as BuildKit does).
    fn process_nested(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
        at_end: ExpandError,
    ) -> Result<String, ExpandError> {
        match self.process_until(stop, raw_escapes, false) {
            Ok((word, _)) => Ok(word),
            Err(e) if e.is_limit() => Err(e),
            Err(_) if self.at_end() => Err(at_end),
            Err(e) => Err(e),
        }
    }
}

impl ExpandError {
    /// Whether the error is one of the resource limits (nesting, length, pattern cost) rather
    /// than a syntax error of the word.
    pub fn is_limit(&self) -> bool {
        matches!(self, ExpandError::TooDeep | ExpandError::TooLong | ExpandError::PatternTooCostly { .. })
    }
}

fn check_len(len: usize) -> Result<(), ExpandError> {
    if len > MAX_WORD_BYTES { Err(ExpandError::TooLong) } else { Ok(()) }
}

fn required(name: String, word: String, default: &str) -> ExpandError {
    let message = if word.is_empty() { default.to_string() } else { word };
    ExpandError::Required { name, message }
}

/// Go's `unicode.IsDigit` (approximated with `char::is_numeric` outside
/// ASCII).
fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// Go's `unicode.IsLetter` (approximated with `char::is_alphabetic` outside
/// ASCII).
fn is_letter(c: char) -> bool {
    c.is_ascii_alphabetic() || (!c.is_ascii() && c.is_alphabetic())
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// One element of a compiled shell pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Characters that match themselves.
    Literal(Vec<char>),
    /// `?`: one character (not a newline).
    Any,
    /// `*`: any run of characters (without newlines).
    Star,
}

/// A shell pattern with leftmost-first (Perl/Go regexp) match semantics.
#[derive(Debug)]
struct Pattern {
    tokens: Vec<Token>,
    /// `*` prefers the longest run (otherwise the shortest).
    greedy: bool,
}

impl Pattern {
    fn compile(pattern: &str, greedy: bool) -> Result<Self, ExpandError> {
        let mut tokens: Vec<Token> = Vec::new();
        let push_lit = |tokens: &mut Vec<Token>, c: char| match tokens.last_mut() {
            Some(Token::Literal(l)) => l.push(c),
            _ => tokens.push(Token::Literal(vec![c])),
        };
        let mut it = pattern.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::Any),
                '\\' => {
                    // `\}` and `\/` only protect the terminators of `${}`;
                    // the backslash is not part of the pattern.
                    if matches!(it.peek(), Some('}' | '/')) {
                        continue;
                    }
                    match it.next() {
                        Some(e @ ('*' | '?' | '\\')) => push_lit(&mut tokens, e),
                        other => {
                            let reason = match other {
                                Some(c) => format!("invalid escape '\\{c}'"),
                                None => "invalid escape '\\' at the end of the pattern".into(),
                            };
                            return Err(ExpandError::InvalidPattern { pattern: pattern.to_string(), reason });
                        }
                    }
                }
                c => push_lit(&mut tokens, c),
            }
        }
        // The matcher recurses once per token.
        if tokens.len() > MAX_PATTERN_TOKENS {
            return Err(ExpandError::PatternTooCostly { pattern: pattern.to_string(), chars: 0 });
        }
        Ok(Self { tokens, greedy })
    }

    /// The end of the preferred match of the whole pattern starting at
    /// `start`, if any.
    fn match_at(&self, text: &[char], start: usize, memo: &mut Memo) -> Option<usize> {
        self.match_from(0, text, start, memo)
    }

    fn match_from(&self, ti: usize, text: &[char], pos: usize, memo: &mut Memo) -> Option<usize> {
        let Some(token) = self.tokens.get(ti) else {
            return Some(pos);
        };
        if memo.steps_left == 0 {
            return None;
        }
        memo.steps_left -= 1;
        let key = ti * (text.len() + 1) + pos;
        match memo.cells[key] {
            UNKNOWN => {}
            NO_MATCH => return None,
            end => return Some(end as usize),
        }
        let found = match token {
            Token::Literal(lit) => {
                let end = pos + lit.len();
                if end <= text.len() && text[pos..end] == lit[..] {
                    self.match_from(ti + 1, text, end, memo)
                } else {
                    None
                }
            }
            Token::Any => match text.get(pos) {
                Some(&c) if c != '\n' => self.match_from(ti + 1, text, pos + 1, memo),
                _ => None,
            },
            Token::Star => {
                let max = text[pos..].iter().take_while(|&&c| c != '\n').count();
                memo.steps_left = memo.steps_left.saturating_sub(max);
                if self.greedy {
                    (0..=max).rev().find_map(|k| self.match_from(ti + 1, text, pos + k, memo))
                } else {
                    (0..=max).find_map(|k| self.match_from(ti + 1, text, pos + k, memo))
                }
            }
        };
        if memo.steps_left > 0 {
            memo.cells[key] = found.map_or(NO_MATCH, |e| e as u32);
        }
        found
    }

    /// A fresh memo for matching against `text`, or an error when the table or the work would
    /// exceed the bounds.
    fn memo(&self, pattern: &str, text: &[char]) -> Result<Memo, ExpandError> {
        let cells = self.tokens.len().saturating_mul(text.len() + 1);
        if cells > MAX_PATTERN_CELLS {
            return Err(ExpandError::PatternTooCostly { pattern: pattern.to_string(), chars: text.len() });
        }
        Ok(Memo { cells: vec![UNKNOWN; cells], steps_left: MAX_PATTERN_STEPS })
    }

    /// The leftmost match at or after `from`.
    fn find_from(&self, text: &[char], from: usize, memo: &mut Memo) -> Option<(usize, usize)> {
        (from..=text.len()).find_map(|s| self.match_at(text, s, memo).map(|e| (s, e)))
    }

    fn find(&self, pattern: &str, text: &[char]) -> Result<Option<(usize, usize)>, ExpandError> {
        let mut memo = self.memo(pattern, text)?;
        let found = self.find_from(text, 0, &mut memo);
        memo.check(pattern, text)?;
        Ok(found)
    }
}

/// The largest memo table (4 bytes a cell) of one match.
const MAX_PATTERN_CELLS: usize = 1 << 22;

/// The most tokens a pattern may have (the matcher recurses once per token; runs of literal
/// characters count as one).
const MAX_PATTERN_TOKENS: usize = 256;

/// For each (token index, text position): the end of the preferred match of
/// the rest of the pattern from there, [`NO_MATCH`] or [`UNKNOWN`] (not
/// computed yet); plus the steps left before the match is given up.
struct Memo {
    cells: Vec<u32>,
    steps_left: usize,
}

impl Memo {
    /// An error when the match ran out of steps (its result is then meaningless).
    fn check(&self, pattern: &str, text: &[char]) -> Result<(), ExpandError> {
        if self.steps_left == 0 {
            Err(ExpandError::PatternTooCostly { pattern: pattern.to_string(), chars: text.len() })
        } else {
            Ok(())
        }
    }
}
const UNKNOWN: u32 = u32::MAX;
const NO_MATCH: u32 = u32::MAX - 1;

/// `${VAR#pattern}` / `${VAR##pattern}`.
fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let compiled = Pattern::compile(pattern, greedy)?;
    let text: Vec<char> = value.chars().collect();
    let mut memo = compiled.memo(pattern, &text)?;
    let found = compiled.match_at(&text, 0, &mut memo);
    memo.check(pattern, &text)?;
    Ok(match found {
        Some(end) => text[end..].iter().collect(),
        None => value.to_string(),
    })
}

/// `${VAR%pattern}` / `${VAR%%pattern}`: a prefix trim of the reversed
/// value with the reversed pattern (escape pairs keep their order).
fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverse a pattern, keeping each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut units: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() { 2 } else { 1 };
        units.push(&chars[i..i + len]);
        i += len;
    }
    units.iter().rev().flat_map(|u| u.iter()).collect()
}

/// `${VAR//pattern/replacement}`: Go's `Regexp.ReplaceAllString`, including
/// its handling of empty matches and of `$` in the replacement (`$0` or
/// `${0}` is the match, `$$` a `$`, other references are empty).
fn replace_all_matches(
    pattern: &Pattern,
    pattern_text: &str,
    text: &[char],
    replacement: &str,
) -> Result<String, ExpandError> {
    let mut memo = pattern.memo(pattern_text, text)?;
    let mut out = String::new();
    let mut last_end = 0;
    let mut search = 0;
    while search <= text.len() {
        let Some((start, end)) = pattern.find_from(text, search, &mut memo) else {
            break;
        };
        out.extend(&text[last_end..start]);
        // No replacement for an empty match right after the previous match.
        if end > last_end || start == 0 {
            expand_template(&mut out, replacement, &text[start..end]);
        }
        check_len(out.len())?;
        last_end = end;
        search = if search + 1 > end { search + 1 } else { end };
    }
    memo.check(pattern_text, text)?;
    out.extend(&text[last_end..]);
    check_len(out.len())?;
    Ok(out)
}

/// Go's `Regexp.Expand` for a pattern without groups.
fn expand_template(out: &mut String, template: &str, whole: &[char]) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match extract_reference(rest) {
            None => out.push('$'),
            Some((name, after)) => {
                if name == "0" {
                    out.extend(whole);
                }
                rest = after;
            }
        }
    }
    out.push_str(rest);
}

/// Go's `regexp.extract`: the name in a leading `name` or `{name}`, and the
/// text after it. Only the name is returned: a pattern without groups has
/// only group 0, i.e. the name `0` (`00` is not a number for Go).
fn extract_reference(s: &str) -> Option<(&str, &str)> {
    let (body, brace) = match s.strip_prefix('{') {
        Some(b) => (b, true),
        None => (s, false),
    };
    let len: usize = body.chars().take_while(|&c| is_letter(c) || is_digit(c) || c == '_').map(char::len_utf8).sum();
    if len == 0 {
        return None;
    }
    let name = &body[..len];
    let mut after = &body[len..];
    if brace {
        after = after.strip_prefix('}')?;
    }
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// BuildKit's envVarTest environment.
    fn base_env() -> Vec<(String, String)> {
        env(&[("PWD", "/home"), ("SHELL", "bash"), ("KOREAN", "한국어"), ("NULL", "")])
    }

    /// `Ok(expected)` or `Err(())` for "some error".
    type Expect = Result<&'static str, ()>;

    fn check_words(lex: ShellLex, cases: &[(&str, Expect)], vars: &dyn VarLookup) -> usize {
        let mut failures = Vec::new();
        for (input, expected) in cases {
            let got = lex.process_word(input, vars);
            let ok = match (expected, &got) {
                (Ok(e), Ok(g)) => e == g,
                (Err(()), Err(_)) => true,
                _ => false,
            };
            if !ok {
                failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
        cases.len()
    }

    #[test]
    fn quotes_and_escapes() {
        let cases: &[(&str, Expect)] = &[
            ("hello", Ok("hello")),
            ("he'll'o", Ok("hello")),
            ("he'llo", Err(())),
            ("he\\'llo", Ok("he'llo")),
            ("he\\\\'llo", Err(())),
            ("abc\\tdef", Ok("abctdef")),
            ("\"abc\\tdef\"", Ok("abc\\tdef")),
            ("\"abc\\\\tdef\"", Ok("abc\\tdef")),
            ("'abc\\tdef'", Ok("abc\\tdef")),
            // A lone escape at the end is dropped.
            ("hello\\", Ok("hello")),
            ("hello\\\\", Ok("hello\\")),
            ("\"hello", Err(())),
            ("\"hello\\\"", Err(())),
            ("\"hel'lo\"", Ok("hel'lo")),
            ("'hello", Err(())),
            ("'hello\\'", Ok("hello\\")),
            ("'hello\\\\there'", Ok("hello\\\\there")),
            ("\"''\"", Ok("''")),
            ("'\"hello\"'", Ok("\"hello\"")),
            ("a\\ b", Ok("a b")),
            ("  a  b  ", Ok("  a  b  ")),
            ("\"a\\\"b\"", Ok("a\"b")),
            ("\"\\`x\"", Ok("\\`x")),
            ("안'녕'하세요", Ok("안녕하세요")),
            ("안녕\\'하세요", Ok("안녕'하세요")),
            ("\"안녕\\t하세요\"", Ok("안녕\\t하세요")),
            // `<` is not special for a single word.
            ("cat <<EOF", Ok("cat <<EOF")),
            ("a<b", Ok("a<b")),
        ];
        check_words(ShellLex::new('\\'), cases, &base_env());
    }

    #[test]
    fn simple_variables() {
        let cases: &[(&str, Expect)] = &[
            ("$.", Ok("$.")),
            ("he$.x", Ok("he$.x")),
            ("$", Ok("$")),
            ("a$", Ok("a$")),
            ("$ x", Ok("$ x")),
            ("$/x", Ok("$/x")),
            ("he$pwd.", Ok("he.")),
            ("he$PWD", Ok("he/home")),
            ("he$PWD.x", Ok("he/home.x")),
            ("$PWD$SHELL", Ok("/homebash")),
            ("$PWDx", Ok("")),
            ("he\\$PWD", Ok("he$PWD")),
            ("he\\\\$PWD", Ok("he\\/home")),
            ("\"he\\$PWD\"", Ok("he$PWD")),
            ("\"he\\\\$PWD\"", Ok("he\\/home")),
            ("'he\\$PWD'", Ok("he\\$PWD")),
            ("\\${}", Ok("${}")),
            ("\\${}aaa", Ok("${}aaa")),
            ("he${hi}xx", Ok("hexx")),
            ("he${PWD}", Ok("he/home")),
            ("'he${XX}'", Ok("he${XX}")),
            ("'$PWD'", Ok("$PWD")),
            ("\"he'$PWD'\"", Ok("he'/home'")),
            ("\"$PWD\"", Ok("/home")),
            ("\"$\"", Ok("$")),
            ("\"a $ b\"", Ok("a $ b")),
            ("$KOREAN", Ok("한국어")),
            ("안녕$KOREAN", Ok("안녕한국어")),
            // Letters outside ASCII are part of a name, like in BuildKit.
            ("$KOREAN안", Ok("")),
            ("${aaa}}", Ok("}")),
            ("$PWD_x", Ok("")),
            ("${PWD}_x", Ok("/home_x")),
        ];
        check_words(ShellLex::new('\\'), cases, &base_env());
    }

    #[test]
    fn positional_and_special_parameters() {
        let cases: &[(&str, Expect)] = &[
            ("he$1x", Ok("hex")),
            ("$1", Ok("")),
            ("${1}", Ok("")),
            ("${1:+bbb}", Ok("")),
            ("${1:-bbb}", Ok("bbb")),
            ("$999aaa", Ok("aaa")),
            ("${999}aaa", Ok("aaa")),
            ("${001:-bbb}aaa", Ok("bbbaaa")),
            ("$12x", Ok("x")),
            ("$@", Ok("")),
            ("$@@@", Ok("@@")),
            ("$@aaa", Ok("aaa")),
            ("${@:-bbb}aaa", Ok("bbbaaa")),
            ("$*", Ok("")),
            ("${*:-bbb}", Ok("bbb")),
            ("$#", Ok("")),
            ("${#}", Ok("")),
            ("${#:-bbb}", Ok("bbb")),
            ("$?", Ok("")),
            ("${?:+bbb}", Ok("")),
            ("$-", Ok("")),
            ("${-:-bbb}", Ok("bbb")),
            ("$$", Ok("")),
            ("$$$", Ok("$")),
            ("${$}", Ok("")),
            ("$!", Ok("")),
            ("$0", Ok("")),
            ("$0a", Ok("a")),
            ("${0:-bbb}", Ok("bbb")),
            // No `${#VAR}` (length): `#` is read as the special parameter.
            ("${#PWD}", Err(())),
        ];
        check_words(ShellLex::new('\\'), cases, &base_env());
        // The special names are looked up like any other.
        let vars = env(&[("1", "one"), ("@", "all")]);
        let lex = ShellLex::new('\\');
        assert_eq!(lex.process_word("$1-$@-${1}", &vars).unwrap(), "one-all-one");
    }

    #[test]
    fn default_alternative_required() {
        let cases: &[(&str, Expect)] = &[
            ("he${XXX:-000}xx", Ok("he000xx")),
            ("he${PWD:-000}xx", Ok("he/homexx")),
            ("he${XXX:-$PWD}xx", Ok("he/homexx")),
            ("he${XXX:-${PWD:-yyy}}xx", Ok("he/homexx")),
            ("he${XXX:-${YYY:-yyy}}xx", Ok("heyyyxx")),
            ("${NULL:-x}", Ok("x")),
            ("${NULL-x}", Ok("")),
            ("${XXX-x}", Ok("x")),
            ("${XXX-}", Ok("")),
            ("he${XXX:+${PWD}}xx", Ok("hexx")),
            ("he${PWD:+${XXX}}xx", Ok("hexx")),
            ("he${PWD:+${SHELL}}xx", Ok("hebashxx")),
            ("he${PWD:+000}xx", Ok("he000xx")),
            ("${NULL:+x}", Ok("")),
            ("${NULL+x}", Ok("x")),
            ("${XXX+x}", Ok("")),
            ("he${PWD?}", Ok("he/home")),
            ("he${PWD:?}", Ok("he/home")),
            ("he${NULL?}", Ok("he")),
            ("he${NULL:?}", Err(())),
            ("he${XXX?}", Err(())),
            ("he${XXX:?}", Err(())),
            ("he${PWD:+${PWD}:}xx", Ok("he/home:xx")),
            ("he${XXX:-\\$PWD:}xx", Ok("he$PWD:xx")),
            ("he${XXX:-\\${PWD}z}xx", Ok("he${PWDz}xx")),
            ("${aaa:-bbb}}", Ok("bbb}")),
            ("${aaa:-${bbb:-ccc}}", Ok("ccc")),
            ("${aaa:-bbb {foo}", Ok("bbb {foo")),
            ("${aaa:-a b}", Ok("a b")),
            ("${aaa:-'}'}", Ok("}")),
            ("${aaa:-\\}}", Ok("}")),
            ("${aaa:-\"x}y\"}", Ok("x}y")),
            ("\"${aaa:-\"a  b\"}\"", Ok("a  b")),
            ("${aaa:-'$PWD'}", Ok("$PWD")),
            // The word is always expanded, even when unused.
            ("${PWD:-${X:?boom}}", Err(())),
        ];
        check_words(ShellLex::new('\\'), cases, &base_env());
    }

    #[test]
    fn syntax_errors() {
        let lex = ShellLex::new('\\');
        let vars = base_env();
        let cases: &[(&str, ExpandError)] = &[
            ("${}", ExpandError::BadSubstitution),
            ("he${}xx", ExpandError::BadSubstitution),
            ("${{aaa}", ExpandError::BadSubstitution),
            ("${:}", ExpandError::BadSubstitution),
            ("${:-bbb}", ExpandError::BadSubstitution),
            ("${", ExpandError::MissingBrace),
            ("he${PWD", ExpandError::MissingBrace),
            ("${aaa:-bbb", ExpandError::MissingBrace),
            ("${aaa:-bbb ${foo}", ExpandError::MissingBrace),
            ("${aaa:-'bbb}", ExpandError::MissingBrace),
            ("${aaa:", ExpandError::MissingBrace),
            ("he${.}", ExpandError::UnsupportedModifier(".".into())),
            ("${PWD:=000}", ExpandError::UnsupportedModifier(":=".into())),
            ("${XXX:YYY}", ExpandError::UnsupportedModifier(":Y".into())),
            ("${FOO=}", ExpandError::UnsupportedModifier("=".into())),
            ("${#PWD}", ExpandError::UnsupportedModifier("P".into())),
            ("${FOO:#x}", ExpandError::UnsupportedModifier(":#".into())),
            ("${FOO:%%x}", ExpandError::UnsupportedModifier(":%".into())),
            ("${FOO//ww}", ExpandError::MissingSlash),
            ("${FOO//}", ExpandError::MissingSlash),
            ("${FOO/a/b", ExpandError::MissingBrace),
            ("'abc", ExpandError::UnterminatedSingleQuote),
            ("\"abc", ExpandError::UnterminatedDoubleQuote),
            ("\"abc\\", ExpandError::UnterminatedDoubleQuote),
            ("${XXX?}", ExpandError::Required { name: "XXX".into(), message: "is not allowed to be unset".into() }),
            ("${NULL:?}", ExpandError::Required { name: "NULL".into(), message: "is not allowed to be empty".into() }),
            (
                "${XXX:?set XXX in $PWD}",
                ExpandError::Required { name: "XXX".into(), message: "set XXX in /home".into() },
            ),
            (
                "${NULL:?must not be empty}",
                ExpandError::Required { name: "NULL".into(), message: "must not be empty".into() },
            ),
            ("${aaa:-${XXX?nope}}", ExpandError::Required { name: "XXX".into(), message: "nope".into() }),
            (
                "${FOO#\\x}",
                ExpandError::InvalidPattern { pattern: "\\x".into(), reason: "invalid escape '\\x'".into() },
            ),
        ];
        let mut failures = Vec::new();
        for (input, expected) in cases {
            let got = lex.process_word(input, &vars);
            if got.as_ref() != Err(expected) {
                failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    }

    #[test]
    fn error_messages() {
        let lex = ShellLex::new('\\');
        let vars = env(&[("VAR", ""), ("ARG", "x")]);
        let msg = |w: &str| lex.process_word(w, &vars).unwrap_err().to_string();
        assert_eq!(msg("${VAR:?message here$ARG}"), "VAR: message herex");
        assert_eq!(msg("${NOPE?}"), "NOPE: is not allowed to be unset");
        assert_eq!(msg("${VAR:?}"), "VAR: is not allowed to be empty");
        assert_eq!(msg("${x"), "syntax error: missing '}'");
        assert_eq!(msg("${}"), "syntax error: bad substitution");
        assert_eq!(msg("${x/a"), "syntax error: missing '/' in ${}");
        assert_eq!(msg("${x:=a}"), "unsupported modifier (:=) in substitution");
        assert_eq!(msg("'a"), "unexpected end of statement while looking for matching single-quote");
        assert_eq!(msg("\"a"), "unexpected end of statement while looking for matching double-quote");
        assert_eq!(msg("${ARG#a\\b}"), "invalid pattern (a\\b) in substitution: invalid escape '\\b'");
        // `${VAR?msg}` accepts an empty value.
        assert_eq!(lex.process_word("${VAR?msg}", &vars).unwrap(), "");
    }

    /// `(input, value of FOO or None for unset, expected)`.
    type PatternCase = (&'static str, Option<&'static str>, &'static str);

    fn check_patterns(cases: &[PatternCase], extra: &[(&str, &str)]) {
        let lex = ShellLex::new('\\');
        let mut failures = Vec::new();
        for (input, foo, expected) in cases {
            let mut vars = env(extra);
            if let Some(v) = foo {
                vars.push(("FOO".into(), v.to_string()));
            }
            let got = lex.process_word(input, &vars);
            if got.as_deref() != Ok(*expected) {
                failures.push(format!("{input:?} (FOO={foo:?}): expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let cases: &[PatternCase] = &[
            ("${FOO#()[]{\\}^$.\\*\\?|\\\\}", Some("()[]{}^$.*?|\\x"), "x"),
            ("${FOO%%\\**}", Some("xx**"), "xx"),
            ("${FOO#*x*y}", Some("xxyy"), "y"),
            ("${FOO#*}", Some("xxyy"), "xxyy"),
            ("${FOO##*}", Some("xxyy"), ""),
            ("${FOO#$BAR}", Some("xxyy"), "xyy"),
            ("${FOO#$EMPTY}", Some("xxyy"), "xxyy"),
            ("${FOO#}", Some("xxyy"), "xxyy"),
            ("${FOO##*x}", Some("xxyy"), "yy"),
            ("${FOO##}", Some("xxyy"), "xxyy"),
            ("${FOO#?\\?}", Some("???y"), "?y"),
            ("${ABC:-.}${FOO%x}${ABC:-.}", Some("xxyy"), ".xxyy."),
            ("${FOO%%\\**\\*}", Some("a***yy*"), "a"),
            ("${FOO%}", Some("xxyy"), "xxyy"),
            ("${FOO%%$EMPTY}", Some("xxyy"), "xxyy"),
            ("${FOO%y}", Some("xxyy"), "xxy"),
            ("${FOO%y*}", Some("xxyy"), "xxy"),
            ("${FOO%%y*}", Some("xxyy"), "xx"),
            ("${FOO%.*}", Some("archive.tar.gz"), "archive.tar"),
            ("${FOO%%.*}", Some("archive.tar.gz"), "archive"),
            ("${FOO#*.}", Some("archive.tar.gz"), "tar.gz"),
            ("${FOO##*.}", Some("archive.tar.gz"), "gz"),
            ("${FOO##*/}", Some("/usr/local/bin/tool"), "tool"),
            ("${FOO%/*}", Some("/usr/local/bin/tool"), "/usr/local/bin"),
            ("${FOO#v}", Some("v1.2.3"), "1.2.3"),
            ("${FOO#?}", Some("v1.2.3"), "1.2.3"),
            ("${FOO#x}", Some("v1.2.3"), "v1.2.3"),
            ("${FOO#*}", None, ""),
            // No bracket expressions: `[` and `]` are literal.
            ("${FOO#[ab]}", Some("a[ab]c"), "a[ab]c"),
            ("${FOO#a[ab]}", Some("a[ab]c"), "c"),
            // Quotes are removed before matching; quoted `*` is still a
            // wildcard (BuildKit expands the pattern first).
            ("${FOO#'*'}", Some("xy"), "xy"),
            ("${FOO##'*'}", Some("xy"), ""),
            // A doubled operator coming from a variable also counts.
            ("${FOO#$HASH}", Some("aab"), "b"),
            // Wildcards stop at newlines.
            ("${FOO##*}", Some("ab\ncd"), "\ncd"),
            ("${FOO%%*}", Some("ab\ncd"), "ab\n"),
            ("${FOO#a?c}", Some("a\nc"), "a\nc"),
            ("${FOO#안}", Some("안녕"), "녕"),
            ("${FOO%?}", Some("한국어"), "한국"),
            ("${FOO#\\}}", Some("}x"), "x"),
        ];
        check_patterns(cases, &[("BAR", "x"), ("EMPTY", ""), ("HASH", "#*a")]);
    }

    #[test]
    fn replacement() {
        let cases: &[PatternCase] = &[
            ("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", Some("/foo*/*/*.txt"), "/foo.*/*.txt - /foo..*.txt"),
            ("${FOO/$TMP/} - ${FOO//$TMP/}", Some("/tmp/tmp/bar.txt"), "/tmp/bar.txt - /bar.txt"),
            ("${FOO/$Q/$R} - ${FOO//$Q/$R}", Some("/a/foo/b/c.txt"), "/foo/b/c.txt - /foo/c.txt"),
            ("${FOO/http:\\/\\//https:\\/\\/}", Some("http://google.de"), "https:\\/\\/google.de"),
            ("${FOO/http:\\/\\//https://}", Some("http://google.de"), "https://google.de"),
            ("${FOO//\\//\\/}", Some("/tmp/foo.txt"), "\\/tmp\\/foo.txt"),
            ("${FOO/$EMPTY/ww}", Some("xxyy"), "wwxxyy"),
            ("${FOO//$EMPTY/-}", Some("xxyy"), "-x-x-y-y-"),
            ("${FOO///}", Some("xxyy"), "xxyy"),
            ("${FOO///}", None, ""),
            ("${FOO/x/z}", Some("xxyy"), "zxyy"),
            ("${FOO//x/z}", Some("xxyy"), "zzyy"),
            ("${FOO/*/z}", Some("xxyy"), "z"),
            ("${FOO//*/z}", Some("xxyy"), "z"),
            ("${FOO//?/z}", Some("abc"), "zzz"),
            ("${FOO/b*/z}", Some("abcabc"), "az"),
            ("${FOO//x*y/-}", Some("axbyxcy"), "a-"),
            ("${FOO/q/z}", Some("xxyy"), "xxyy"),
            ("${FOO/x/$PWD}", Some("x"), "/home"),
            ("${FOO/x/a b}", Some("xy"), "a by"),
            ("${FOO//-/_}", Some("linux-arm-v7"), "linux_arm_v7"),
            ("${FOO/-/_}", Some("linux-arm-v7"), "linux_arm-v7"),
            ("${FOO/x/z}", None, ""),
            // `//` goes through Go's ReplaceAllString: `$0` is the match and
            // `$$` is `$`; `/` inserts the replacement as is.
            ("${FOO//o/<$ZERO>}", Some("foo"), "f<o><o>"),
            ("${FOO//o/$DD}", Some("foo"), "f$$"),
            ("${FOO//o/$NAME}", Some("foo"), "f"),
            ("${FOO//o/'$'}", Some("foo"), "f$$"),
            ("${FOO/o/$ZERO}", Some("foo"), "f$0o"),
            // In pattern and replacement words the escape is kept; inside
            // double quotes it is even kept before an ordinary character.
            ("${FOO/x/\"\\a\"}", Some("x"), "\\\\a"),
            ("${FOO//*//}", Some("a\nb"), "/\n/"),
        ];
        check_patterns(
            cases,
            &[
                ("NEEDLE", "\\*/"),
                ("TMP", "/tmp"),
                ("Q", "/?/"),
                ("R", "/"),
                ("EMPTY", ""),
                ("PWD", "/home"),
                ("ZERO", "$0"),
                ("DD", "$$"),
                ("NAME", "${x}"),
            ],
        );
        let lex = ShellLex::new('\\');
        let vars = env(&[("FOO", "a"), ("P", "\\x")]);
        assert!(matches!(lex.process_word("${FOO/$P/b}", &vars), Err(ExpandError::InvalidPattern { .. })));
    }

    #[test]
    fn backtick_escape() {
        let cases: &[(&str, Expect)] = &[
            ("c:\\foo", Ok("c:\\foo")),
            ("c:\\foo\\", Ok("c:\\foo\\")),
            ("\"c:\\foo\\\"", Ok("c:\\foo\\")),
            ("'c:\\foo'", Ok("c:\\foo")),
            ("a`$PWD", Ok("a$PWD")),
            ("a\\$PWD", Ok("a\\/home")),
            ("a` b", Ok("a b")),
            ("a``b", Ok("a`b")),
            ("a`", Ok("a")),
            ("\"a`\"b\"", Ok("a\"b")),
            ("\"`$PWD\"", Ok("$PWD")),
            ("\"``\"", Ok("`")),
            ("\"`x\"", Ok("`x")),
            ("\"\\\"", Ok("\\")),
            ("${XXX:-c:\\dir}", Ok("c:\\dir")),
            ("${XXX:-`}}", Ok("}")),
            ("${PWD#`/}", Ok("/home")),
            ("${PWD#/h}", Ok("ome")),
        ];
        check_words(ShellLex::new('`'), cases, &base_env());
    }

    #[test]
    fn words_splitting() {
        let lex = ShellLex::new('\\');
        let vars =
            env(&[("hi", "hi"), ("space", "abc  def"), ("leading", "  ab c"), ("trailing", "ab c   "), ("EMPTY", "")]);
        let cases: &[(&str, Result<&[&str], ()>)] = &[
            ("hello", Ok(&["hello"])),
            ("hello${hi}bye", Ok(&["hellohibye"])),
            ("hello${nope}bye", Ok(&["hellobye"])),
            ("hello${space}bye", Ok(&["helloabc", "defbye"])),
            ("hello\"${space}\"bye", Ok(&["helloabc  defbye"])),
            ("hello \"${space}\"bye", Ok(&["hello", "abc  defbye"])),
            ("hello${leading}def", Ok(&["hello", "ab", "cdef"])),
            ("hello\"${leading}\" def", Ok(&["hello  ab c", "def"])),
            ("hello${trailing}d", Ok(&["helloab", "c", "d"])),
            ("hel\"lo${trailing}\"", Ok(&["helloab c   "])),
            ("hello\" there  \"", Ok(&["hello there  "])),
            ("hello there     ", Ok(&["hello", "there"])),
            ("  hello   there", Ok(&["hello", "there"])),
            ("hello\\ there", Ok(&["hello there"])),
            ("hello\" there", Err(())),
            ("hello\\\" there", Ok(&["hello\"", "there"])),
            ("hello\"\\\\there\"", Ok(&["hello\\there"])),
            ("hello'\\there'", Ok(&["hello\\there"])),
            ("hello'$there'", Ok(&["hello$there"])),
            ("a \"b c\" d", Ok(&["a", "b c", "d"])),
            ("a 'b  c' d", Ok(&["a", "b  c", "d"])),
            ("a\tb\nc", Ok(&["a", "b", "c"])),
            // Empty results are dropped, quoted or not (as in BuildKit).
            ("\"\"", Ok(&[])),
            ("''", Ok(&[])),
            ("a \"\" b", Ok(&["a", "b"])),
            ("$EMPTY", Ok(&[])),
            ("a $EMPTY b", Ok(&["a", "b"])),
            ("\"$EMPTY\"x", Ok(&["x"])),
            ("", Ok(&[])),
            ("   ", Ok(&[])),
            // The text before a modifier form stays in its word. (BuildKit
            // since dockerfile/1.10 drops it here, e.g. `80/tcp` for the
            // first case, because nested expansions share and reset one
            // word buffer; that is taken as a bug and not reproduced.)
            ("80${EMPTY:-80}/tcp", Ok(&["8080/tcp"])),
            ("pre${nope:-a b}post", Ok(&["prea", "bpost"])),
            ("pre\"${nope:-a b}\"post", Ok(&["prea bpost"])),
            ("x ${space#abc}", Ok(&["x", "def"])),
            // Heredoc markers: `<<` keeps the blanks after it.
            ("cat << EOF", Ok(&["cat", "<< EOF"])),
            ("cat <<EOF >out", Ok(&["cat", "<<EOF", ">out"])),
            ("${x", Err(())),
        ];
        let mut failures = Vec::new();
        for (input, expected) in cases {
            let got = lex.process_words(input, &vars);
            let ok = match (expected, &got) {
                (Ok(e), Ok(g)) => e.iter().copied().eq(g.iter().map(String::as_str)),
                (Err(()), Err(_)) => true,
                _ => false,
            };
            if !ok {
                failures.push(format!("{input:?}: expected {expected:?}, got {got:?}"));
            }
        }
        assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
    }

    #[test]
    fn matches() {
        let lex = ShellLex::new('\\');
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        // BuildKit's release file name template.
        const RELEASE: &str =
            concat!("something-${VERSION}.${TARGETOS}-${TARGETARCH}", "${TARGETVARIANT:+-${TARGETVARIANT}}.tar.gz");
        // (input, vars, result, matched, unmatched)
        type MatchCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a [&'a str], &'a [&'a str]);
        let cases: &[MatchCase] = &[
            ("x", &[("DUMMY", "d")], "x", &[], &[]),
            ("x ${UNUSED}", &[("DUMMY", "d")], "x ", &[], &["UNUSED"]),
            ("x ${FOO}", &[("FOO", "y")], "x y", &["FOO"], &[]),
            ("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &[("FOO", "xxx"), ("BAR", "")], "xxx  ccc", &["BAR", "FOO"], &["BAZ"]),
            (
                "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
                &[("FOO", "xxx"), ("BAR", "")],
                "xxx bbb ccc",
                &["BAR", "FOO"],
                &["BAZ"],
            ),
            ("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", &[("FOO", "xxx"), ("BAR", "")], "aaa bbb ", &["BAR", "FOO"], &["BAZ"]),
            ("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", &[("FOO", "xxx"), ("BAR", "")], "aaa  ", &["BAR", "FOO"], &["BAZ"]),
            ("${FOO:-}", &[], "", &[], &["FOO"]),
            ("${FOO?aaa}", &[("FOO", "xxx")], "xxx", &["FOO"], &[]),
            ("${BAR?bbb}", &[("BAR", "")], "", &["BAR"], &[]),
            // The default is expanded even when unused.
            ("${FOO:-$BAR}", &[("FOO", "x"), ("BAR", "y")], "x", &["BAR", "FOO"], &[]),
            ("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")], "xyy", &["BAR", "FOO"], &[]),
            ("${FOO///}", &[], "", &[], &["FOO"]),
            (
                "${FOO/$N/$R}",
                &[("FOO", "http://a"), ("N", "http://"), ("R", "https://")],
                "https://a",
                &["FOO", "N", "R"],
                &[],
            ),
            ("'$FOO' \\$BAR", &[("FOO", "x")], "$FOO $BAR", &[], &[]),
            ("\"$FOO\" $1 $@", &[("FOO", "x")], "x  ", &["FOO"], &["1", "@"]),
            (
                RELEASE,
                &[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")],
                "something-v1.2.3.linux-arm-v7.tar.gz",
                &["TARGETARCH", "TARGETOS", "TARGETVARIANT", "VERSION"],
                &[],
            ),
            (
                RELEASE,
                &[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm64"), ("TARGETVARIANT", "")],
                "something-v1.2.3.linux-arm64.tar.gz",
                &["TARGETARCH", "TARGETOS", "TARGETVARIANT", "VERSION"],
                &[],
            ),
            (
                RELEASE,
                &[("VERSION", "v1.2.3"), ("TARGETOS", "linux"), ("TARGETARCH", "arm64")],
                "something-v1.2.3.linux-arm64.tar.gz",
                &["TARGETARCH", "TARGETOS", "VERSION"],
                &["TARGETVARIANT"],
            ),
        ];
        for (input, pairs, result, matched, unmatched) in cases {
            let vars = env(pairs);
            let detailed = lex.process_word_detailed(input, &vars).unwrap();
            assert_eq!(detailed.result, *result, "{input:?}");
            assert_eq!(detailed.matched, set(matched), "{input:?} matched");
            assert_eq!(detailed.unmatched, set(unmatched), "{input:?} unmatched");
            let (word, m) = lex.process_word_with_matches(input, &vars).unwrap();
            assert_eq!(word, *result);
            assert_eq!(m, set(matched));
        }
        assert!(lex.process_word_with_matches("${BAZ?ccc}", &Vec::<(String, String)>::new()).is_err());
    }

    #[test]
    fn lookups() {
        let lex = ShellLex::default();
        let list = env(&[("car", "hat"), ("foo", "bar"), ("car", "bike")]);
        assert_eq!(lex.process_word("$car $foo", &list).unwrap(), "bike bar");
        assert_eq!(list.as_slice().lookup("car"), Some("bike"));
        let map: BTreeMap<String, String> = list.iter().cloned().collect();
        assert_eq!(lex.process_word("$car $foo", &map).unwrap(), "bike bar");
        let hash: HashMap<String, String> = list.iter().cloned().collect();
        assert_eq!(lex.process_word("${car}", &hash).unwrap(), "bike");
        assert_eq!(lex.process_word("[$nope]", &map).unwrap(), "[]");
        // Names are case-sensitive.
        assert_eq!(lex.process_word("[$CAR]", &map).unwrap(), "[]");
        assert_eq!(lex.escape(), '\\');
    }

    #[test]
    fn pattern_helpers() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern("👽\\🚀🖖"), "🖖\\🚀👽");
        assert_eq!(reverse_pattern("\\\\b"), "b\\\\");
        for invalid in ["\\", "\\x", "\\\\\\"] {
            assert!(Pattern::compile(invalid, true).is_err(), "{invalid:?}");
        }
        let p = Pattern::compile("a\\}b\\/c", true).unwrap();
        assert_eq!(p.tokens, vec![Token::Literal("a}b/c".chars().collect())]);
        // Many stars on a long value stay fast thanks to memoisation.
        let value = "a".repeat(2000);
        let lex = ShellLex::new('\\');
        let vars = env(&[("V", &value)]);
        assert_eq!(lex.process_word("${V%%*a*a*a*a*a*b}", &vars).unwrap(), value);
    }
}
