#!/usr/bin/env python3
"""`make bench`: ext-extend against Buildah and against the physical limit, on generated workloads.

For each workload and tool: 1 warm-up run, then --runs measured runs (default 5), tools
interleaved run by run so background load hits them alike. Each run is one child process (or a
few, summed) reaped with wait4: wall time, user+sys CPU, peak RSS (GNU time's %M: the largest
resident set in the tool's process tree), bytes it caused to be written (rusage oublock), and the bytes of the
output image that are new (blobs whose digest the base image does not have).

Writes bench/results/latest.md (printed) and bench/results/latest.json (every run).
Workloads are generated once into bench/work/<VERSION>/ (see workloads.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORK = BENCH / "work"
RESULTS = BENCH / "results"
DOCKERFILES = BENCH / "workloads"
TARGET = os.environ.get("CARGO_BUILD_TARGET", "x86_64-unknown-linux-gnu")  # see .cargo/config.toml
EXT = REPO / "target" / TARGET / "release" / "ext-extend"
LIMIT = REPO / "target" / TARGET / "release" / "bench-limit"
MIB = 1024 * 1024

RUN_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Sample:
    wall: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    maxrss: int = 0  # bytes
    io_written: int = 0  # bytes (rusage oublock * 512): includes scratch, caches, output
    output_bytes: int | None = None  # bytes of new blobs in the result
    parts: dict = field(default_factory=dict)  # name -> wall seconds
    info: dict = field(default_factory=dict)  # parsed logs etc.

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def add(self, other: "Sample", part: str) -> "Sample":
        self.wall += other.wall
        self.user += other.user
        self.sys += other.sys
        self.maxrss = max(self.maxrss, other.maxrss)
        self.io_written += other.io_written
        self.parts[part] = self.parts.get(part, 0.0) + other.wall
        return self

    def to_json(self) -> dict:
        return {"wall": self.wall, "cpu": self.cpu, "user": self.user, "sys": self.sys, "maxrss": self.maxrss,
                "io_written": self.io_written, "output_bytes": self.output_bytes, "parts": self.parts,
                "info": self.info}


class RunFailed(Exception):
    pass


def measure(argv: list, logdir: Path, name: str, env: dict | None = None, cwd: Path | None = None,
            check: bool = True) -> tuple[Sample, int, str]:
    """Runs argv as a child, reaps it with wait4. Returns (sample, exit code, stderr text)."""
    logdir.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logdir / f"{name}.out", logdir / f"{name}.err"
    rss_path = logdir / f"{name}.maxrss"
    # Peak RSS comes from GNU time, which fork()s the tool from its own small process: a child
    # that Python starts (vfork + exec) inherits Python's own high-water mark in ru_maxrss,
    # which would report the harness's size instead of the tool's.
    timed = ["/usr/bin/time", "-f", "%M", "-o", str(rss_path)] + [str(a) for a in argv]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(timed, stdout=out, stderr=err, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    stderr = err_path.read_text(errors="replace")
    if check and p.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-5:])
        raise RunFailed(f"{' '.join(map(str, argv[:4]))} ... exited {p.returncode}:\n{tail}")
    rss_lines = [l for l in rss_path.read_text().splitlines() if l.strip().isdigit()] if rss_path.exists() else []
    maxrss = int(rss_lines[-1]) * 1024 if rss_lines else ru.ru_maxrss * 1024
    s = Sample(wall=wall, user=ru.ru_utime, sys=ru.ru_stime, maxrss=maxrss, io_written=ru.ru_oublock * 512)
    return s, p.returncode, stderr


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# Images


def layout_manifest(layout: Path) -> dict:
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"]
    return json.loads((layout / "blobs/sha256" / digest.split(":")[1]).read_text())


def layout_digests(layout: Path) -> set[str]:
    m = layout_manifest(layout)
    return {m["config"]["digest"]} | {l["digest"] for l in m["layers"]}


def new_blob_bytes(layout: Path, base: set[str]) -> int:
    """Bytes of the blobs of the output layout that the base image does not have."""
    total = 0
    for f in (layout / "blobs" / "sha256").iterdir():
        if "sha256:" + f.name not in base:
            total += f.stat().st_size
    return total


def new_layers(layout: Path, base: set[str]) -> list[Path]:
    m = layout_manifest(layout)
    return [layout / "blobs/sha256" / l["digest"].split(":")[1] for l in m["layers"] if l["digest"] not in base]


def gzip_isize(path: Path) -> int:
    """Uncompressed size mod 2^32 of a gzip file's last member (whole file if one member)."""
    with open(path, "rb") as f:
        f.seek(-4, 2)
        return int.from_bytes(f.read(4), "little")


def layer_entries(blob: Path) -> list[tuple[str, str]]:
    """(path, kind) of a gzip layer's entries; kind in dir, file, link, whiteout."""
    out = []
    with tarfile.open(blob, "r:gz") as t:
        for m in t:
            name = m.name[2:] if m.name.startswith("./") else m.name
            base = os.path.basename(name)
            if base.startswith(".wh."):
                out.append((os.path.join(os.path.dirname(name), base[4:]), "whiteout"))
            elif m.isdir():
                out.append((name.rstrip("/"), "dir"))
            else:
                out.append((name, "file"))
    return out


def dockerfile_runs(df: Path) -> list[str]:
    return [l[4:].strip() for l in df.read_text().splitlines() if l.startswith("RUN ")]


# ---------------------------------------------------------------------------------------------
# Log parsing (ext-extend, info level)

RE_UNPACK = re.compile(r"unpacked (\d+) layers \(([\d.]+) MB(?:, (\d+) from the unpacked-layer cache)?\) for RUN in ([\d.]+)s")
RE_RUN = re.compile(r": (\d+) changes -> layer \S+ \((\d+) bytes\); sandbox\+command ([\d.]+)s, diff ([\d.]+)s, "
                    r"layer ([\d.]+)s, step ([\d.]+)s")


RE_CACHE = re.compile(r": step cache (hit|miss) \(")


def parse_ext_log(stderr: str) -> dict:
    info: dict = {"unpacks": [], "runs": []}
    outcomes = RE_CACHE.findall(stderr)
    info["step_cache_hits"] = outcomes.count("hit")
    info["step_cache_misses"] = outcomes.count("miss")
    for m in RE_UNPACK.finditer(stderr):
        info["unpacks"].append({"layers": int(m.group(1)), "mb": float(m.group(2)),
                                "cache_hits": int(m.group(3)) if m.group(3) else None, "seconds": float(m.group(4))})
    for m in RE_RUN.finditer(stderr):
        # "command" includes the sandbox's setup (namespaces, mounts); "snapshot" is what
        # follows the command: finding the changes and writing the layer.
        info["runs"].append({"changes": int(m.group(1)), "layer_bytes": int(m.group(2)),
                             "command": float(m.group(3)), "diff": float(m.group(4)), "layer": float(m.group(5)),
                             "snapshot": float(m.group(4)) + float(m.group(5)), "step": float(m.group(6))})
    return info


# ---------------------------------------------------------------------------------------------
# The tools


class Env:
    def __init__(self, args):
        self.args = args
        self.root = workloads.ensure(REPO, WORK, LIMIT, log=log)
        self.base = self.root / "base-300"
        self.base1g = self.root / "base-1g"
        self.base_digests = layout_digests(self.base)
        self.base1g_digests = layout_digests(self.base1g)
        self.tmp = WORK / "run"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.scratch = self.tmp / "scratch"
        self.scratch.mkdir()
        self.logs = self.tmp / "logs"
        self.ext_cache = self.tmp / "ext-cache"
        # Buildah's vfs store is on the same disk as ext-extend's scratch and caches: equal
        # conditions. It writes GBs per run (a full copy of the base per container); the
        # untimed `sync` before every run keeps that writeback out of the next run's time.
        self.bstore = self.tmp / "buildah-store"
        self.registry: str | None = None
        self.limit_rootfs = self.tmp / "limit-rootfs"
        self.live_rootfs = self.tmp / "live-rootfs"
        self.ext_layers: dict[str, list[Path]] = {}  # workload -> new layers of the last ext-extend run
        self.kaniko_registry: Registry | None = None  # with --kaniko: the registry Kaniko pulls bases from
        self.kaniko_bases: set[str] = set()
        self.trash = self.tmp / "trash"  # see discard()
        self.trash_n = 0


