//! The RUN sandbox and the unpacker against the hostile corpus of
//! testdata/scripts/make-hostile-corpus.py (issue 10): device nodes, setuid binaries, file
//! capabilities, chroot tricks as root, symlink/hard-link/whiteout escapes, header and gzip
//! bombs. Every case ends in a clear error or a safe success, and a canary directory on the
//! host, which every escape aims at, stays untouched.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

/// The hostile corpus, generated once per test into its own temp dir, with a canary dir.
struct Corpus {
    dir: tempfile::TempDir,
}

impl Corpus {
    fn new() -> Corpus {
        let dir = tempfile::tempdir().unwrap();
        let canary = dir.path().join("host");
        fs::create_dir_all(&canary).unwrap();
        fs::write(canary.join("canary"), "original\n").unwrap();
        let probe = escape_probe();
        let out = Command::new(repo_root().join("testdata/scripts/make-hostile-corpus.py"))
            .arg(dir.path().join("corpus"))
            .args(["--canary", &s(&canary), "--probe", &s(&probe)])
            .output()
            .unwrap();
        assert!(out.status.success(), "make-hostile-corpus.py: {}", String::from_utf8_lossy(&out.stderr));
        Corpus { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn canary_dir(&self) -> PathBuf {
        self.path().join("host")
    }

    fn layer(&self, name: &str) -> Vec<u8> {
        fs::read(self.path().join("corpus").join(name)).unwrap()
    }

    /// The canary dir is exactly as created.
    fn assert_untouched(&self, case: &str) {
        let names: Vec<_> = fs::read_dir(self.canary_dir()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("canary")], "{case}: something was written next to the canary");
        assert_eq!(
            fs::read_to_string(self.canary_dir().join("canary")).unwrap(),
            "original\n",
            "{case}: canary changed"
        );
    }

    /// The busybox test image plus `layer` (an uncompressed tar from the corpus) on top.
    fn image_with(&self, name: &str, layer: &str) -> PathBuf {
        let base = self.path().join(format!("img-{name}"));
        make_run_image(&base, "latest", false);
        append_raw_layer(&base, "latest", &self.layer(layer));
        base
    }

    fn build(&self, base: &Path, dockerfile: &str, extra: &[&str]) -> Output {
        self.build_with_env(base, dockerfile, extra, &[])
    }

    fn build_with_env(&self, base: &Path, dockerfile: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let df = self.path().join("run.Dockerfile");
        write(&df, dockerfile);
        let out = self.path().join("out");
        let _ = fs::remove_dir_all(&out);
        Command::new(bin())
            .args(["build", "--from", &format!("oci:{}", s(base)), "-f", &s(&df)])
            .args(["--output", &format!("oci:{}", s(&out))])
            .args(extra)
            .env("EXT_EXTEND_CACHE_DIR", self.path().join("cache"))
            // Every probe must really run: a step-cache hit (the same RUN again, e.g. with
            // another --snapshot mode, which is not part of the key) would print nothing.
            .env("EXT_EXTEND_NO_CACHE", "1")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

fn escape_probe() -> PathBuf {
    example_binary("escape_probe")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `name: result` lines the escape probe printed (its stdout goes to ext-extend's stderr).
fn probe_report(o: &Output) -> std::collections::BTreeMap<String, String> {
    stderr(o)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| {
            [
                "euid",
                "uid_map",
                "CapEff",
                "CapBnd",
                "NoNewPrivs",
                "Seccomp",
                "direct",
                "proc-root",
                "chroot",
                "chroot-climb",
                "mount",
                "unshare",
                "core_pattern",
                "drop_caches",
                "sysrq-trigger",
                "kcore",
                "timer_list",
                "raw-socket",
                "packet-socket",
            ]
            .contains(k)
        })
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Docker's default capability set as /proc/self/status prints it.
const DOCKER_CAPS_HEX: &str = "00000000a80425fb";

#[test]
fn device_nodes_from_layers_cannot_be_opened() {
    let c = Corpus::new();
    let base = c.image_with("devices", "devices.tar");
    for user in ["1000", "root"] {
        let o = c.build(
            &base,
            &format!(
                "FROM ${{base_image}}\nUSER {user}\nRUN echo x > /xx-full; echo \"write=$?\"; head -c 8 /xx-urandom > /dev/null; echo \"read=$?\"\n"
            ),
            &[],
        );
        let err = stderr(&o);
        assert!(o.status.success(), "{user}: {err}");
        // Reachable, /dev/full says "No space left on device" and /dev/urandom gives bytes.
        assert!(err.contains("can't create /xx-full: Permission denied") && err.contains("write=1"), "{user}: {err}");
        assert!(err.contains("/xx-urandom: Permission denied") && err.contains("read=1"), "{user}: {err}");
        assert!(!err.contains("No space left on device"), "{user}: {err}");
    }
    // The sandbox's own /dev still works.
    let o = c.build(&base, "FROM ${base_image}\nRUN head -c 8 /dev/urandom > /dev/null && echo > /dev/null\n", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn setuid_and_file_capability_binaries_grant_nothing() {
    let c = Corpus::new();
    let canary = s(&c.canary_dir().join("canary"));
    for layer in ["setuid-probe.tar", "filecaps-probe.tar"] {
        let base = c.image_with(layer, layer);
        let o = c.build(
            &base,
            &format!("FROM ${{base_image}}\nUSER 1000\nRUN /usr/local/bin/escape-probe {canary}\n"),
            &[],
        );
        assert!(o.status.success(), "{layer}: {}", stderr(&o));
        let r = probe_report(&o);
        assert_eq!(r.get("euid").map(String::as_str), Some("1000"), "{layer}: {r:?}");
        assert_eq!(r.get("CapEff").map(String::as_str), Some("0000000000000000"), "{layer}: {r:?}");
        assert!(r["chroot"].starts_with("refused"), "{layer}: {r:?}");
        assert!(r["direct"].starts_with("refused") && r["proc-root"].starts_with("refused"), "{layer}: {r:?}");
        c.assert_untouched(layer);
    }
}

/// What the escape probe must report as image root, with or without a user namespace.
fn assert_confined_root(r: &std::collections::BTreeMap<String, String>, case: &str, userns: bool) {
    assert_eq!(r.get("euid").map(String::as_str), Some("0"), "{case}: {r:?}");
    // The chroot climb works as a system call, but ends in the image root: the host path is
    // not there.
    assert!(r["chroot-climb"].starts_with("refused"), "{case}: {r:?}");
    assert!(r["direct"].starts_with("refused") && r["proc-root"].starts_with("refused"), "{case}: {r:?}");
    assert!(r["mount"].starts_with("refused: Operation not permitted"), "{case}: {r:?}");
    assert!(r["unshare"].starts_with("refused: Operation not permitted"), "{case}: {r:?}");
    // Kernel settings cannot be written (a core_pattern of `|/image/file` would run image
    // content as host root at the next crash), kernel memory cannot be read.
    // (Kernels without CONFIG_MAGIC_SYSRQ or CONFIG_PROC_KCORE, like this CI's, have neither
    // file: then the probe must find none.)
    let on_host = |p: &str| Path::new(p).exists();
    for (key, path) in [
        ("core_pattern", "/proc/sys/kernel/core_pattern"),
        ("drop_caches", "/proc/sys/vm/drop_caches"),
        ("sysrq-trigger", "/proc/sysrq-trigger"),
    ] {
        // (In a user namespace, the file's owner, host root, refuses before the mount does.)
        let ok = match on_host(path) {
            true => {
                r[key].starts_with("refused: Read-only file system")
                    || (userns && r[key].starts_with("refused: Permission denied"))
            }
            false => r[key].starts_with("refused: No such file"),
        };
        assert!(ok, "{case}: {key}: {r:?}");
    }
    for (key, path) in [("kcore", "/proc/kcore"), ("timer_list", "/proc/timer_list")] {
        let want = if on_host(path) { "empty" } else { "refused: No such file" };
        assert!(r[key].starts_with(want), "{case}: {key}: {r:?}");
    }
    // No raw or packet sockets on the host's network.
    for key in ["raw-socket", "packet-socket"] {
        assert!(r[key].starts_with("refused: Operation not permitted"), "{case}: {key}: {r:?}");
    }
    let no_net_raw = u64::from_str_radix(DOCKER_CAPS_HEX, 16).unwrap() & !(1 << 13);
    assert_eq!(r.get("CapBnd").map(String::as_str), Some(format!("{no_net_raw:016x}").as_str()), "{case}: {r:?}");
    assert_eq!(r.get("NoNewPrivs").map(String::as_str), Some("1"), "{case}: {r:?}");
    assert_eq!(r.get("Seccomp").map(String::as_str), Some("2"), "{case}: {r:?}");
}

#[test]
fn root_in_run_cannot_leave_the_image_root() {
    let c = Corpus::new();
    let canary = s(&c.canary_dir().join("canary"));
    let base = c.image_with("probe", "probe.tar");
    let df = format!("FROM ${{base_image}}\nUSER root\nRUN /usr/local/bin/escape-probe {canary}\n");
    for mode in ["overlay", "stat"] {
        let o = c.build(&base, &df, &["--snapshot", mode]);
        assert!(o.status.success(), "{mode}: {}", stderr(&o));
        let r = probe_report(&o);
        // Image root is root of a user namespace, host uid 2^31: not host root.
        assert_eq!(r.get("uid_map").map(String::as_str), Some("0 2147483648 2147483647"), "{mode}: {r:?}");
        assert_confined_root(&r, mode, true);
        c.assert_untouched(mode);
    }
}

#[test]
fn root_without_a_user_namespace_cannot_write_kernel_settings_or_read_kernel_memory() {
    let c = Corpus::new();
    let canary = s(&c.canary_dir().join("canary"));
    let base = c.image_with("probe", "probe.tar");
    let df = format!("FROM ${{base_image}}\nUSER root\nRUN /usr/local/bin/escape-probe {canary}\n");
    for mode in ["overlay", "stat"] {
        let o = c.build_with_env(&base, &df, &["--snapshot", mode], &[("EXT_EXTEND_USERNS", "off")]);
        let err = stderr(&o);
        assert!(o.status.success(), "{mode}: {err}");
        // Said at info level, with the reason.
        assert!(err.contains("RUN runs without a user namespace (EXT_EXTEND_USERNS=off)"), "{mode}: {err}");
        let r = probe_report(&o);
        // Image root is host root here: only the rest of the sandbox holds.
        assert_eq!(r.get("uid_map").map(String::as_str), Some("0 0 4294967295"), "{mode}: {r:?}");
        assert_confined_root(&r, mode, false);
        c.assert_untouched(mode);
    }
}

#[test]
fn userns_require_refuses_to_run_without_one_and_bad_values_are_errors() {
    let c = Corpus::new();
    let base = c.image_with("probe", "probe.tar");
    // Here the kernel gives one: require changes nothing.
    let o = c.build_with_env(&base, "FROM ${base_image}\nRUN true\n", &[], &[("EXT_EXTEND_USERNS", "require")]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("without a user namespace"), "{}", stderr(&o));
    let o = c.build_with_env(&base, "FROM ${base_image}\nRUN true\n", &[], &[("EXT_EXTEND_USERNS", "sometimes")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("EXT_EXTEND_USERNS=sometimes: expected auto, off (or 0) or require"), "{}", stderr(&o));
}

#[test]
fn escaping_layers_are_refused_and_write_nothing_outside() {
    let c = Corpus::new();
    let refused = [
        ("dotdot-name.tar", "`..`"),
        ("hardlink-out.tar", "hard-link target"),
        ("hardlink-absolute.tar", "hard-link target"),
        ("whiteout-climb.tar", "`..`"),
        ("absolute-name.tar", "it is an absolute path"),
    ];
    for (layer, needle) in refused {
        let base = c.image_with(layer, layer);
        for df in ["FROM ${base_image}\nRUN true\n", "FROM ${base_image}\nUSER root\nRUN touch /ok\n"] {
            let o = c.build(&base, df, &[]);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{layer}: {err}");
            assert!(err.contains(needle), "{layer}: {err}");
            c.assert_untouched(layer);
        }
    }
    // Symlinks in a layer's paths resolve inside the image root, as in a chroot (containerd
    // and umoci unpack them so): the layers are built, and nothing outside is touched.
    for layer in [
        "symlink-absolute.tar",
        "symlink-climb.tar",
        "symlink-chain.tar",
        "dir-replaced-by-symlink.tar",
        "whiteout-through-symlink.tar",
        "opaque-through-symlink.tar",
    ] {
        let base = c.image_with(layer, layer);
        for df in ["FROM ${base_image}\nRUN true\n", "FROM ${base_image}\nUSER root\nRUN touch /ok\n"] {
            let o = c.build(&base, df, &[]);
            assert!(o.status.success(), "{layer}: {}", stderr(&o));
            c.assert_untouched(layer);
        }
    }
}

#[test]
fn header_bombs_fail_fast_with_a_clear_error() {
    let c = Corpus::new();
    for layer in ["gnu-longname-bomb.tar", "pax-bomb.tar"] {
        let base = c.image_with(layer, layer);
        for df in ["FROM ${base_image}\nRUN true\n", "FROM ${base_image}\nCOPY run.Dockerfile /x\n"] {
            let started = Instant::now();
            let o = Command::new(bin())
                .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&c.path().join("df"))])
                .args(["--context", &s(c.path()), "--output", &format!("oci:{}", s(&c.path().join("out")))])
                .env("EXT_EXTEND_CACHE_DIR", c.path().join("cache"))
                .stdin(std::process::Stdio::null())
                .output_with_dockerfile(&c.path().join("df"), df);
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(1), "{layer}: {err}");
            assert!(err.contains("GNU long names, PAX records) exceed 4 MiB"), "{layer}: {err}");
            assert!(started.elapsed() < Duration::from_secs(30), "{layer}: {:?}", started.elapsed());
        }
    }
}

trait WithDockerfile {
    fn output_with_dockerfile(&mut self, path: &Path, text: &str) -> Output;
}

impl WithDockerfile for Command {
    fn output_with_dockerfile(&mut self, path: &Path, text: &str) -> Output {
        write(path, text);
        self.output().unwrap()
    }
}

/// A small tmpfs (as root), unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&o.stderr));
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_gzip_bomb_stops_before_the_scratch_disk_is_full() {
    let c = Corpus::new();
    let base = c.path().join("img-bomb");
    make_run_image(&base, "latest", false);
    // The bomb as it is: 100 MiB of tar in ~100 KB of gzip.
    let gz = c.layer("gzip-bomb.tar.gz");
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
    append_raw_layer(&base, "latest", &tar);
    drop(tar);
    let small = SmallFs::mount("48m");
    let o = Command::new(bin())
        .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&c.path().join("df"))])
        .args(["--output", &format!("oci:{}", s(&c.path().join("out")))])
        .args(["--scratch-dir", &s(&small.0.path().join("scratch")), "--cache-dir", &s(&small.0.path().join("cache"))])
        .output_with_dockerfile(&c.path().join("df"), "FROM ${base_image}\nRUN true\n");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the scratch filesystem is nearly full") && err.contains("entry `bomb`"), "{err}");
    let st = nix_free(small.0.path());
    assert!(st > 2 << 20, "only {st} bytes left on the scratch filesystem");
    // Nothing is left behind on it either.
    assert!(fs::read_dir(small.0.path().join("scratch")).map(|r| r.count()).unwrap_or(0) == 0);
}

fn nix_free(path: &Path) -> u64 {
    let o = Command::new("df").args(["-B1", "--output=avail"]).arg(path).output().unwrap();
    String::from_utf8_lossy(&o.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
}

fn sleep_running(marker: &str) -> bool {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker)))
}

