//! End-to-end hardening tests (issue 10): hostile Dockerfiles, contexts and images end with a
//! clear error (or a safe success), write nothing outside the scratch root and the output, and
//! leave nothing behind.

mod common;

use std::fs;

use common::*;

#[test]
fn config_over_4_mib_is_refused_before_writing() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    let ctx = t.path().join("ctx");
    fs::create_dir(&ctx).unwrap();
    // Each LABEL is under the 1 MiB word limit; with the history entries (which quote each
    // instruction) the config passes 4 MiB at the third, line 4.
    let mut df = String::from("FROM ${base_image}\n");
    for i in 0..6 {
        df.push_str(&format!("LABEL big{i}={}\n", "x".repeat(1_000_000)));
    }
    write(&ctx.join("run.Dockerfile"), &df);
    let out = t.path().join("out");
    let stderr = build_err(
        &[
            "build",
            "--from",
            &format!("oci:{}:latest", s(&base)),
            "-f",
            &s(&ctx.join("run.Dockerfile")),
            "--context",
            &s(&ctx),
            "--output",
            &format!("oci:{}:x", s(&out)),
        ],
        2,
    );
    assert!(
        stderr.contains("run.Dockerfile:4: LABEL makes the image config")
            && stderr.contains("more than the 4 MiB container tools accept"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written");
    let leftovers: Vec<_> = fs::read_dir(t.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 2, "only base and ctx remain: {leftovers:?}");
}
