//! Replays every input of the checked-in fuzz corpora (`fuzz/corpus/<target>/`) through its
//! target: a smoke run of the fuzzers that needs neither nightly nor libFuzzer, and keeps every
//! input a fuzzer ever found interesting as a regression test.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus").join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "{}: empty corpus", dir.display());
    for input in &inputs {
        let data = std::fs::read(input).unwrap();
        f(&data);
    }
    eprintln!("{target}: {} inputs replayed", inputs.len());
}

#[test]
fn dockerfile_corpus() {
    replay("dockerfile", fuzz_targets::dockerfile);
}

#[test]
fn unpack_corpus() {
    replay("unpack", fuzz_targets::unpack);
}

#[test]
fn image_json_corpus() {
    replay("image_json", fuzz_targets::image_json);
}