#[test]
fn a_non_root_run_dies_with_ext_extend_whatever_kills_it() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    for (signal, marker) in [(libc::SIGKILL, "41.11"), (libc::SIGTERM, "41.12"), (libc::SIGINT, "41.13")] {
        let df = t.path().join("run.Dockerfile");
        write(&df, &format!("FROM ${{base_image}}\nUSER 1000\nRUN sleep {marker}\n"));
        let mut child = Command::new(bin())
            .args(["build", "--from", &format!("oci:{}", s(&base)), "-f", &s(&df)])
            .args(["--output", &format!("oci:{}", s(&t.path().join("out")))])
            .env("EXT_EXTEND_CACHE_DIR", t.path().join("cache"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !sleep_running(marker) {
            assert!(started.elapsed() < Duration::from_secs(60), "the RUN never started");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        child.wait().unwrap();
        let killed = Instant::now();
        while sleep_running(marker) {
            assert!(killed.elapsed() < Duration::from_secs(5), "signal {signal}: the RUN outlived ext-extend");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What RUN reaches on the network (README "Security"): by default the host's network
/// namespace, loopback services included, as with `docker build --network=host`; with
/// `--network=none`, nothing.
#[test]
fn run_reaches_host_loopback_services_unless_network_none() {
    let c = Corpus::new();
    let base = c.path().join("img");
    make_run_image(&base, "latest", false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = std::io::Write::write_all(
                &mut stream,
                b"HTTP/1.0 200 OK\r\nContent-Length: 17\r\n\r\nhost-loopback-ok\n",
            );
        }
    });
    for (flag, expect) in [("", "host-loopback-ok"), ("--network=none ", "reach=1")] {
        let df = format!("FROM ${{base_image}}\nRUN {flag}wget -qO- http://127.0.0.1:{port}/; echo \"reach=$?\"\n");
        let o = c.build(&base, &df, &[]);
        let err = stderr(&o);
        assert!(o.status.success(), "{flag}: {err}");
        assert!(err.contains(expect), "{flag}: {err}");
        if flag.is_empty() {
            assert!(err.contains("reach=0"), "{err}");
        } else {
            assert!(!err.contains("host-loopback-ok"), "{err}");
        }
    }
}
