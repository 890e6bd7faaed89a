//! What the fuzzers in `fuzz/` run, one function per target. Each takes arbitrary bytes and
//! must neither panic, nor overflow the stack, nor run away with time or memory (libFuzzer
//! reports those), nor write outside the directory it was given (checked here).
//!
//! The same functions run over the checked-in corpora in `cargo test` (tests/corpus.rs), so
//! every input the fuzzers ever kept stays a regression test.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ext_dockerfile::Dockerfile;
use ext_dockerfile::expand::ShellLex;
use ext_oci::{Digest, ImageConfig, OciLayout, Platform};
use ext_rootfs::{UnpackOptions, WhiteoutMode, unpack_layer};
use serde_json::{Value, json};

/// The Dockerfile front end: parse, resolve FROM, plan with build args and an image `Env`, and
/// expand the raw input as one word and as words (with both escape characters).
pub fn dockerfile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let build_args: BTreeMap<String, String> = [
        ("base_image".to_string(), "oci:/base:latest".to_string()),
        ("user_id".to_string(), "1000".to_string()),
        ("V".to_string(), "value with spaces".to_string()),
    ]
    .into();
    let env = vec![("PATH".to_string(), "/usr/bin:/bin".to_string()), ("HOME".to_string(), "/root".to_string())];
    if let Ok(df) = Dockerfile::parse(&text, "fuzz.Dockerfile") {
        let _ = df.resolve_from(&build_args);
        if let Ok(plan) = df.plan(&build_args, &env) {
            // Every step keeps a line inside the file.
            let lines = text.lines().count().max(1);
            for step in &plan.steps {
                assert!(step.line >= 1 && step.line <= lines + 1, "step at line {} of {lines}", step.line);
            }
        }
    }
    for escape in ['\\', '`'] {
        let lex = ShellLex::new(escape);
        let vars: BTreeMap<String, String> = build_args.clone();
        if let Ok(word) = lex.process_word(&text, &vars) {
            assert!(word.len() <= ext_dockerfile::expand::MAX_WORD_BYTES);
        }
        let _ = lex.process_words(&text, &vars);
    }
}

/// The layer unpacker, in both whiteout modes, on a root next to a canary directory: whatever
/// the tar says, nothing outside the root may change.
pub fn unpack(data: &[u8]) {
    let Some((&mode, tar)) = data.split_first() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    let canary = dir.path().join("canary");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&canary).unwrap();
    fs::write(canary.join("file"), b"canary").unwrap();
    let before = listing(dir.path(), &root);
    let whiteouts = if mode & 1 == 0 { WhiteoutMode::Apply } else { WhiteoutMode::Overlay };
    let opts = UnpackOptions { whiteouts, layer_name: "sha256:fuzz".into(), filter: None };
    if mode & 2 == 0 {
        let _ = unpack_layer(&root, tar, &opts);
    } else {
        // Two layers: the second on top of what the first left (symlinks planted earlier are
        // the classic escape).
        let half = tar.len() / 2 / 512 * 512;
        let _ = unpack_layer(&root, &tar[..half], &opts);
        let _ = unpack_layer(&root, &tar[half..], &opts);
    }
    assert_eq!(fs::read(canary.join("file")).unwrap(), b"canary", "the canary file was changed");
    assert_eq!(listing(dir.path(), &root), before, "something was written outside the root");
}

/// Everything under `dir` except the subtree `skip`, with sizes and modes (no symlink followed).
fn listing(dir: &Path, skip: &Path) -> Vec<(String, u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p == skip {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            out.push((p.display().to_string(), md.size(), md.mode()));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The image readers: the input is split at `\0` bytes into an index, a manifest and a config;
/// each is stored as a blob of an OCI layout, the index and manifest (when they are JSON
/// objects) are made to point at the next one by digest, and the layout is resolved. The config
/// alone goes through `ImageConfig` and its accessors too.
pub fn image_json(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let (index, manifest, config) = (parts.next().unwrap_or(b""), parts.next(), parts.next());
    if let Ok(c) = ImageConfig::from_slice(data) {
        exercise_config(&c);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = dir.path().join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let d = Digest::of(bytes);
        fs::write(blobs.join(d.hex()), bytes).unwrap();
        d
    };
    let link = |bytes: &[u8], pointer: &str, target: Option<&[u8]>| -> Vec<u8> {
        let (Ok(mut v), Some(target)) = (serde_json::from_slice::<Value>(bytes), target) else {
            return bytes.to_vec();
        };
        if let Some(slot) = v.pointer_mut(pointer)
            && slot.is_object()
        {
            slot["digest"] = json!(Digest::of(target).to_string());
            slot["size"] = json!(target.len());
        }
        serde_json::to_vec(&v).unwrap()
    };
    let config = config.unwrap_or(b"");
    let manifest = link(manifest.unwrap_or(b""), "/config", Some(config));
    put(config);
    put(&manifest);
    let index = link(index, "/manifests/0", Some(&manifest));
    fs::write(dir.path().join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    fs::write(dir.path().join("index.json"), &index).unwrap();
    if let Ok(layout) = OciLayout::open(dir.path()) {
        let _ = layout.tags();
        for platform in ["linux/amd64", "linux/arm64/v8"] {
            if let Ok(image) = layout.resolve(None, &platform.parse::<Platform>().unwrap()) {
                let _ = image.layer_digests();
                for i in 0..image.layers().len() {
                    image.diff_id(i).expect("validated configs list one diffID per layer");
                }
                exercise_config(&image.config);
            }
        }
    }
}

fn exercise_config(c: &ImageConfig) {
    let _ = (c.os(), c.architecture(), c.variant(), c.user(), c.working_dir(), c.shell(), c.labels());
    let _ = (c.env(), c.diff_ids(), c.history());
    let mut c = c.clone();
    c.set_env("FUZZ", "1");
    c.set_label("fuzz", "1");
    assert_eq!(c.canonical_len(), c.to_canonical_bytes().len());
}