def ext_build(env: Env, name: str, dfs: list[tuple[str, Path]], base_ref: str, out_ref: str, out_dir: Path | None,
              base_digests: set[str], extra: list[str] = (), cold: bool = False, step_cache: bool = False,
              cache_dir: Path | None = None, scratch: Path | None = None, binary: Path = EXT) -> Sample:
    """One `ext-extend build`. The step cache is off (`--no-cache`: every step runs) unless
    `step_cache`: the rows without it measure the work itself. `binary`: this build's
    ext-extend, or `--baseline`'s (a build from before the step cache has no `--no-cache` flag,
    and runs every step anyway)."""
    if out_dir is not None:
        discard(env, out_dir)
    cache_dir = cache_dir or env.ext_cache
    if cold:
        discard(env, cache_dir)
    no_cache = [] if step_cache or not has_flag(binary, "--no-cache") else ["--no-cache"]
    argv = [binary, "build", "--from", base_ref, "--output", out_ref, "--scratch-dir", scratch or env.scratch,
            "--cache-dir", cache_dir, "--log-level", "info", *no_cache, *extra]
    for df, ctx in dfs:
        argv += ["-f", DOCKERFILES / df, "--context", ctx]
    s, _, stderr = measure(argv, env.logs, name)
    s.info = parse_ext_log(stderr)
    if out_dir is not None:
        s.output_bytes = new_blob_bytes(out_dir, base_digests)
        s.info["new_layers"] = [str(p) for p in new_layers(out_dir, base_digests)]
    s.parts["build"] = s.wall
    return s


def discard(env: "Env", path: Path) -> None:
    """Moves `path` out of the way instead of deleting it: a tree of thousands of files deleted
    just before a timed run slows that run down (on ext4 new inodes skip recently deleted ones,
    and with `-o discard` every freed block is trimmed at the next journal commit), and by a
    varying amount: 1.4-4.1 s for the same cold R2. The trash is deleted between workloads."""
    if path.exists() or path.is_symlink():
        env.trash.mkdir(parents=True, exist_ok=True)
        env.trash_n += 1
        try:
            path.rename(env.trash / f"{env.trash_n}-{path.name}")
        except OSError:  # another file system (/dev/shm): nothing to gain, delete it
            shutil.rmtree(path)


def empty_trash(env: "Env") -> None:
    if env.trash.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(env.trash)], check=True)
        os.sync()


_FLAGS: dict = {}


def has_flag(binary: Path, flag: str) -> bool:
    """Whether `binary build --help` lists `flag` (asked once per binary)."""
    if binary not in _FLAGS:
        _FLAGS[binary] = subprocess.run([binary, "build", "--help"], capture_output=True, text=True).stdout
    return flag in _FLAGS[binary]


def ext_live(env: Env, name: str, df: str, ctx: Path, base_digests: set[str]) -> Sample:
    """ext-extend as platforms run the drop-in extender: inside the image's own root filesystem
    (a copy of the unpacked 300 MB base), with the live-root executor. The benchmark's inputs
    and outputs are bind-mounted in (mount points never reach a layer). Afterwards the tree is
    restored from the new layer's entries (untimed)."""
    # bench/work (base, output, scratch, cache) is mounted whole, so the output hard-links the
    # base blobs as in W2 (a link across mount points would be a copy).
    root, out = env.live_rootfs, env.tmp / "out-live"
    shutil.rmtree(out, ignore_errors=True)
    env.ext_cache.mkdir(parents=True, exist_ok=True)
    binds = {EXT: "ext-extend", WORK: "bench/work", DOCKERFILES: "bench/dockerfiles"}
    for src, dst in binds.items():
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            (root / dst).mkdir(exist_ok=True)
        else:
            (root / dst).touch()
    (root / ".dockerenv").touch()
    (root / "proc").mkdir(exist_ok=True)
    (root / "dev").mkdir(exist_ok=True)
    mounts = [f"mount -t proc proc {root}/proc", f"mount --rbind /dev {root}/dev"] + \
        [f"mount --bind {src} {root}/{dst}" for src, dst in binds.items()]
    inside = lambda p: "/bench/work/" + str(Path(p).relative_to(WORK))
    inner = ["/ext-extend", "build", "--live-root", "--from", f"oci:{inside(env.base)}:latest", "--output",
             f"oci:{inside(out)}:latest", "--scratch-dir", inside(env.scratch), "--cache-dir", inside(env.ext_cache),
             "--no-cache", "--log-level", "info", "-f", f"/bench/dockerfiles/{df}", "--context", inside(ctx)]
    script = " && ".join(mounts + ["exec chroot " + str(root) + " " + " ".join(inner)])
    s, _, stderr = measure(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env.logs, name,
                           env=RUN_ENV)
    s.info = parse_ext_log(stderr)
    s.output_bytes = new_blob_bytes(out, base_digests)
    layers = new_layers(out, base_digests)
    s.info["new_layers"] = [str(p) for p in layers]
    s.parts["build"] = s.wall
    for layer in layers:
        restore(env, layer_entries(layer), root)
    return s


def buildah_argv(env: Env, *args, driver: str = "vfs") -> list:
    """Buildah with its own store per storage driver (vfs: the W rows; overlay: bench (c))."""
    store = env.bstore if driver == "vfs" else env.bstore.with_name(f"buildah-store-{driver}")
    return ["buildah", "--root", store / "root", "--runroot", store / "runroot", "--storage-driver", driver, *args]


def buildah_build(env: Env, name: str, dfs: list[tuple[str, Path]], base: str, push_to: str, out_dir: Path | None,
                  base_digests: set[str], tls: bool = True, layers: bool = False, driver: str = "vfs",
                  build_args: tuple = ()) -> Sample:
    """bud of each Dockerfile (each FROM the previous result), then one push; all timed.
    `layers`: `bud --layers`, Buildah's own step cache, whose images are kept between runs."""
    if out_dir is not None:
        shutil.rmtree(out_dir, ignore_errors=True)
    total = Sample()
    prev = base
    tags = []
    tlsflag = [] if tls else ["--tls-verify=false"]
    for i, (df, ctx) in enumerate(dfs):
        tag = f"localhost/bench-{name.lower()}-{i}:latest"
        cache = ["--layers"] if layers else []
        s, _, _ = measure(buildah_argv(env, "bud", "--isolation", "chroot", *cache, *tlsflag, "-f", DOCKERFILES / df,
                                       "--build-arg", f"base_image={prev}", *build_args, "-t", tag, ctx,
                                       driver=driver), env.logs, f"{name}-bud{i}")
        total.add(s, "bud")
        prev = tag
        tags.append(tag)
    s, _, _ = measure(buildah_argv(env, "push", *tlsflag, prev, push_to, driver=driver), env.logs, f"{name}-push")
    total.add(s, "push")
    if out_dir is not None:
        total.output_bytes = new_blob_bytes(out_dir, base_digests)
    # Untimed: drop the built images so every run starts from the same warm store (with its
    # layer cache, the store keeps them: they are the cache).
    if not layers:
        subprocess.run(buildah_argv(env, "rmi", "-f", *tags, driver=driver), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return total


# Kaniko (bench (d)). Its executor is built outside the project (`--kaniko PATH`; nothing of
# Kaniko is in this repository). It unpacks the base into its own "/" and snapshots "/", so it
# only ever runs jailed: a fresh directory per run holding the executor (bind-mounted read-only)
# and the Dockerfile, in private mount and PID namespaces, chrooted there, with a /dev of six
# device nodes, the context read-only at /workspace and the output dir at /out. The jail goes
# to the trash after each run (see discard()), once nothing is mounted in it any more.
KANIKO_JAIL_SCRIPT = r"""
set -eu
J=$1 exe=$2 ctx=$3 out=$4; shift 4
mount --bind "$exe" "$J/kaniko/executor"; mount -o remount,bind,ro "$J/kaniko/executor"
mount --bind "$ctx" "$J/workspace"; mount -o remount,bind,ro "$J/workspace"
mount --bind "$out" "$J/out"
mount -t tmpfs -o mode=755,nosuid tmpfs "$J/dev"
for d in null zero full random urandom tty; do touch "$J/dev/$d"; mount --bind "/dev/$d" "$J/dev/$d"; done
ln -s /proc/self/fd "$J/dev/fd"
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    DOCKER_CONFIG=/kaniko/.docker chroot "$J" /kaniko/executor --force "$@"
"""


def kaniko_push_base(env: Env, layout: Path, repo: str) -> str:
    """The base image in the Kaniko runs' registry (Kaniko pulls its base from a registry),
    pushed once, untimed; skopeo keeps the blobs, so the base digests stay the same."""
    ref = f"{env.kaniko_registry.addr}/{repo}:latest"
    if ref not in env.kaniko_bases:
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:latest",
                        f"docker://{ref}"], check=True)
        env.kaniko_bases.add(ref)
    return ref


