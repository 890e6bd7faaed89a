//! Resource bounds of the front end: hostile Dockerfiles (deep nesting, "billion laughs" ARG
//! chains, costly patterns) end with an error naming the file and line, quickly and in bounded
//! memory, instead of a stack overflow or gigabytes of RSS.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ext_dockerfile::expand::{ExpandError, MAX_NESTING, MAX_WORD_BYTES, ShellLex};
use ext_dockerfile::{Dockerfile, DockerfileError};

fn plan_err(text: &str) -> DockerfileError {
    let df = Dockerfile::parse(text, "run.Dockerfile").unwrap_or_else(|e| panic!("{e}"));
    df.plan(&BTreeMap::new(), &[]).expect_err("expected an error")
}

fn nested_default(depth: usize) -> String {
    format!("{}x{}", "${a:-".repeat(depth), "}".repeat(depth))
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // 15k levels overflowed the stack (SIGABRT) before the bound.
    let text = format!("FROM x\nENV A={}\n", nested_default(15_000));
    let e = plan_err(&text);
    let msg = e.to_string();
    assert!(msg.starts_with("run.Dockerfile:2: "), "{msg}");
    assert!(msg.contains(&format!("nested more than {MAX_NESTING} levels")), "{msg}");
    // The quoted word is cut short.
    assert!(msg.len() < 600, "{} bytes: {msg:.300}", msg.len());
    // Within the bound, nesting works.
    let lex = ShellLex::default();
    assert_eq!(lex.process_word(&nested_default(MAX_NESTING), &BTreeMap::new()).unwrap(), "x");
    assert_eq!(lex.process_word(&nested_default(MAX_NESTING + 1), &BTreeMap::new()), Err(ExpandError::TooDeep));
}

#[test]
fn deep_nesting_in_global_args_and_unclosed() {
    // Unterminated forms are still reported as the limit, not as a missing brace.
    let word = "${a:-".repeat(10_000);
    assert_eq!(ShellLex::default().process_word(&word, &BTreeMap::new()), Err(ExpandError::TooDeep));
    let text = format!("ARG G={}\nFROM x\n", nested_default(10_000));
    let df = Dockerfile::parse(&text, "run.Dockerfile").unwrap();
    let msg = df.resolve_from(&BTreeMap::new()).unwrap_err().to_string();
    assert!(msg.starts_with("run.Dockerfile:1: ") && msg.contains("nested more than"), "{msg}");
}

/// `ARG L{i+1}=${Li}${Li}`: the 535-byte file that reached 1.5 GB RSS.
fn billion_laughs(levels: usize) -> String {
    let mut text = String::from("FROM x\nARG L0=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\n");
    for i in 0..levels {
        text.push_str(&format!("ARG L{}=${{L{i}}}${{L{i}}}\n", i + 1));
    }
    text.push_str("RUN true\n");
    text
}

#[test]
fn billion_laughs_is_bounded() {
    let started = Instant::now();
    let e = plan_err(&billion_laughs(24));
    let msg = e.to_string();
    // 64 bytes doubled 15 times is 2 MiB: line 2 is L0, so L15 is on line 17.
    assert!(msg.starts_with("run.Dockerfile:17: "), "{msg}");
    assert!(msg.contains("longer than 1 MiB") || msg.contains("add up to more than"), "{msg}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    // A chain whose every value stays small is fine.
    let ok = Dockerfile::parse(&billion_laughs(8), "run.Dockerfile").unwrap();
    ok.plan(&BTreeMap::new(), &[]).unwrap();
}

#[test]
fn variables_are_bounded_in_total() {
    // Many ARGs of 600 KiB each: every word is under the word limit, the sum is not.
    let mut text = String::from("FROM x\nARG S=0123456789abcdef\n");
    let mut name = "S".to_string();
    for i in 0..15 {
        text.push_str(&format!("ARG D{i}=${{{name}}}${{{name}}}\n"));
        name = format!("D{i}");
    }
    // D0..D14 (lines 3-17) add up to about 1 MiB and D14 is 512 KiB: C1 (line 19) crosses
    // 2 MiB.
    for i in 0..5 {
        text.push_str(&format!("ARG C{i}=${{D14}}\n"));
    }
    let msg = plan_err(&text).to_string();
    assert!(msg.contains("ARG and ENV values add up to more than 2 MiB"), "{msg}");
    assert!(msg.starts_with("run.Dockerfile:19:"), "{msg}");
}

#[test]
fn many_runs_after_a_large_arg_are_bounded() {
    // Each RUN carries the ARGs: 1 MiB of ARG times 100 RUNs would be 100 MiB of plan.
    let mut text = String::from("FROM x\nARG S=0123456789abcdef\n");
    let mut name = "S".to_string();
    for i in 0..15 {
        text.push_str(&format!("ARG D{i}=${{{name}}}${{{name}}}\n"));
        name = format!("D{i}");
    }
    text.push_str(&"RUN true\n".repeat(100));
    let msg = plan_err(&text).to_string();
    assert!(msg.contains("expands to more than 32 MiB"), "{msg}");
}

#[test]
fn word_length_is_bounded_in_every_form() {
    let lex = ShellLex::default();
    let big = "y".repeat(MAX_WORD_BYTES / 2 + 1);
    let vars: BTreeMap<String, String> = [("B".to_string(), big.clone())].into();
    assert_eq!(lex.process_word("$B", &vars).unwrap(), big);
    for word in ["$B$B", "${B}${B}", "\"$B$B\"", "${x:-$B$B}", "${B/y/yy}${B}", "${B//y/yyy}"] {
        assert_eq!(lex.process_word(word, &vars), Err(ExpandError::TooLong), "{word}");
    }
    assert_eq!(lex.process_words("$B $B", &vars), Err(ExpandError::TooLong));
}

#[test]
fn costly_patterns_are_refused_quickly() {
    let lex = ShellLex::default();
    let value = "a".repeat(200_000);
    let vars: BTreeMap<String, String> = [("V".to_string(), value.clone())].into();
    let started = Instant::now();
    // Quadratic (or worse) without a bound: minutes to hours.
    for word in ["${V//*b/}", "${V/*b/}", "${V#*a*a*a*b}", "${V%b*a*a*a*}"] {
        match lex.process_word(word, &vars) {
            Err(ExpandError::PatternTooCostly { chars, .. }) => assert_eq!(chars, 200_000),
            Err(e) => panic!("{word}: {e}"),
            Ok(v) => panic!("{word}: expanded to {} bytes", v.len()),
        }
    }
    // Too many tokens: the matcher recursed once per token (a stack overflow before the bound).
    let word = format!("${{V#{}}}", "?*".repeat(50_000));
    assert!(matches!(lex.process_word(&word, &vars), Err(ExpandError::PatternTooCostly { .. })));
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    // Cheap patterns on the same value still work.
    assert_eq!(lex.process_word("${V%a}", &vars).unwrap().len(), 199_999);
    assert_eq!(lex.process_word("${V#a*}", &vars).unwrap(), value[1..]);
    assert_eq!(lex.process_word("${V/a/b}", &vars).unwrap(), format!("b{}", &value[1..]));
}
