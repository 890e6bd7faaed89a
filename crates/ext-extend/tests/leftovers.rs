//! Lifecycle of files, locks and transfers (issue 10): stale temporary directories of killed
//! runs are swept, concurrent writers of one layout all land, a relative cache dir works, the
//! blob cache re-verifies what changed, and registry faults (429s, stalled transfers) are
//! retried within bounds. Registry faults are injected by a small proxy in front of a real
//! registry.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A pid that is certainly not running (a child that exited and was reaped).
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn build_cmd(base: &Path, out: &str, df: &Path, ctx: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.args(["build", "--from", &format!("oci:{}:latest", s(base)), "-f", &s(df), "--context", &s(ctx)])
        .args(["--output", out, "--cache-dir", &s(cache)])
        .env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// Holds `<dir>.lock` from a process in a PID namespace of its own, as the other extender
/// pack runs at the same time on the shared `/kaniko` volume does (issue 18: the sweep used to
/// trust PIDs, and this one's PID means nothing here). Killed on drop.
struct ForeignOwner(std::process::Child);

impl ForeignOwner {
    fn hold(dir: &Path) -> ForeignOwner {
        let lock = format!("{}.lock", s(dir));
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "flock", "-x", &lock, "-c", "echo locked; exec sleep 120"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = [0u8; 7];
        child.stdout.take().unwrap().read_exact(&mut line).unwrap();
        assert_eq!(&line, b"locked\n");
        ForeignOwner(child)
    }
}

impl Drop for ForeignOwner {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn temporary_directories_of_killed_runs_are_swept() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    write(&t.path().join("ctx/a.txt"), "a\n");
    let df = t.path().join("run.Dockerfile");
    write(&df, "FROM ${base_image}\nCOPY a.txt /a.txt\nRUN echo x > /tmp/x\n");
    let cache = t.path().join("cache");
    let outdir = t.path().join("outputs");
    fs::create_dir_all(cache.join("unpacked")).unwrap();
    fs::create_dir_all(&outdir).unwrap();
    let dead = dead_pid();
    let plant = |dir: &Path| {
        fs::create_dir_all(dir.join("blobs")).unwrap();
        fs::write(dir.join("blobs/big"), vec![0u8; 4096]).unwrap();
    };
    let lock_of = |dir: &Path| std::path::PathBuf::from(format!("{}.lock", s(dir)));
    // A killed run's directories: their lock files are there, held by nobody.
    let stale_staging = outdir.join(".ext-extend-staging-AbCdEf");
    let stale_unpacking = cache.join("unpacked/.unpacking-MnOpQr");
    // Live ones of a run in another PID namespace, named (as older versions did) with a pid
    // that is dead in this one.
    let live_staging = outdir.join(format!(".ext-extend-staging-{dead}-GhIjKl"));
    let live_unpacking = cache.join(format!("unpacked/.unpacking-{dead}-StUvWx"));
    // Without a lock: recent ones may be a live older version's, so they stay; a day old, not.
    let unlocked_recent = outdir.join(format!(".ext-extend-staging-{dead}-recent"));
    let unlocked_old = outdir.join(format!(".ext-extend-staging-{dead}-old"));
    let unrelated = outdir.join("ext-extend-staging-notours");
    for d in [&stale_staging, &live_staging, &stale_unpacking, &live_unpacking, &unlocked_recent, &unlocked_old] {
        plant(d);
    }
    plant(&unrelated);
    for d in [&stale_staging, &stale_unpacking] {
        fs::write(lock_of(d), b"").unwrap();
    }
    let _owners = [ForeignOwner::hold(&live_staging), ForeignOwner::hold(&live_unpacking)];
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    fs::File::open(&unlocked_old).unwrap().set_modified(two_days_ago).unwrap();
    let o = build_cmd(&base, &format!("oci:{}", s(&outdir.join("img"))), &df, &t.path().join("ctx"), &cache)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for gone in [&stale_staging, &stale_unpacking, &unlocked_old] {
        assert!(!gone.exists(), "{} removed", gone.display());
    }
    assert!(!lock_of(&stale_staging).exists() && !lock_of(&stale_unpacking).exists(), "their locks too");
    for kept in [&live_staging, &live_unpacking, &unlocked_recent, &unrelated] {
        assert!(kept.join("blobs/big").exists(), "{} kept", kept.display());
    }
}

#[test]
fn a_build_killed_outright_leaves_nothing_the_next_run_keeps() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    fs::create_dir_all(t.path().join("ctx")).unwrap();
    let df = t.path().join("run.Dockerfile");
    write(&df, "FROM ${base_image}\nUSER root\nRUN echo started > /started && sleep 31.5\n");
    let cache = t.path().join("cache");
    let outdir = t.path().join("outputs");
    fs::create_dir_all(&outdir).unwrap();
    let scratch = t.path().join("scratch");
    let out = format!("oci:{}", s(&outdir.join("img")));
    let mut child = build_cmd(&base, &out, &df, &t.path().join("ctx"), &cache)
        .args(["--scratch-dir", &s(&scratch)])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let listing = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    while !listing(&outdir).iter().any(|n| n.starts_with(".ext-extend-staging-"))
        || !listing(&scratch).iter().any(|n| n.starts_with("ext-extend-"))
        || !fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("31.5")))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "the RUN never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup runs
    child.wait().unwrap();
    assert!(listing(&outdir).iter().any(|n| n.starts_with(".ext-extend-staging-")), "left by the kill");
    // The next run (a quick one) sweeps what the killed one left.
    write(&df, "FROM ${base_image}\nLABEL a=b\n");
    let o = build_cmd(&base, &out, &df, &t.path().join("ctx"), &cache)
        .args(["--scratch-dir", &s(&scratch)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listing(&outdir), vec!["img".to_string()]);
    assert!(listing(&scratch).is_empty(), "{:?}", listing(&scratch));
    assert!(!listing(&cache.join("unpacked")).iter().any(|n| n.starts_with(".unpacking-")));
}

