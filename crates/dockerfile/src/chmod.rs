//! `COPY/ADD --chmod`: an octal mode (`0755`) or a symbolic one as chmod(1) takes it
//! (`u+x`, `g-w,o=r`, `a=rX`, `go=u`), which BuildKit accepts since Dockerfile 1.14 and the
//! lifecycle's Kaniko fork since its PR #800. A symbolic mode edits each copied entry's own
//! mode (BuildKit parses it with a umask of 0 and applies it per file), so `X` gives execute
//! to directories and to files that already have it.

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    Octal(u32),
    Symbolic(Vec<Clause>),
}

/// One comma-separated clause: who, then one or more operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The classes the clause names (`u`, `g`, `o` as bits 4, 2, 1); none means all.
    who: u8,
    actions: Vec<(Op, Perm)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Remove,
    Set,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perm {
    /// Any of `rwxXst`.
    Bits(String),
    /// `u`, `g` or `o`: the bits that class has now.
    CopyOf(char),
}

const WHO_U: u8 = 4;
const WHO_G: u8 = 2;
const WHO_O: u8 = 1;

impl Chmod {
    /// Parses a `--chmod` value; the error says what was expected.
    pub fn parse(text: &str) -> Result<Chmod, String> {
        let expected = || format!("`{text}`: expected an octal mode such as 0755 or a symbolic one such as u+x,g-w");
        if text.is_empty() {
            return Err(expected());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return match u32::from_str_radix(text, 8) {
                Ok(m) if text.len() <= 4 => Ok(Chmod::Octal(m)),
                _ => Err(expected()),
            };
        }
        let mut clauses = Vec::new();
        for part in text.split(',') {
            let mut chars = part.chars().peekable();
            let mut who = 0u8;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => WHO_U,
                    'g' => WHO_G,
                    'o' => WHO_O,
                    'a' => WHO_U | WHO_G | WHO_O,
                    _ => break,
                };
                chars.next();
            }
            let mut actions = Vec::new();
            while let Some(c) = chars.next() {
                let op = match c {
                    '+' => Op::Add,
                    '-' => Op::Remove,
                    '=' => Op::Set,
                    _ => return Err(expected()),
                };
                let perm = match chars.peek() {
                    Some(&c @ ('u' | 'g' | 'o')) => {
                        chars.next();
                        Perm::CopyOf(c)
                    }
                    _ => {
                        let mut bits = String::new();
                        while let Some(&c) = chars.peek() {
                            if !"rwxXst".contains(c) {
                                break;
                            }
                            bits.push(c);
                            chars.next();
                        }
                        Perm::Bits(bits)
                    }
                };
                actions.push((op, perm));
            }
            if actions.is_empty() {
                return Err(expected());
            }
            clauses.push(Clause { who, actions });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode an entry whose own mode is `mode` gets (permission and set-id bits only).
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let clauses = match self {
            Chmod::Octal(m) => return *m,
            Chmod::Symbolic(c) => c,
        };
        let mut mode = mode & 0o7777;
        for clause in clauses {
            let who = if clause.who == 0 { WHO_U | WHO_G | WHO_O } else { clause.who };
            // The rwx bits of the classes named, and the special bits that go with them.
            let mut mask = 0u32;
            if who & WHO_U != 0 {
                mask |= 0o4700;
            }
            if who & WHO_G != 0 {
                mask |= 0o2070;
            }
            if who & WHO_O != 0 {
                mask |= 0o1007;
            }
            for (op, perm) in &clause.actions {
                let bits = match perm {
                    Perm::Bits(b) => {
                        let mut v = 0u32;
                        for c in b.chars() {
                            v |= match c {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => 0,
                            };
                        }
                        v
                    }
                    Perm::CopyOf(c) => {
                        let class = match c {
                            'u' => (mode >> 6) & 7,
                            'g' => (mode >> 3) & 7,
                            _ => mode & 7,
                        };
                        (class << 6) | (class << 3) | class
                    }
                };
                let value = bits & mask;
                mode = match op {
                    Op::Add => mode | value,
                    Op::Remove => mode & !value,
                    Op::Set => (mode & !mask) | value,
                };
            }
        }
        mode
    }

    /// The mode of directories the copy has to create (missing parents, the destination of a
    /// directory source): the octal mode itself, as BuildKit makes them; 0755 for a symbolic
    /// one, which has no mode of its own to give them.
    pub fn created_dir_mode(&self) -> Option<u32> {
        match self {
            Chmod::Octal(m) => Some(*m),
            Chmod::Symbolic(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(text: &str, mode: u32, is_dir: bool) -> u32 {
        Chmod::parse(text).unwrap().apply(mode, is_dir)
    }

    /// Expected values as GNU chmod gives them (umask 0) on a file of the starting mode.
    #[test]
    fn symbolic_modes_edit_the_entry_mode_like_chmod() {
        assert_eq!(apply("0755", 0o600, false), 0o755);
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("g-w,o=r", 0o664, false), 0o644);
        assert_eq!(apply("a=rX", 0o640, false), 0o444);
        assert_eq!(apply("a=rX", 0o740, false), 0o555);
        assert_eq!(apply("a=rX", 0o700, true), 0o555);
        assert_eq!(apply("go=u", 0o751, false), 0o777);
        assert_eq!(apply("u=rw,go=", 0o777, false), 0o600);
        assert_eq!(apply("u+s,g+s", 0o755, false), 0o6755);
        assert_eq!(apply("+t", 0o777, true), 0o1777);
        assert_eq!(apply("u-x+w", 0o500, false), 0o600);
        assert_eq!(apply("ug+rw,o-rwx", 0o604, false), 0o660);
    }

    #[test]
    fn bad_modes_are_refused() {
        for bad in ["", "u", "9", "07777", "u+q", "x+u", "u+x,", "0o755", "u*x"] {
            assert!(Chmod::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Chmod::parse("u+x").unwrap().created_dir_mode(), None);
        assert_eq!(Chmod::parse("0700").unwrap().created_dir_mode(), Some(0o700));
    }
}
