//! ext-extend is copied into run images we do not choose (distroless without a libc, musl,
//! old glibc): the binary must be a static executable that needs nothing from the image, not
//! even glibc's NSS modules for name resolution or a CA bundle for a registry.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn the_binary_is_static() {
    require("file");
    let out = Command::new("file").arg("-L").arg(bin()).output().unwrap();
    let desc = String::from_utf8_lossy(&out.stdout);
    assert!(desc.contains("statically linked") || desc.contains("static-pie linked"), "file says: {desc}");
    let out = Command::new("ldd").arg(bin()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("not a dynamic executable") || text.contains("statically linked"), "ldd says: {text}");
}

#[test]
fn it_runs_in_an_empty_root_and_resolves_names_without_nss() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    fs::create_dir_all(&root).unwrap();
    fs::copy(bin(), root.join("ext-extend")).unwrap();
    let out = Command::new("chroot").arg(&root).args(["/ext-extend", "--version"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ext-extend "));

    // In a container of a scratch image (only the binary, plus what a runtime provides: /proc,
    // /dev, /etc/hosts naming the registry host), a registry by host name: no libc, no NSS
    // modules, no CA bundle, no /etc/resolv.conf content.
    let image = t.path().join("image");
    make_run_image(&image, "latest", true);
    let reg = Registry::start();
    reg.push_layout(&image, "latest", "static/base:latest");
    let port = reg.addr.rsplit(':').next().unwrap();
    write(&root.join("Dockerfile"), "FROM ${base_image}\nLABEL resolved=yes\n");
    let container = common::container::Container::new(&root);
    let out = container
        .command("/ext-extend")
        .args([
            "build",
            "--from",
            &format!("docker://registry.test:{port}/static/base:latest"),
            "--insecure-registry",
            &format!("registry.test:{port}"),
            "--cache-dir",
            "/cache",
            "-f",
            "/Dockerfile",
            "--context",
            "/",
            "--output",
            "oci:/out:x",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cfg = skopeo_inspect(&root.join("out"), "x", &["--config"]);
    assert_eq!(cfg["config"]["Labels"]["resolved"], "yes");
}