def kaniko_build(env: Env, name: str, df: str, ctx: Path, base_layout: Path, out_dir: Path,
                 base_digests: set[str]) -> Sample:
    """One jailed `executor` run: the base pulled from the local registry, the image written as
    an OCI layout (`--no-push --oci-layout-path`), Kaniko's defaults otherwise (full snapshots,
    no cache): what the lifecycle's extender runs for a cold build."""
    base = kaniko_push_base(env, base_layout, f"bench/{base_layout.name}")
    discard(env, out_dir)
    out_dir.mkdir(parents=True)
    jail = env.tmp / f"kaniko-jail-{name}"
    discard(env, jail)
    for d in ("kaniko", "workspace", "proc", "dev", "tmp", "out", "etc", "root"):
        (jail / d).mkdir(parents=True)
    (jail / "tmp").chmod(0o1777)
    (jail / "kaniko" / "executor").touch()
    shutil.copy(DOCKERFILES / df, jail / "kaniko" / "Dockerfile")
    argv = ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={jail / 'proc'}", "--propagation", "private",
            "sh", "-c", KANIKO_JAIL_SCRIPT, "kaniko-jail", jail, env.args.kaniko, ctx, out_dir,
            "--dockerfile", "/kaniko/Dockerfile", "--context", "dir:///workspace",
            "--build-arg", f"base_image={base}", "--insecure-pull", "--skip-tls-verify-pull",
            "--no-push", "--oci-layout-path", "/out/layout"]
    try:
        s, _, _ = measure(argv, env.logs, name, env=RUN_ENV)
    finally:
        # The namespace took its mounts with it; never delete through a mount that remained.
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True).stdout
        if str(jail) in mounts:
            raise RuntimeError(f"mounts remain under {jail}; not removing it")
        discard(env, jail)
    s.output_bytes = new_blob_bytes(out_dir / "layout", base_digests)
    s.parts["build"] = s.wall
    return s


def limit_copy(env: Env, name: str, ctx: Path, dest: str, threads: int) -> Sample:
    out = env.scratch / "limit.tar.gz"
    s, _, _ = measure([LIMIT, "--threads", threads, "--out", out, "--dir", f"{ctx}:{dest}"], env.logs, name)
    res = json.loads((env.logs / f"{name}.out").read_text())
    s.output_bytes = res["size"]
    s.info = {"uncompressed_size": res["uncompressed_size"], "entries": res["entries"]}
    s.parts["tar+gzip+sha256"] = s.wall
    return s


def limit_run(env: Env, name: str, cmd: str, layer: list[tuple[str, str]], threads: int) -> Sample:
    """The command run directly in a chroot of the unpacked base, then tar+gzip+sha256 of
    exactly the entries ext-extend's layer for it holds; the tree is restored afterwards."""
    root = env.limit_rootfs
    s, _, _ = measure(["chroot", root, "/bin/sh", "-c", cmd], env.logs, name + "-cmd", env=RUN_ENV)
    total = Sample().add(s, "command")
    argv = [LIMIT, "--threads", threads, "--out", env.scratch / "limit.tar.gz"]
    for path, kind in layer:
        if kind == "whiteout":
            argv += ["--whiteout", path]
        else:
            argv += ["--file", f"{root / path}:{path}"]
    s, _, _ = measure(argv, env.logs, name + "-layer")
    total.add(s, "tar+gzip+sha256")
    total.output_bytes = json.loads((env.logs / f"{name}-layer.out").read_text())["size"]
    restore(env, layer, env.limit_rootfs)
    return total


def restore(env: Env, layer: list[tuple[str, str]], root: Path) -> None:
    pristine = env.root / "rootfs-300"
    for path, kind in sorted(layer, key=lambda e: -len(e[0])):
        src, dst = pristine / path, root / path
        if kind == "dir" and src.is_dir():
            continue
        if dst.is_dir() and not dst.is_symlink():
            shutil.rmtree(dst)
        elif dst.exists() or dst.is_symlink():
            dst.unlink()
        if src.exists() or src.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=False)


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclass
class Workload:
    key: str
    title: str
    tools: dict  # tool name -> callable(env, run_name) -> Sample
    runs: int
    note: str = ""
    no_warmup: bool = False