#[test]
fn concurrent_writers_of_one_layout_all_land() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    fs::create_dir_all(t.path().join("ctx")).unwrap();
    let cache = t.path().join("cache");
    let layout = t.path().join("shared");
    const WRITERS: usize = 15;
    let children: Vec<_> = (0..WRITERS)
        .map(|i| {
            let df = t.path().join(format!("{i}.Dockerfile"));
            write(&df, &format!("FROM ${{base_image}}\nLABEL writer={i}\n"));
            build_cmd(&base, &format!("oci:{}:t{i}", s(&layout)), &df, &t.path().join("ctx"), &cache)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, c) in children.into_iter().enumerate() {
        let o = c.wait_with_output().unwrap();
        if !o.status.success() {
            failures.push(format!("writer {i}: {}", String::from_utf8_lossy(&o.stderr)));
        }
    }
    assert!(failures.is_empty(), "{} of {WRITERS} failed:\n{}", failures.len(), failures.join("\n"));
    for i in 0..WRITERS {
        let info = skopeo_inspect(&layout, &format!("t{i}"), &[]);
        assert_eq!(info["Labels"]["writer"], i.to_string());
    }
    let names: Vec<String> =
        fs::read_dir(&layout).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    let mut names = names;
    names.sort();
    assert_eq!(names, vec!["blobs", "index.json", "oci-layout"], "no temporary files left");
    let leftovers: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".ext-extend-staging-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn a_relative_cache_dir_works_for_run() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    make_run_image(&base, "latest", false);
    fs::create_dir_all(t.path().join("ctx")).unwrap();
    write(&t.path().join("run.Dockerfile"), "FROM ${base_image}\nRUN echo hi > /tmp/hi\n");
    let o = Command::new(bin())
        .current_dir(t.path())
        .args(["build", "--from", "oci:base:latest", "-f", "run.Dockerfile", "--context", "ctx"])
        .args(["--output", "oci:out", "--cache-dir", "relcache", "--scratch-dir", "relscratch"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_g, rootfs) = umoci_unpack(&t.path().join("out"), "latest");
    assert_eq!(fs::read_to_string(rootfs.join("tmp/hi")).unwrap(), "hi\n");
}

/// What the proxy does to requests.
#[derive(Clone, Copy)]
enum Fault {
    /// The first N requests get `429` with an `UNKNOWN` error body.
    TooManyRequests(usize),
    /// Blob downloads send their headers and 1000 bytes, then nothing (the socket stays open).
    StallBlobs,
}

/// A TCP proxy in front of a registry that injects [`Fault`]s; every request is forwarded
/// with `Connection: close`, so each one arrives on a fresh connection.
struct FaultProxy {
    addr: String,
    stop: Arc<AtomicBool>,
    faults_served: Arc<AtomicUsize>,
}

impl FaultProxy {
    fn start(upstream: &str, fault: Fault) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let faults_served = Arc::new(AtomicUsize::new(0));
        let (stop2, served2, upstream) = (stop.clone(), faults_served.clone(), upstream.to_string());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let (stop, served, upstream) = (stop2.clone(), served2.clone(), upstream.clone());
                        std::thread::spawn(move || {
                            let _ = serve(client, &upstream, fault, &served, &stop);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultProxy { addr, stop, faults_served }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    fault: Fault,
    served: &AtomicUsize,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let request_line = text.lines().next().unwrap_or_default().to_string();
    if let Fault::TooManyRequests(n) = fault
        && served.fetch_add(1, Ordering::SeqCst) < n
    {
        let body = r#"{"errors":[{"code":"UNKNOWN","message":"slow down"}]}"#;
        write!(
            client,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return Ok(());
    }
    let mut forwarded: Vec<String> = text
        .split("\r\n")
        .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
        .map(String::from)
        .collect();
    forwarded.push("Connection: close".into());
    let length: usize = text
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    client.read_exact(&mut body)?;
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(format!("{}\r\n\r\n", forwarded.join("\r\n")).as_bytes())?;
    up.write_all(&body)?;
    let stall = matches!(fault, Fault::StallBlobs)
        && request_line.starts_with("GET ")
        && request_line.contains("/blobs/sha256:");
    let mut sent = 0usize;
    let mut buf = [0u8; 8192];
    loop {
        let n = up.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let n = if stall { n.min(2000usize.saturating_sub(sent)) } else { n };
        client.write_all(&buf[..n])?;
        sent += n;
        if stall && sent >= 2000 {
            served.fetch_add(1, Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return Ok(());
        }
    }
    Ok(())
}

fn registry_build(proxy: &FaultProxy, t: &Path, extra: &[&str]) -> std::process::Output {
    write(&t.join("ctx/a.txt"), "a\n");
    write(&t.join("run.Dockerfile"), "FROM ${base_image}\nCOPY a.txt /a.txt\n");
    let _ = fs::remove_dir_all(t.join("cache"));
    let _ = fs::remove_dir_all(t.join("out"));
    Command::new(bin())
        .args(["build", "--from", &format!("docker://{}/test/busybox:latest", proxy.addr)])
        .args(["-f", &s(&t.join("run.Dockerfile")), "--context", &s(&t.join("ctx"))])
        .args(["--output", &format!("oci:{}", s(&t.join("out"))), "--cache-dir", &s(&t.join("cache"))])
        .args(extra)
        .env_remove("CNB_REGISTRY_AUTH")
        .env("DOCKER_CONFIG", t.join("no-docker-config"))
        .output()
        .unwrap()
}

fn registry_with_busybox(t: &Path) -> Registry {
    let reg = Registry::start();
    let base = t.join("base");
    make_run_image(&base, "latest", false);
    reg.push_layout(&base, "latest", "test/busybox:latest");
    reg
}

#[test]
fn http_429_with_an_unknown_error_body_is_retried() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(t.path());
    let proxy = FaultProxy::start(&reg.addr, Fault::TooManyRequests(3));
    let o = registry_build(&proxy, t.path(), &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // (oci-client swallows the failures of its own `/v2/` auth probes; the rest are retried.)
    assert!(proxy.faults_served.load(Ordering::SeqCst) > 3, "requests after the three 429s");
    assert!(stderr.contains("too many requests (UNKNOWN: slow down); retrying"), "{stderr}");
}

#[test]
fn a_stalled_download_is_abandoned_after_the_stall_timeout() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(t.path());
    let proxy = FaultProxy::start(&reg.addr, Fault::StallBlobs);
    let started = Instant::now();
    let o = registry_build(&proxy, t.path(), &["--stall-timeout", "1"]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("unreachable after 5 attempts: the transfer stalled (no data for 1s)"), "{stderr}");
    assert_eq!(proxy.faults_served.load(Ordering::SeqCst), 5, "each attempt stalled once");
    // 5 stalls of 1 s plus ~7.5 s of backoff; without the watchdog each attempt waited 120 s.
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
    assert!(!t.path().join("out").exists());
}

#[test]
fn a_changed_cached_blob_is_verified_again_and_cache_verify_finds_corruption() {
    let t = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(t.path());
    let base = format!("docker://{}/test/busybox:latest", reg.addr);
    let cache = t.path().join("cache");
    write(&t.path().join("ctx/a.txt"), "a\n");
    write(&t.path().join("run.Dockerfile"), "FROM ${base_image}\nLABEL x=y\n");
    let build = |out: &str| {
        Command::new(bin())
            .args(["build", "--from", &base, "-f", &s(&t.path().join("run.Dockerfile"))])
            .args(["--context", &s(&t.path().join("ctx")), "--output", &format!("oci:{}", s(&t.path().join(out)))])
            .args(["--cache-dir", &s(&cache)])
            .env("DOCKER_CONFIG", t.path().join("none"))
            .output()
            .unwrap()
    };
    let first = build("out1");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let layers = layer_digests(&skopeo_inspect(&t.path().join("out1"), "latest", &[]));
    let blob = cache.join("blobs/sha256").join(layers[0].trim_start_matches("sha256:"));
    // Flip a byte and put the mtime back: only ctime (and content) tell.
    let flip = || {
        let mtime = filetime::FileTime::from_last_modification_time(&fs::metadata(&blob).unwrap());
        let mut bytes = fs::read(&blob).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 0x40;
        // A new file under the same name, as an editor or a restore would leave it.
        let tmp = blob.with_extension("tmp");
        fs::write(&tmp, &bytes).unwrap();
        fs::rename(&tmp, &blob).unwrap();
        filetime::set_file_mtime(&blob, mtime).unwrap();
    };
    flip();
    let second = build("out2");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert!(stderr.contains("changed since it was verified"), "{stderr}");
    // The output holds the real layer (downloaded again), not the flipped one.
    let out_blob = t.path().join("out2/blobs/sha256").join(layers[0].trim_start_matches("sha256:"));
    assert_eq!(ext_oci::Digest::of(&fs::read(out_blob).unwrap()).to_string(), layers[0]);

    // `cache verify` re-hashes everything: the flip is found even with the stat unchanged.
    flip();
    let verify = |expect: i32| {
        let o = Command::new(bin()).args(["cache", "verify", "--cache-dir", &s(&cache)]).output().unwrap();
        let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.status.code(), Some(expect), "{all}");
        all
    };
    let report = verify(1);
    assert!(
        report.contains(&format!("removed corrupt blob {}", layers[0])) && report.contains("1 corrupt removed"),
        "{report}"
    );
    let report = verify(0);
    assert!(report.contains("0 corrupt removed"), "{report}");
}
