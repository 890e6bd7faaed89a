//! Untrusted names (tar entry names, link targets, file names from a build context) quoted in
//! messages: control characters (ANSI escape sequences, newlines, carriage returns),
//! bidirectional-text overrides and bytes that are not UTF-8 are shown as escapes, so a hostile
//! name cannot rewrite the user's terminal or forge log lines.

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Displays bytes with everything unprintable escaped (`\e`, `\n`, `\x9b`, `\u{202e}`, `\\`).
pub struct Escaped<'a>(pub &'a [u8]);

/// A whole message for the terminal: like [`Escaped`], but backslashes are kept as they are
/// (messages quote Dockerfile text, where `\` is common and unambiguous).
pub fn for_terminal(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for part in message.split_inclusive('\\') {
        // Each piece ends in at most one backslash; escape the rest, keep that one.
        match part.strip_suffix('\\') {
            Some(rest) => {
                out.push_str(&text(rest).to_string());
                out.push('\\');
            }
            None => out.push_str(&text(part).to_string()),
        }
    }
    out
}

/// A path for a message.
pub fn path(p: &Path) -> Escaped<'_> {
    Escaped(p.as_os_str().as_bytes())
}

/// A string for a message.
pub fn text(s: &str) -> Escaped<'_> {
    Escaped(s.as_bytes())
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\\' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}' | '\u{feff}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                if !needs_escape(c) {
                    fmt::Write::write_char(f, c)?;
                    continue;
                }
                match c {
                    '\\' => f.write_str("\\\\")?,
                    '\n' => f.write_str("\\n")?,
                    '\r' => f.write_str("\\r")?,
                    '\t' => f.write_str("\\t")?,
                    '\u{1b}' => f.write_str("\\e")?,
                    c if (c as u32) < 0x80 => write!(f, "\\x{:02x}", c as u32)?,
                    c => write!(f, "\\u{{{:x}}}", c as u32)?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_messages_keep_backslashes() {
        assert_eq!(for_terminal("cannot expand `${a\\}`: \x1b[2J"), "cannot expand `${a\\}`: \\e[2J");
        assert_eq!(for_terminal("a\x1b[31mb\nc"), "a\\e[31mb\\nc");
    }

    #[test]
    fn unprintable_characters_are_escaped() {
        let cases: &[(&[u8], &str)] = &[
            (b"usr/bin/ls", "usr/bin/ls"),
            ("h\u{e9}llo w\u{f6}rld/\u{65e5}\u{672c}".as_bytes(), "h\u{e9}llo w\u{f6}rld/\u{65e5}\u{672c}"),
            (b"\x1b[31mred\x1b[0m", "\\e[31mred\\e[0m"),
            (b"a\nb\rc\td", "a\\nb\\rc\\td"),
            (b"bad\xff\xfe", "bad\\xff\\xfe"),
            (b"\x07\x00\x7f", "\\x07\\x00\\x7f"),
            ("\u{9b}31m".as_bytes(), "\\u{9b}31m"),
            ("evil\u{202e}txt.exe".as_bytes(), "evil\\u{202e}txt.exe"),
            (b"back\\slash", "back\\\\slash"),
        ];
        for (input, want) in cases {
            assert_eq!(Escaped(input).to_string(), *want, "{input:?}");
        }
    }
}