def make_workloads(env: Env) -> list[Workload]:
    r = env.root
    base_ref = f"oci:{env.base}:latest"
    w1 = [("w1.Dockerfile", r / "ctx-w1")]
    w2 = [("w2.Dockerfile", r / "ctx-empty")]
    w3 = [("w3-a.Dockerfile", r / "ctx-w3"), ("w3-b.Dockerfile", r / "ctx-empty"), ("w3-c.Dockerfile", r / "ctx-empty")]
    n = env.args.runs
    out_ext, out_buildah = env.tmp / "out-ext", env.tmp / "out-buildah"

    def ext(key, dfs, cold=False, base=None, digests=None, step_cache=False):
        def f(env, name):
            s = ext_build(env, name, dfs, base or base_ref, f"oci:{out_ext}:latest", out_ext,
                          digests or env.base_digests,
                          cold=cold, step_cache=step_cache)
            env.ext_layers[key] = [Path(p) for p in s.info["new_layers"]]
            return s
        return f

    def baseline(dfs, cold=False, base=None, digests=None):
        """`--baseline`: an earlier ext-extend build, on the same inputs with its own cache dir."""
        if not env.args.baseline:
            return {}
        cache = env.tmp / "baseline-cache"
        return {"ext-extend baseline": lambda env, name: ext_build(
            env, name, dfs, base or base_ref, f"oci:{out_ext}:latest", out_ext, digests or env.base_digests,
            cold=cold, cache_dir=cache, binary=Path(env.args.baseline))}

    def kaniko(dfs, base_layout=None, digests=None):
        """`--kaniko`: Kaniko's executor, jailed (one Dockerfile)."""
        if not env.args.kaniko:
            return {}
        (df, ctx), = dfs
        return {"kaniko": lambda env, name: kaniko_build(env, name, df, ctx, base_layout or env.base,
                                                        env.tmp / "out-kaniko", digests or env.base_digests)}

    def buildah(dfs):
        return lambda env, name: buildah_build(env, name, dfs, base_ref, f"oci:{out_buildah}:latest", out_buildah,
                                               env.base_digests)

    def limit_w1(threads):
        return lambda env, name: limit_copy(env, name, r / "ctx-w1", "opt/ext", threads)

    def limit_runs(key, steps, threads):
        """steps: list of ('copy', ctx, dest) or ('run', cmd); layers come from ext-extend's last run."""
        def f(env, name):
            total = Sample()
            total.output_bytes = 0
            layers = env.ext_layers[key]
            for i, step in enumerate(steps):
                if step[0] == "copy":
                    s = limit_copy(env, f"{name}-{i}", step[1], step[2], threads)
                else:
                    s = limit_run(env, f"{name}-{i}", step[1], layer_entries(layers[i]), threads)
                for part, secs in s.parts.items():
                    total.parts[part] = total.parts.get(part, 0.0) + secs
                total.wall += s.wall
                total.user += s.user
                total.sys += s.sys
                total.maxrss = max(total.maxrss, s.maxrss)
                total.io_written += s.io_written
                total.output_bytes += s.output_bytes or 0
            return total
        return f

    w2_steps = [("run", dockerfile_runs(DOCKERFILES / "w2.Dockerfile")[0])]
    w3_steps = [("copy", r / "ctx-w3", "opt/ext-a"),
                ("run", dockerfile_runs(DOCKERFILES / "w3-b.Dockerfile")[0]),
                ("run", dockerfile_runs(DOCKERFILES / "w3-c.Dockerfile")[0])]
    peers = not env.args.no_buildah
    wl = [
        Workload("W1", "COPY of the 200 MB context", {
            "ext-extend": ext("W1", w1), **({"buildah": buildah(w1)} if peers else {}), **kaniko(w1),
            "limit 1 thread": limit_w1(1), "limit 2 threads": limit_w1(2)}, n),
        Workload("W2", "one RUN changing ~1 MB", {
            "ext-extend": ext("W2", w2), **({"buildah": buildah(w2)} if peers else {}), **kaniko(w2),
            "limit 1 thread": limit_runs("W2", w2_steps, 1), "limit 2 threads": limit_runs("W2", w2_steps, 2)}, n),
        Workload("W3", "three Dockerfiles (COPY 20 MB, RUN, RUN) in one extend", {
            "ext-extend": ext("W3", w3), **({"buildah": buildah(w3)} if peers else {}),
            "limit 1 thread": limit_runs("W3", w3_steps, 1), "limit 2 threads": limit_runs("W3", w3_steps, 2)}, n),
        Workload("W2-live", "W2 with the live-root executor, inside a copy of the base's root filesystem", {
            "ext-extend": lambda env, name: ext_live(env, name, "w2.Dockerfile", r / "ctx-empty", env.base_digests)},
                 n, "how platforms run the drop-in extender: no unpacking, RUN as a plain child process, "
                    "changes from a stat walk of /"),
        Workload("W2-step-cache", "W2 again with the step cache warm (the same Dockerfile on the same base)", {
            "ext-extend": ext("W2-step-cache", w2, step_cache=True),
            **({"buildah --layers": lambda env, name: buildah_build(
                env, name, w2, base_ref, f"oci:{out_buildah}:latest", out_buildah, env.base_digests, layers=True)}
               if peers else {})}, n,
                 "the warm-up run stores the step; every measured run is a hit: no rootfs, no command. Buildah's own "
                 "layer cache (`bud --layers`, its images kept between runs) is its equivalent"),
        Workload("W1-step-cache", "W1 again with the step cache warm", {
            "ext-extend": ext("W1-step-cache", w1, step_cache=True)}, n,
                 "the context's 200 MB are recognised by their stat stamps, not read"),
        Workload("W1-cold", "W1 with ext-extend's caches emptied before each run", {
            "ext-extend": ext("W1-cold", w1, cold=True)}, 3,
                 "no header-index cache: the base layers' headers are read again", no_warmup=True),
        Workload("W2-cold", "W2 with ext-extend's caches emptied before each run", {
            "ext-extend": ext("W2-cold", w2, cold=True), **baseline(w2, cold=True)}, 3,
                 "no unpacked-layer cache: the base is unpacked in the run", no_warmup=True),
    ]
    if not env.args.no_debian:
        # Bench (c): cold RUN on a Debian minbase image (debootstrap; one gzip -6 layer, as
        # registries' images are), R2 writing ~20 MB. ext-extend with its caches emptied before
        # every run, against Buildah with a warm overlay store (the base pulled by the warm-up).
        deb = workloads.ensure_debian(WORK, log)
        deb_ref, deb_digests = f"oci:{deb}:latest", layout_digests(deb)
        r2 = [("r2.Dockerfile", r / "ctx-empty")]
        shm = Path("/dev/shm/ext-extend-bench")

        def ext_shm(env, name):
            """The tmpfs lever, measured: scratch and caches on /dev/shm."""
            shutil.rmtree(shm, ignore_errors=True)
            (shm / "scratch").mkdir(parents=True)
            try:
                return ext_build(env, name, r2, deb_ref, f"oci:{out_ext}:latest", out_ext, deb_digests, cold=True,
                                 cache_dir=shm / "cache", scratch=shm / "scratch")
            finally:
                shutil.rmtree(shm, ignore_errors=True)

        wl.append(Workload("R2-cold", "Debian minbase (117 MB), one RUN writing ~20 MB, ext-extend's caches emptied", {
            "ext-extend": ext("R2-cold", r2, cold=True, base=deb_ref, digests=deb_digests),
            "ext-extend on tmpfs": ext_shm,
            **baseline(r2, cold=True, base=deb_ref, digests=deb_digests),
            **kaniko(r2, base_layout=deb, digests=deb_digests),
            **({"buildah overlay warm": lambda env, name: buildah_build(
                env, name, r2, deb_ref, f"oci:{out_buildah}:latest", out_buildah, deb_digests, driver="overlay")}
               if peers else {})}, n,
            "bench (c): overhead = wall - the RUN's sandbox+command time from ext-extend's log; Buildah's store "
            "keeps the base between runs (warm); 'on tmpfs' puts --scratch-dir and --cache-dir on /dev/shm"))
    if not env.args.no_1g:
        b1g = f"oci:{env.base1g}:latest"
        k = 1  # for peak RSS only
        wl += [
            Workload("W1-1G", "W1 on the 1 GB base (RSS goal)", {
                "ext-extend": ext("W1-1G", w1, base=b1g, digests=env.base1g_digests)}, k),
            Workload("W2-1G", "W2 on the 1 GB base (RSS goal)", {
                "ext-extend": ext("W2-1G", w2, base=b1g, digests=env.base1g_digests)}, k),
            Workload("W2-1G-cold", "W2 on the 1 GB base, caches emptied (RSS goal)", {
                "ext-extend": ext("W2-1G-cold", w2, cold=True, base=b1g, digests=env.base1g_digests)}, k,
                     no_warmup=True),
        ]
    return wl


# ---------------------------------------------------------------------------------------------
# W4: the local registry


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Registry:
    """docker-registry on 127.0.0.1:<free port> with filesystem storage, stopped by PID."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.proc = None
        self.addr = None

    def __enter__(self):
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "data").mkdir(parents=True)
        port = free_port()
        self.addr = f"127.0.0.1:{port}"
        cfg = self.dir / "config.yml"
        cfg.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
                       f"  delete:\n    enabled: true\nhttp:\n  addr: {self.addr}\n")
        self.log = open(self.dir / "registry.log", "wb")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(cfg)], stdout=self.log, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        for _ in range(100):
            r = subprocess.run(["curl", "-sf", "-o", "/dev/null", f"http://{self.addr}/v2/"])
            if r.returncode == 0:
                return self
            time.sleep(0.1)
        raise RuntimeError("docker-registry did not start")

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def registry_new_bytes(addr: str, repo: str, base_digests: set[str]) -> int:
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{addr}/{repo}:latest"],
                         check=True, capture_output=True, text=True).stdout
    m = json.loads(raw)
    blobs = [m["config"]] + m["layers"]
    return sum(b["size"] for b in blobs if b["digest"] not in base_digests) + len(raw.encode())


def limit_upload(env: Env, name: str, addr: str, blob: Path, digest: str) -> Sample:
    """A monolithic blob upload of the limit's layer with curl (streamed): POST, then PUT."""
    script = (f'loc=$(curl -sfi -X POST http://{addr}/v2/bench/limit/blobs/uploads/ | tr -d "\\r" | '
              f'sed -n "s/^[Ll]ocation: //p"); '
              f'case "$loc" in http*) ;; *) loc="http://{addr}$loc";; esac; '
              f'curl -sf -X PUT -H "Content-Type: application/octet-stream" -T {blob} "$loc&digest={digest}"')
    s, _, _ = measure(["sh", "-c", script], env.logs, name)
    return s


def make_w4(env: Env, reg: Registry) -> tuple[list[Workload], str | None]:
    addr = reg.addr
    r = env.root
    base_repo = "bench/run"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{env.base}:latest",
                    f"docker://{addr}/{base_repo}:latest"], check=True)
    base_ref = f"docker://{addr}/{base_repo}:latest"
    # Does this build support docker:// yet?
    probe_out = env.tmp / "w4-probe"
    argv = [EXT, "build", "--from", base_ref, "-f", DOCKERFILES / "w2.Dockerfile", "--context", r / "ctx-empty",
            "--output", f"oci:{probe_out}:latest", "--scratch-dir", env.scratch, "--cache-dir", env.ext_cache, "-q",
            "--no-cache"]
    _, rc, stderr = measure(argv, env.logs, "w4-probe", check=False)
    if rc != 0:
        last = (stderr.strip().splitlines() or ["?"])[-1]
        return [], f"skipped: registry support not landed (`ext-extend build --from docker://...` exited {rc}: {last})"
    counter = {"n": 0}

    def ext(dfs):
        def f(env, name):
            counter["n"] += 1
            repo = f"bench/ext-{name.lower()}-{counter['n']}"
            s = ext_build(env, name, dfs, base_ref, f"docker://{addr}/{repo}:latest", None, env.base_digests)
            s.output_bytes = registry_new_bytes(addr, repo, env.base_digests)
            return s
        return f

    def buildah(dfs):
        def f(env, name):
            counter["n"] += 1
            repo = f"bench/buildah-{name.lower()}-{counter['n']}"
            s = buildah_build(env, name, dfs, f"{addr}/{base_repo}:latest", f"docker://{addr}/{repo}:latest", None,
                              env.base_digests, tls=False)
            s.output_bytes = registry_new_bytes(addr, repo, env.base_digests)
            return s
        return f

    def limit_w1(threads):
        def f(env, name):
            s = limit_copy(env, name, r / "ctx-w1", "opt/ext", threads)
            digest = json.loads((env.logs / f"{name}.out").read_text())["digest"]
            up = limit_upload(env, name + "-upload", addr, env.scratch / "limit.tar.gz", digest)
            return s.add(up, "upload")
        return f

    peers = not env.args.no_buildah
    w1 = [("w1.Dockerfile", r / "ctx-w1")]
    w2 = [("w2.Dockerfile", r / "ctx-empty")]
    n = env.args.runs

    # (b) A step cache shared through the registry: builder A ran W2 once with --cache-repo;
    # builder B, on "another machine" (an empty cache dir of its own before every run: nothing
    # pulled, nothing unpacked, no step cache), builds the same and pushes its result.
    steps_repo = f"docker://{addr}/bench/steps"
    builder_a = env.tmp / "shared-cache-a"
    shutil.rmtree(builder_a, ignore_errors=True)
    ext_build(env, "W4-shared-builder-a", w2, base_ref, f"docker://{addr}/bench/shared-a:latest", None,
              env.base_digests, extra=["--cache-repo", steps_repo], step_cache=True, cache_dir=builder_a)
    layer_digest = json.loads(subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{addr}/bench/shared-a:latest"],
        check=True, capture_output=True, text=True).stdout)["layers"][-1]["digest"]

    def shared(with_cache: bool):
        def f(env, name):
            counter["n"] += 1
            builder_b = env.tmp / "shared-cache-b"
            extra = ["--cache-repo", steps_repo] if with_cache else []
            s = ext_build(env, name, w2, base_ref, f"docker://{addr}/bench/shared-b-{counter['n']}:latest", None,
                          env.base_digests, extra=extra, step_cache=with_cache, cache_dir=builder_b, cold=True)
            s.output_bytes = registry_new_bytes(addr, f"bench/shared-b-{counter['n']}", env.base_digests)
            if with_cache:
                # The transfer of the new layer on its own (untimed in the build's figure):
                # what the goal allows on top of 0.5 s.
                t, _, _ = measure(["curl", "-sf", "-o", "/dev/null",
                                   f"http://{addr}/v2/bench/steps/blobs/{layer_digest}"], env.logs, name + "-transfer")
                s.info["layer_transfer"] = t.wall
            return s
        return f

    return [
        Workload("W4-shared-cache", "W2 on a second builder with an empty cache dir, the step cache shared "
                 "through the local registry; base from and result to the registry", {
                     "ext-extend shared cache": shared(True), "ext-extend no shared cache": shared(False)}, n,
                 "builder A stored the step in docker://…/bench/steps once; builder B's cache dir is emptied "
                 "before every run (a fresh pod): with the shared cache it reads manifests and the 0.6 MB layer, "
                 "and the push mounts the layer from the cache repository; without it, it pulls and unpacks the "
                 "base and runs the RUN"),
        Workload("W4-W1", "W1, base pulled from and result pushed to the local registry", {
            "ext-extend": ext(w1), **({"buildah": buildah(w1)} if peers else {}),
            "limit 1 thread": limit_w1(1), "limit 2 threads": limit_w1(2)}, n,
                 "limit: W1's limit plus a monolithic curl upload of the layer"),
        Workload("W4-W2", "W2, base pulled from and result pushed to the local registry", {
            "ext-extend": ext(w2), **({"buildah": buildah(w2)} if peers else {})}, n),
    ], None


# ---------------------------------------------------------------------------------------------
# Checks for W3's goals (untimed)


def w3_reads_check(env: Env) -> dict:
    """Runs W3 under strace: which files did ext-extend's own threads open for reading in its
    scratch dir and unpacked-layer cache, and were they all files the RUNs changed?"""
    if shutil.which("strace") is None:
        return {"skipped": "strace is not installed"}
    results = {}
    r = env.root
    dfs = [("w3-a.Dockerfile", r / "ctx-w3"), ("w3-b.Dockerfile", r / "ctx-empty"), ("w3-c.Dockerfile", r / "ctx-empty")]
    for mode in ("overlay", "stat"):
        out = env.tmp / f"strace-{mode}"
        shutil.rmtree(out, ignore_errors=True)
        (env.logs / f"strace-{mode}").mkdir(parents=True, exist_ok=True)
        trace = env.logs / f"strace-{mode}" / "t"
        argv = ["strace", "-ff", "-qq", "-y", "-s", "4096", "-e", "trace=openat,openat2,open,clone,clone3,fork,vfork,execve",
                "-o", trace,
                EXT, "build", "--from", f"oci:{env.base}:latest", "--output", f"oci:{out}:latest",
                "--scratch-dir", env.scratch, "--cache-dir", env.ext_cache, "--snapshot", mode, "--no-cache"]
        for df, ctx in dfs:
            argv += ["-f", DOCKERFILES / df, "--context", ctx]
        _, rc, stderr = measure(argv, env.logs, f"w3-strace-{mode}", check=False)
        if rc != 0:
            results[mode] = {"error": (stderr.strip().splitlines() or ["?"])[-1]}
            continue
        changed = set()
        for blob in new_layers(out, env.base_digests)[1:]:  # the RUN layers
            changed |= {p for p, k in layer_entries(blob) if k != "dir"}
        reads = strace_reads(trace, [str(env.scratch), str(env.ext_cache)])
        rel = {}
        for p in reads:
            m = re.search(r"/ext-extend-[^/]+/rootfs/(?:rootfs|l/\d+|r/\d+/[um])/(.+)$", p) or re.search(
                r"/unpacked/[0-9a-f]{64}/(.+)$", p)
            rel[p] = m.group(1) if m else None
        in_tree = {p: x for p, x in rel.items() if x is not None}
        unchanged = sorted(p for p, x in in_tree.items() if x not in changed)
        user_lookup = [p for p in unchanged if in_tree[p] in ("etc/passwd", "etc/group")]
        results[mode] = {
            "unpack_lines": len(parse_ext_log(stderr)["unpacks"]),
            "rootfs_files_read": len(in_tree),
            "changed_files_read": sum(1 for x in in_tree.values() if x in changed),
            "unchanged_files_read": [p for p in unchanged if p not in user_lookup],
            "user_lookup_reads": len(user_lookup),
            "other_reads": sorted({re.sub(r"[0-9a-f]{64}", "<digest>", p.split("/")[-2]) + "/"
                                   for p, x in rel.items() if x is None}),
        }
    return results


def strace_reads(prefix: Path, under: list[str]) -> list[str]:
    """Files that the traced process's own threads (not its forked children, which set up the
    sandbox and run the RUN commands) opened read-only under the given dirs. `prefix` is
    strace's `-ff -o` prefix; `-y` makes strace print the path of every returned fd."""
    files = {int(f.name.rsplit(".", 1)[1]): f for f in prefix.parent.glob(prefix.name + ".*")}
    lines = {pid: f.read_text(errors="replace").splitlines() for pid, f in files.items()}
    threads: dict[int, list[int]] = {}
    forked: set[int] = set()
    execs: set[int] = set()
    for pid, text in lines.items():
        pending = None  # flags of an unfinished clone
        for line in text:
            if line.startswith("execve("):
                execs.add(pid)
            m = re.match(r"^(clone3?|fork|vfork)\((.*)", line)
            if m and "<unfinished ...>" in line:
                pending = m.group(2)
                continue
            flags = None
            if m:
                flags = m.group(2)
            elif re.match(r"^<\.\.\. (clone3?|fork|vfork) resumed>", line):
                flags = (pending or "") + line
                pending = None
            if flags is None:
                continue
            r = re.search(r"\)\s+=\s+(\d+)", line)
            if not r:
                continue
            child = int(r.group(1))
            if "CLONE_THREAD" in flags:
                threads.setdefault(pid, []).append(child)
            else:
                forked.add(child)
    created = forked | {c for cs in threads.values() for c in cs}
    roots = sorted(pid for pid in lines if pid not in created)
    own = set()
    todo = roots[:1]
    while todo:
        pid = todo.pop()
        own.add(pid)
        todo += threads.get(pid, [])
    reads = []
    # A thread never execs; the traced process itself did so once, at the start.
    for pid in own - (execs - set(roots[:1])):
        for line in lines.get(pid, []):
            if not re.match(r"^(<\.\.\. )?open(at2?)?[( ]", line):
                continue
            m = re.search(r"\)\s+=\s+\d+<(.+)>$", line)
            if not m:
                continue
            path = m.group(1)
            call = line[: m.start()]
            if any(f in call for f in ("O_DIRECTORY", "O_WRONLY", "O_RDWR", "O_CREAT", "O_PATH")):
                continue
            if any(path.startswith(u + "/") for u in under) and os.path.isfile(path) or (
                    any(path.startswith(u + "/") for u in under) and not os.path.exists(path)):
                reads.append(path)
    for f in files.values():
        f.unlink()
    return sorted(set(reads))


# ---------------------------------------------------------------------------------------------
# Criterion micro-benchmarks


def run_criterion(env: Env) -> list[dict]:
    crit = REPO / "target" / "criterion"
    for group in ("layer_writer", "unpack", "differ"):
        shutil.rmtree(crit / group, ignore_errors=True)
    argv = ["cargo", "bench", "--locked", "-p", "ext-oci", "-p", "ext-rootfs", "--bench", "layer_writer",
            "--bench", "unpack", "--bench", "differ", "--", "--warm-up-time", "1", "--measurement-time", "3",
            "--noplot"]
    log("bench: criterion micro-benchmarks: " + " ".join(argv))
    r = subprocess.run(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (env.logs / "criterion.txt").write_text(r.stdout)
    if r.returncode != 0:
        log(r.stdout[-3000:])
        return [{"error": f"cargo bench exited {r.returncode} (see bench/work/run/logs/criterion.txt)"}]
    out = []
    for bench_json in sorted(crit.glob("**/new/benchmark.json")):
        meta = json.loads(bench_json.read_text())
        est = json.loads((bench_json.parent / "estimates.json").read_text())
        med = est["median"]["point_estimate"] / 1e9
        thr = meta.get("throughput") or {}
        row = {"id": meta.get("full_id") or meta.get("title"), "median_s": med,
               "ci": [est["median"]["confidence_interval"]["lower_bound"] / 1e9,
                      est["median"]["confidence_interval"]["upper_bound"] / 1e9]}
        if "Bytes" in thr:
            row["throughput"] = f"{thr['Bytes'] / med / 1e6:.0f} MB/s"
        elif "Elements" in thr:
            row["throughput"] = f"{thr['Elements'] / med:,.0f} elem/s"
        out.append(row)
    return out


# ---------------------------------------------------------------------------------------------
# Report


def fmt_s(x):
    return "–" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def fmt_mb(x):
    return "–" if x is None else f"{x / 1e6:.1f}"


def summarize(samples: list[Sample]) -> dict:
    return {
        "wall": median([s.wall for s in samples]),
        "cpu": median([s.cpu for s in samples]),
        "maxrss": median([s.maxrss for s in samples]),
        "maxrss_max": max(s.maxrss for s in samples) if samples else None,
        "io_written": median([s.io_written for s in samples]),
        "output_bytes": median([s.output_bytes for s in samples]),
        "parts": {k: median([s.parts.get(k) for s in samples]) for k in samples[0].parts} if samples else {},
        "wall_min": min(s.wall for s in samples) if samples else None,
        "wall_max": max(s.wall for s in samples) if samples else None,
    }


def report(env: Env, results: dict, skipped: dict, checks: dict, crit: list, started: float, machine: dict) -> str:
    L = []
    L.append("# ext-extend benchmark (`make bench`)")
    L.append("")
    L.append(f"Run {machine['date']} on {machine['cpus']} CPUs ({machine['cpu']}), {machine['mem_gib']:.0f} GiB, "
             f"kernel {machine['kernel']}; load average before/after: {machine['load_before']} / "
             f"{machine['load_after']}. {machine['ext_version']}, commit {machine['commit']}; "
             f"{machine['buildah']}"
             f"{'; ' + machine['kaniko'] + ' (jailed)' if 'kaniko' in machine else ''}"
             f"{'; baseline ' + machine['baseline'] if 'baseline' in machine else ''}. Medians of {env.args.runs} runs after 1 warm-up (-cold rows: 3 runs, no "
             f"warm-up; -1G rows: 1 run, for peak RSS), with `sync` before every run (untimed); min–max and "
             f"every run in latest.json; "
             f"total bench time {(time.monotonic() - started) / 60:.1f} min.")
    L.append("")
    b = json.loads((env.root / "base-300.json").read_text())
    b1 = json.loads((env.root / "base-1g.json").read_text())
    c = json.loads((env.root / "ctx-w1.json").read_text())
    L.append(f"Workloads (generated, `bench/workloads.py` {workloads.VERSION}): run image "
             f"{b['uncompressed_bytes'] / 1e6:.0f} MB in {b['entries']} entries over {len(b['layers'])} layers "
             f"({b['compressed_bytes'] / 1e6:.0f} MB gzip); 1 GB variant {b1['uncompressed_bytes'] / 1e6:.0f} MB in "
             f"{b1['entries']} entries; W1 context {c['bytes'] / 1e6:.0f} MB in {c['files']} files.")
    L.append("")
    L.append("| workload | tool | wall s | CPU s | peak RSS MiB | output MB | I/O written MB | ext-extend ÷ tool (wall) | parts (median s) |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for key, wl in results.items():
        tools = wl["tools"]
        ext = tools.get("ext-extend", {}).get("summary")
        for tool, t in tools.items():
            s = t["summary"]
            ratio = "" if tool == "ext-extend" or not ext else f"{ext['wall'] / s['wall']:.2f}"
            parts = ", ".join(f"{k} {fmt_s(v)}" for k, v in s["parts"].items() if v is not None)
            L.append(f"| {key} | {tool} | {fmt_s(s['wall'])} | {fmt_s(s['cpu'])} | {s['maxrss'] / MIB:.0f} | "
                     f"{fmt_mb(s['output_bytes'])} | {fmt_mb(s['io_written'])} | {ratio} | {parts} |")
    for key, why in skipped.items():
        L.append(f"| {key} | – | {why} | | | | | | |")
    L.append("")
    L.append("Columns: *wall* and *CPU* (user+sys, children included) per run; *peak RSS*: GNU time's `%M` "
             "(the largest resident set of the tool's process tree); *output MB*: blobs of the result that the base image does not have "
             "(for Buildah that includes every base layer, which `buildah push` re-compresses; ext-extend "
             "passes base layers through by digest); *I/O written*: bytes the run dirtied (rusage oublock: "
             "output, scratch, caches). *ext-extend ÷ tool* < 1 means ext-extend is faster.")
    L.append("")
    L.append("Tools: **ext-extend** `build` with `--cache-dir` and `--scratch-dir` on the same disk (its "
             "header-index and unpacked-layer caches are warm after the warm-up, except in the *-cold rows, "
             "where the cache dir is removed before each run), with `--no-cache` (every step runs) except in the "
             "*-step-cache rows and W4-shared-cache, which measure the step cache. **buildah** `--storage-driver vfs bud "
             "--isolation chroot` then `buildah push` to an `oci:` layout (or the registry); its store is on "
             "the same disk as ext-extend's scratch dir and caches, and "
             "warm (the base image is imported during the warm-up, as ext-extend's caches are) and the built "
             "images are removed after each run; W3 is three `bud`s, each FROM the previous result, then one "
             "push. **limit**: `bench-limit` (crates/bench-limit): tar + sha256 + gzip (flate2/zlib-rs, "
             "level 1, as ext-extend) + sha256 of exactly the entries of ext-extend's new layer, written to a "
             "file and fsynced; 1 thread, or 2 compressing threads (pigz-style chunks); for RUN steps, plus "
             "the command itself run with `chroot` in an already-unpacked copy of the base.")
    L.append("")
    L.append("## Goals")
    L.append("")
    for line in goals(results, checks):
        L.append(f"- {line}")
    L.append("")
    if crit:
        L.append("## Micro-benchmarks (criterion, 1 s warm-up, 3 s measurement)")
        L.append("")
        L.append("| benchmark | median | 95% CI | throughput |")
        L.append("|---|---:|---:|---:|")
        for row in crit:
            if "error" in row:
                L.append(f"| {row['error']} | | | |")
                continue
            L.append(f"| {row['id']} | {fmt_t(row['median_s'])} | {fmt_t(row['ci'][0])}–{fmt_t(row['ci'][1])} | "
                     f"{row.get('throughput', '')} |")
        L.append("")
    return "\n".join(L) + "\n"


def fmt_t(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} µs"


def goals(results: dict, checks: dict) -> list[str]:
    out = []

    def summ(w, tool):
        t = results.get(w, {}).get("tools", {}).get(tool)
        return t["summary"] if t else None

    def verdict(ok):
        return "**met**" if ok else "**MISSED**"

    e1, b1, l1, l2 = summ("W1", "ext-extend"), summ("W1", "buildah"), summ("W1", "limit 1 thread"), summ("W1", "limit 2 threads")
    if e1 and b1:
        sp = b1["wall"] / e1["wall"]
        out.append(f"W1 ≥ 10× faster than Buildah: {verdict(sp >= 10)} ({sp:.1f}×: {e1['wall']:.2f} s vs "
                   f"{b1['wall']:.2f} s).")
    if e1 and l1 and l2:
        best = min(l1["wall"], l2["wall"])
        r = e1["wall"] / best
        out.append(f"W1 within 1.5× of the limit: {verdict(r <= 1.5)} ({r:.2f}× the fastest limit, "
                   f"{best:.2f} s with {'2 threads' if l2['wall'] <= l1['wall'] else '1 thread'}; "
                   f"{e1['wall'] / l1['wall']:.2f}× the 1-thread limit {l1['wall']:.2f} s).")
    e2, b2 = summ("W2", "ext-extend"), summ("W2", "buildah")
    lim2 = summ("W2", "limit 1 thread")
    w2 = results.get("W2", {}).get("tools", {}).get("ext-extend")
    if w2 and lim2:
        cmd = lim2["parts"].get("command") or 0.0
        unpack = median([sum(u["seconds"] for u in s["info"]["unpacks"]) for s in w2["runs"]])
        step = median([sum(r["command"] + r["snapshot"] for r in s["info"]["runs"]) for s in w2["runs"]])
        beyond_total = e2["wall"] - unpack - cmd
        beyond_step = step - cmd
        hits = [s["info"]["unpacks"][0].get("cache_hits") for s in w2["runs"] if s["info"]["unpacks"]]
        out.append(f"W2 time beyond the command ≤ 0.5 s with the rootfs already unpacked: "
                   f"{verdict(beyond_total <= 0.5)} ({beyond_total:.2f} s = wall {e2['wall']:.2f} − rootfs setup "
                   f"{unpack:.2f} (unpacked-layer cache hits per run: {hits}) − the command in a plain chroot "
                   f"{cmd:.3f}; the RUN step alone, from ext-extend's log: {beyond_step:.2f} s beyond the command).")
    if e2 and b2:
        sp = b2["wall"] / e2["wall"]
        out.append(f"W2 ≥ 5× faster than Buildah end to end: {verdict(sp >= 5)} ({sp:.1f}×: {e2['wall']:.2f} s vs "
                   f"{b2['wall']:.2f} s; with ext-extend's caches cold: "
                   f"{b2['wall'] / summ('W2-cold', 'ext-extend')['wall']:.1f}×)." if summ("W2-cold", "ext-extend")
                   else f"W2 ≥ 5× faster than Buildah end to end: {verdict(sp >= 5)} ({sp:.1f}×).")
    w3 = results.get("W3", {}).get("tools", {}).get("ext-extend")
    if w3:
        counts = [len(s["info"]["unpacks"]) for s in w3["runs"]]
        out.append(f"W3 rootfs unpacked once: {verdict(all(c == 1 for c in counts))} (\"unpacked … for RUN\" "
                   f"log lines per measured run: {counts}).")
    rc = checks.get("w3_reads")
    if rc:
        if "skipped" in rc:
            out.append(f"W3 differ reads no unchanged file: not checked ({rc['skipped']}).")
        else:
            parts = []
            ok = True
            for mode, r in rc.items():
                if "error" in r:
                    ok = False
                    parts.append(f"{mode}: failed ({r['error']})")
                    continue
                bad = r["unchanged_files_read"]
                ok = ok and not bad
                parts.append(f"{mode} snapshots: {r['changed_files_read']} changed files read, "
                             f"{len(bad)} unchanged{(': ' + ', '.join(bad[:5])) if bad else ''}; plus "
                             f"{r['user_lookup_reads']} reads of /etc/passwd|group for USER (not the differ)"
                             + (f"; cache metadata read: {', '.join(r['other_reads'])}" if r["other_reads"] else ""))
            out.append(f"W3 differ never reads unchanged file contents: {verdict(ok)} (strace of ext-extend's own "
                       f"threads, files opened for reading in its scratch dir and caches; " + "; ".join(parts) + ").")
    sc = results.get("W2-step-cache", {}).get("tools", {}).get("ext-extend")
    if sc:
        e = sc["summary"]
        ran = [len(r["info"]["runs"]) for r in sc["runs"]]
        unpacked = [len(r["info"]["unpacks"]) for r in sc["runs"]]
        hits = [r["info"].get("step_cache_hits", 0) for r in sc["runs"]]
        nothing_ran = all(x == 0 for x in ran + unpacked) and all(h >= 1 for h in hits)
        out.append(f"W2 with a warm step cache < 0.3 s: {verdict(e['wall'] < 0.3)} ({e['wall']:.3f} s median, "
                   f"{e['wall_min']:.3f}–{e['wall_max']:.3f}).")
        out.append(f"W2 with a warm step cache runs no command: {verdict(nothing_ran)} (step cache hits per run: "
                   f"{hits}; RUN commands run: {ran}; rootfs unpacks: {unpacked}).")
        if b2:
            sp = b2["wall"] / e["wall"]
            line = (f"W2 with a warm step cache ≥ 20× faster than Buildah: {verdict(sp >= 20)} ({sp:.0f}× Buildah's W2 "
                    f"{b2['wall']:.2f} s")
            bl = summ("W2-step-cache", "buildah --layers")
            if bl:
                line += f"; {bl['wall'] / e['wall']:.0f}× Buildah with its own layer cache warm, {bl['wall']:.2f} s"
            out.append(line + ").")
    sh = results.get("W4-shared-cache", {}).get("tools", {}).get("ext-extend shared cache")
    if sh:
        e = sh["summary"]
        transfer = median([r["info"].get("layer_transfer") for r in sh["runs"]]) or 0.0
        hits = [r["info"].get("step_cache_hits", 0) for r in sh["runs"]]
        ran = [len(r["info"]["runs"]) + len(r["info"]["unpacks"]) for r in sh["runs"]]
        line = (f"Step cache shared through a registry, second builder ≤ 0.5 s + the layer's transfer: "
                f"{verdict(e['wall'] <= 0.5 + transfer and all(h >= 1 for h in hits) and not any(ran))} "
                f"({e['wall']:.2f} s median; the layer alone takes {transfer:.3f} s from the local registry; hits per "
                f"run: {hits}")
        no = summ("W4-shared-cache", "ext-extend no shared cache")
        if no:
            line += f"; the same builder without the shared cache: {no['wall']:.2f} s"
        out.append(line + ").")
    rss300 = [summ(w, "ext-extend") for w in ("W1", "W2", "W3", "W1-cold", "W2-cold")]
    rss300 = max((s["maxrss_max"] for s in rss300 if s), default=None)
    rss1g = [summ(w, "ext-extend") for w in ("W1-1G", "W2-1G", "W2-1G-cold")]
    rss1g = max((s["maxrss_max"] for s in rss1g if s), default=None)
    if rss300 is not None:
        line = f"Peak RSS ≤ 128 MiB: {verdict(rss300 <= 128 * MIB and (rss1g is None or rss1g <= 128 * MIB))} " \
               f"(300 MB base: {rss300 / MIB:.0f} MiB"
        if rss1g is not None:
            same = rss1g <= rss300 * 1.1 + 4 * MIB
            line += f"; 1 GB base: {rss1g / MIB:.0f} MiB). Same for 300 MB and 1 GB: {verdict(same)} " \
                    f"(within 10% + 4 MiB)."
        else:
            line += "; 1 GB base not run)."
        out.append(line)
    r2 = results.get("R2-cold", {}).get("tools", {})
    for tool in ("ext-extend", "ext-extend on tmpfs"):
        if tool not in r2:
            continue
        runs, wall = r2[tool]["runs"], r2[tool]["summary"]["wall"]
        # The RUN script's own time: the sandbox+command time ext-extend logs for the step.
        cmd = median([sum(r["command"] for r in x["info"]["runs"]) for x in runs])
        over = wall - cmd
        line = f"(c) {tool}: cold RUN overhead on the Debian minbase ≤ 1.5 s: {verdict(over <= 1.5)} " \
               f"({over:.2f} s = wall {wall:.2f} − the RUN's sandbox+command {cmd:.2f}"
        bo = summ("R2-cold", "buildah overlay warm")
        if bo:
            line += f"); ahead of Buildah overlay warm: {verdict(wall < bo['wall'])} ({wall:.2f} s vs {bo['wall']:.2f} s)."
        else:
            line += ")."
        out.append(line)
    for key in ("R2-cold", "W2-cold"):
        e, b = summ(key, "ext-extend"), summ(key, "ext-extend baseline")
        if e and b:
            sp = b["wall"] / e["wall"]
            out.append(f"{key} ≥ 3× faster than the baseline build: {verdict(sp >= 3)} ({sp:.1f}×: {e['wall']:.2f} s "
                       f"vs {b['wall']:.2f} s).")
    # Kaniko has no warm state: every run unpacks the base. W2-cold is ext-extend on the same terms.
    kan = [(key, key, "ext-extend") for key in ("W1", "W2")] + [("W2", "W2-cold", "ext-extend, caches cold"),
                                                               ("R2-cold", "R2-cold", "ext-extend, caches cold")]
    kan = [(f"{key} ({what})" if what != "ext-extend" else key, summ(ours, "ext-extend"), summ(key, "kaniko"))
           for key, ours, what in kan]
    kan = [f"{key} {k['wall'] / e['wall']:.1f}× ({e['wall']:.2f} s vs {k['wall']:.2f} s)" for key, e, k in kan if e and k]
    if kan:
        out.append("(d) faster than Kaniko: " + "; ".join(kan) + ".")
    return out


def machine_info() -> dict:
    def sh(cmd):
        r = subprocess.run(cmd, shell=True, capture_output=True, text=True)
        return r.stdout.strip()

    cpu = sh("sed -n 's/^model name\\s*: //p' /proc/cpuinfo | head -1")
    mem = int(sh("sed -n 's/^MemTotal: *\\([0-9]*\\).*/\\1/p' /proc/meminfo") or 0) / 1024 / 1024
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(), "cpu": cpu, "mem_gib": mem, "kernel": os.uname().release,
        "load_before": "%.2f %.2f %.2f" % os.getloadavg(),
        "ext_version": sh(f"{EXT} --version"),
        "commit": sh("git -C " + str(REPO) + " rev-parse --short HEAD") + (
            "+dirty" if sh("git -C " + str(REPO) + " status --porcelain --untracked-files=no") else ""),
        "buildah": sh("buildah --version") or "buildah missing",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="measured runs per workload and tool (default 5)")
    ap.add_argument("--only", help="comma-separated workload keys (W1,W2,W3,W4,W1-cold,...)")
    ap.add_argument("--no-buildah", action="store_true", help="skip the Buildah peer")
    ap.add_argument("--no-1g", action="store_true", help="skip the 1 GB base workloads")
    ap.add_argument("--no-debian", action="store_true", help="skip bench (c), R2-cold on the Debian minbase image")
    ap.add_argument("--no-registry", action="store_true", help="skip W4")
    ap.add_argument("--no-criterion", action="store_true", help="skip the micro-benchmarks")
    ap.add_argument("--no-checks", action="store_true", help="skip the strace check of W3")
    ap.add_argument("--baseline", default=os.environ.get("EXT_EXTEND_BASELINE"), metavar="BIN",
                    help="an earlier ext-extend binary, measured beside this one in the -cold rows "
                         "(env EXT_EXTEND_BASELINE)")
    ap.add_argument("--kaniko", default=os.environ.get("KANIKO_EXECUTOR"), metavar="BIN",
                    help="a Kaniko executor built outside the project, run jailed in W1, W2 and R2-cold "
                         "(bench (d); env KANIKO_EXECUTOR)")
    ap.add_argument("--output", default=str(RESULTS / "latest"), help="results path without extension")
    args = ap.parse_args()
    started = time.monotonic()
    if os.geteuid() != 0:
        log("bench: ext-extend RUN and buildah need root")
        return 1
    for tool in (EXT, LIMIT):
        if not tool.exists():
            log(f"bench: {tool} is missing (cargo build --release -p ext-extend -p bench-limit)")
            return 1
    if not args.no_buildah and shutil.which("buildah") is None:
        log("bench: buildah is missing (scripts/install-deps.sh buildah)")
        return 1
    for flag, path in (("--baseline", args.baseline), ("--kaniko", args.kaniko)):
        if path and not os.access(path, os.X_OK):
            log(f"bench: {flag} {path}: not an executable file")
            return 1
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
    if args.kaniko:
        args.kaniko = os.path.abspath(args.kaniko)
    machine = machine_info()
    if args.baseline:
        machine["baseline"] = subprocess.run([args.baseline, "--version"], capture_output=True, text=True).stdout.strip()
    if args.kaniko:
        version = subprocess.run([args.kaniko, "version"], capture_output=True, text=True).stdout  # "Kaniko version : vX"
        machine["kaniko"] = "Kaniko " + version.split(":")[-1].strip()
    env = Env(args)
    only = set(args.only.split(",")) if args.only else None
    wls = [w for w in make_workloads(env) if only is None or w.key in only]
    # The chroot copy of the base for the RUN limits.
    if any(w.key in ("W2", "W3") for w in wls):
        subprocess.run(["cp", "-a", env.root / "rootfs-300", env.limit_rootfs], check=True)
    if any(w.key == "W2-live" for w in wls):
        subprocess.run(["cp", "-a", env.root / "rootfs-300", env.live_rootfs], check=True)

    results: dict = {}
    skipped: dict = {}
    checks: dict = {}

    def run_workloads(wls: list[Workload]) -> None:
        for wl in wls:
            log(f"bench: {wl.key}: {wl.title} ({', '.join(wl.tools)}; 1 warm-up + {wl.runs} runs)")
            runs = {tool: [] for tool in wl.tools}
            try:
                for i in range(wl.runs + 1):
                    for tool, fn in wl.tools.items():
                        if i == 0 and wl.no_warmup:
                            continue
                        name = f"{wl.key}-{tool.replace(' ', '-')}-{i}"
                        # Untimed: write back what the previous run left dirty (Buildah leaves
                        # GBs), so no run pays for another's writeback in its fsyncs.
                        os.sync()
                        s = fn(env, name)
                        if i > 0:
                            runs[tool].append(s)
                        log(f"  {tool:16} run {i}{' (warm-up)' if i == 0 else ''}: {s.wall:6.2f} s wall, "
                            f"{s.cpu:6.2f} s CPU, {s.maxrss / MIB:5.0f} MiB, "
                            f"{'' if s.output_bytes is None else f'{s.output_bytes / 1e6:.1f} MB out'}")
            except RunFailed as e:
                log(f"bench: {wl.key} failed: {e}")
                skipped[wl.key] = f"failed: {str(e).splitlines()[0]}"
                continue
            finally:
                empty_trash(env)
            results[wl.key] = {
                "title": wl.title, "note": wl.note,
                "tools": {t: {"summary": summarize(r), "runs": [s.to_json() for s in r]} for t, r in runs.items()},
            }

    if not args.no_buildah:
        shutil.rmtree(env.bstore, ignore_errors=True)
    with Registry(env.tmp / "kaniko-registry") if args.kaniko else contextlib.nullcontext() as kaniko_registry:
        env.kaniko_registry = kaniko_registry
        try:
            run_workloads(wls)
        except BaseException:
            shutil.rmtree(env.bstore, ignore_errors=True)
            raise

    if not args.no_registry and (only is None or any(k.startswith("W4") for k in only)):
        reg = Registry(env.tmp / "registry")
        try:
            with reg:
                w4, why = make_w4(env, reg)
                if why:
                    skipped["W4"] = why
                    log(f"bench: W4 {why}")
                run_workloads([w for w in w4 if only is None or "W4" in only or w.key in only])
        except Exception as e:  # the registry is stopped by its context manager either way
            skipped["W4"] = f"failed: {e}"
            log(f"bench: W4 failed: {e}")

    if not args.no_checks and (only is None or "W3" in only):
        log("bench: W3 read check under strace")
        checks["w3_reads"] = w3_reads_check(env)

    crit = [] if args.no_criterion else run_criterion(env)
    machine["load_after"] = "%.2f %.2f %.2f" % os.getloadavg()
    md = report(env, results, skipped, checks, crit, started, machine)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({
        "machine": machine, "runs": args.runs, "workloads_version": workloads.VERSION, "results": results,
        "skipped": skipped, "checks": checks, "criterion": crit,
        "total_seconds": time.monotonic() - started}, indent=1, default=str))
    print(md)
    # Scratch is large and regenerated each run; generated workloads stay cached.
    shutil.rmtree(env.bstore, ignore_errors=True)
    shutil.rmtree(env.bstore.with_name("buildah-store-overlay"), ignore_errors=True)
    shutil.rmtree(env.scratch, ignore_errors=True)
    shutil.rmtree(env.limit_rootfs, ignore_errors=True)
    shutil.rmtree(env.live_rootfs, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
