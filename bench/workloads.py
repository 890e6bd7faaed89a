"""Deterministic workload generation for `make bench` (no downloads).

Everything comes from a seeded PRNG, so a given VERSION always produces the same files and
(because layers are written by bench-limit with normalized headers) the same layer digests:

- the run image: busybox (from testdata/scripts/make-run-image.sh, repacked with normalized
  headers) plus two generated layers, ~300 MB in ~10k files over 3 layers, as an OCI layout;
- a 1 GB variant (same mix, ~34k files) for the peak-RSS goal;
- the W1 context: ~200 MB, many small files and a few large ones;
- the W3 COPY context: ~20 MB of small files.

File contents are a mix gzip treats like real images: text-like (a Zipf-distributed
vocabulary, like source and docs), binary-like (4 KiB blocks of random, low-entropy and
string-table data, like ELF files) and already-compressed (random, like .png/.jar). Overall
gzip -1 ratio ~0.5, close to /usr on a Debian system.

Bump VERSION whenever generation changes: workloads are cached under bench/work/<VERSION>/.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

VERSION = "v1"
SEED = 20261124
FIXED_MTIME = 1_700_000_000  # files of the contexts; layers normalize times anyway

MB = 1_000_000

# Paths in the base image the workloads' RUN commands use (see bench/workloads/*.Dockerfile).
APP_CONF = "etc/bench/app.conf"  # ~100 KB text, appended to by W2
LIBBENCH = "usr/lib/bench/libbench.so.1"  # 2 MB binary, W2 copies 300 KB of it
OBSOLETE = "usr/share/doc/bench/obsolete.txt"  # deleted by W2
REMOVED_BY_APP = "usr/share/doc/bench/removed-by-app.txt"  # deleted by the app layer (a whiteout)


class Content:
    """Seeded generator of file contents."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.corpus = self._corpus(4 * 1024 * 1024)
        self.corpus2 = self.corpus + self.corpus
        alphabet = [0] * 6 + [0xFF, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x48, 0x89]
        self.low_entropy = bytes(alphabet[b % len(alphabet)] for b in range(256))

    def _corpus(self, size: int) -> bytes:
        r = self.rng
        syll = ["ka", "lo", "mi", "ne", "tu", "ra", "si", "do", "fe", "gu", "ba", "ze", "po", "qui", "str",
                "in", "ex", "con", "able", "tion", "er", "ed", "ing", "pre", "get", "set", "init", "data"]
        words = sorted({"".join(r.choice(syll) for _ in range(r.randint(1, 4))) for _ in range(6000)})
        r.shuffle(words)
        weights = [1.0 / (i + 1) for i in range(len(words))]
        cum = []
        acc = 0.0
        for w in weights:
            acc += w
            cum.append(acc)
        punct = ["(", ")", " = ", ", ", ".", ": ", " {", "}", ";", " -> ", " + ", "[", "]", '"']
        out = []
        n = 0
        while n < size:
            indent = " " * (4 * r.randint(0, 3))
            ws = r.choices(words, cum_weights=cum, k=r.randint(3, 14))
            parts = []
            for w in ws:
                parts.append(w)
                parts.append(r.choice(punct) if r.random() < 0.3 else " ")
            line = indent + "".join(parts).rstrip() + "\n"
            if r.random() < 0.05:
                line += "\n"
            out.append(line)
            n += len(line)
        return "".join(out).encode()[:size]

    def text(self, size: int) -> bytes:
        off = self.rng.randrange(len(self.corpus))
        if size <= len(self.corpus):
            return self.corpus2[off : off + size]
        reps = self.corpus2[off:] + self.corpus * (size // len(self.corpus) + 1)
        return reps[:size]

    def compressed(self, size: int) -> bytes:
        return self.rng.randbytes(size)

    def binary(self, size: int) -> bytes:
        r = self.rng
        blocks = []
        n = 0
        while n < size:
            x = r.random()
            if x < 0.22:
                b = r.randbytes(4096)
            elif x < 0.65:
                b = r.randbytes(4096).translate(self.low_entropy)
            elif x < 0.90:
                off = r.randrange(len(self.corpus))
                b = self.corpus2[off : off + 4096].replace(b" ", b"\0")
            else:
                b = bytes(4096)
            blocks.append(b)
            n += len(b)
        return b"".join(blocks)[:size]

    def of_kind(self, kind: str, size: int) -> bytes:
        return {"text": self.text, "binary": self.binary, "compressed": self.compressed}[kind](size)


def _sizes(rng: random.Random, n: int, total: int, median: float, sigma: float, cap: int) -> list[int]:
    """n log-normal sizes scaled to sum to ~total, none above cap."""
    raw = [rng.lognormvariate(math.log(median), sigma) for _ in range(n)]
    for _ in range(6):
        capped = [min(x, cap) for x in raw]
        free = sum(x for x in capped if x < cap)
        fixed = total - cap * sum(1 for x in capped if x >= cap)
        if free <= 0 or fixed <= 0:
            break
        raw = [x if x >= cap else x * fixed / free for x in capped]
    return [max(0, int(min(x, cap))) for x in raw]


# (directory template, extension, kind, share of files, share of bytes, median size)
SYS_PROFILE = [
    ("usr/lib/x86_64-linux-gnu/{w}", ".so.{n}", "binary", 0.30, 0.52, 40_000),
    ("usr/lib/python3/dist-packages/{w}/{v}", ".py", "text", 0.30, 0.16, 6_000),
    ("usr/share/doc/{w}", ".txt", "text", 0.15, 0.07, 4_000),
    ("usr/share/locale/{w}/LC_MESSAGES", ".mo", "binary", 0.12, 0.10, 8_000),
    ("usr/share/icons/{w}/{v}", ".png", "compressed", 0.13, 0.15, 3_000),
]
APP_PROFILE = [
    ("opt/app/node_modules/{w}/{v}", ".js", "text", 0.62, 0.30, 5_000),
    ("opt/app/lib", ".jar", "compressed", 0.04, 0.30, 400_000),
    ("opt/app/bin", "", "binary", 0.04, 0.15, 200_000),
    ("var/lib/app/{w}", ".db", "binary", 0.30, 0.25, 10_000),
]
CONTEXT_PROFILE = [
    ("src/{w}/{v}", ".py", "text", 0.45, 0.30, 4_000),
    ("config/{w}", ".yaml", "text", 0.15, 0.05, 1_500),
    ("assets/{w}", ".png", "compressed", 0.15, 0.25, 6_000),
    ("bin/{w}", "", "binary", 0.10, 0.25, 20_000),
    ("lib/{w}/{v}", ".so", "binary", 0.15, 0.15, 12_000),
]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))


def make_tree(root: Path, content: Content, profile, n_files: int, total: int, per_dir: int = 25,
              symlinks: bool = True) -> tuple[int, int]:
    """Fills root with n_files files of ~total bytes following profile; returns (files, bytes)."""
    rng = content.rng
    files = 0
    written = 0
    for template, ext, kind, file_share, byte_share, median in profile:
        n = max(1, round(n_files * file_share))
        sizes = _sizes(rng, n, int(total * byte_share), median, 1.3, max(int(total * byte_share / 6), 1))
        dirs = [template.format(w=_word(rng), v=_word(rng)) for _ in range(max(1, n // per_dir))]
        for i, size in enumerate(sizes):
            d = root / dirs[i % len(dirs)]
            d.mkdir(parents=True, exist_ok=True)
            name = f"{_word(rng)}{i}" + ext.format(n=rng.randint(0, 9))
            p = d / name
            p.write_bytes(content.of_kind(kind, size))
            if kind == "binary" and ("bin" in template or ".so" in ext):
                p.chmod(0o755)
            if symlinks and ext.startswith(".so.") and rng.random() < 0.3:
                link = d / (name.rsplit(".so.", 1)[0] + ".so")
                if not link.exists():
                    link.symlink_to(name)
            files += 1
            written += size
    return files, written


def _set_mtimes(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + dirnames:
            os.utime(os.path.join(dirpath, n), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


def _pack(bench_limit: Path, out_blob_dir: Path, tree: Path, level: int = 6,
          whiteouts: tuple[str, ...] = ()) -> dict:
    """Writes tree as a gzip layer (2 threads) into a blobs dir; returns its descriptor info."""
    tmp = out_blob_dir / ".layer.tmp"
    argv = [str(bench_limit), "--threads", "2", "--level", str(level), "--no-fsync", "--out", str(tmp),
            "--dir", f"{tree}:"]
    for w in whiteouts:
        argv += ["--whiteout", w]
    info = json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)
    tmp.rename(out_blob_dir / info["digest"].split(":")[1])
    return info


def _write_blob(blob_dir: Path, data: bytes) -> tuple[str, int]:
    digest = hashlib.sha256(data).hexdigest()
    (blob_dir / digest).write_bytes(data)
    return "sha256:" + digest, len(data)


def write_layout(layout: Path, layers: list[dict], history: list[str]) -> str:
    """An OCI layout with one manifest tagged `latest` (user 1000:1000, like a CNB run image)."""
    blob_dir = layout / "blobs" / "sha256"
    config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine),
        "os": "linux",
        "created": "1980-01-01T00:00:01Z",
        "config": {
            "User": "1000:1000",
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
            "Labels": {"io.buildpacks.stack.id": "bench", "org.opencontainers.image.title": "ext-extend bench"},
        },
        "rootfs": {"type": "layers", "diff_ids": [l["diff_id"] for l in layers]},
        "history": [{"created": "1980-01-01T00:00:01Z", "created_by": h} for h in history],
    }
    cdig, csize = _write_blob(blob_dir, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": l["digest"],
                    "size": l["size"]} for l in layers],
    }
    mdig, msize = _write_blob(blob_dir, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    return mdig


def busybox_tree(repo: Path, dest: Path) -> None:
    """The busybox run image of testdata/scripts/make-run-image.sh, flattened into dest."""
    tmp = dest.parent / (dest.name + ".layout")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([str(repo / "testdata/scripts/make-run-image.sh"), str(tmp), "latest"], check=True,
                   stdout=subprocess.DEVNULL)
    index = json.loads((tmp / "index.json").read_text())
    man = json.loads((tmp / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    dest.mkdir(parents=True)
    for layer in man["layers"]:
        extract_layer(tmp / "blobs/sha256" / layer["digest"].split(":")[1], dest)
    shutil.rmtree(tmp)


def extract_layer(blob: Path, root: Path) -> None:
    """Applies a gzip layer to root with GNU tar, then its whiteouts."""
    subprocess.run(["tar", "--warning=no-timestamp", "-xzf", str(blob), "-C", str(root), "--numeric-owner"], check=True)
    with tarfile.open(blob, "r:gz") as t:
        names = [m.name for m in t.getmembers() if os.path.basename(m.name).startswith(".wh.")]
    for n in names:
        d, b = os.path.split(n[2:] if n.startswith("./") else n)
        wh = root / d / b
        if b == ".wh..wh..opq":
            raise RuntimeError("opaque whiteouts are not used by the bench images")
        victim = root / d / b[len(".wh."):]
        if victim.is_dir() and not victim.is_symlink():
            shutil.rmtree(victim)
        elif victim.exists() or victim.is_symlink():
            victim.unlink()
        wh.unlink()


def make_base(repo: Path, bench_limit: Path, out: Path, scale: float, seed: int) -> dict:
    """The run image: busybox + generated system and app layers, ~300 MB x scale."""
    work = out.parent / (out.name + ".trees")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    work.mkdir(parents=True)
    content = Content(seed)
    bb = work / "busybox"
    busybox_tree(repo, bb)
    sys_t = work / "sys"
    sys_t.mkdir()
    n_sys, b_sys = make_tree(sys_t, content, SYS_PROFILE, int(6900 * scale), int(196 * MB * scale))
    for rel, kind, size in [(APP_CONF, "text", 100_000), (LIBBENCH, "binary", 2_000_000),
                            (OBSOLETE, "text", 50_000), (REMOVED_BY_APP, "text", 20_000)]:
        (sys_t / rel).parent.mkdir(parents=True, exist_ok=True)
        (sys_t / rel).write_bytes(content.of_kind(kind, size))
    app_t = work / "app"
    app_t.mkdir()
    n_app, b_app = make_tree(app_t, content, APP_PROFILE, int(3000 * scale), int(100 * MB * scale))
    for t in (sys_t, app_t):
        _set_mtimes(t)
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    layers = [
        _pack(bench_limit, blob_dir, bb),
        _pack(bench_limit, blob_dir, sys_t),
        _pack(bench_limit, blob_dir, app_t, whiteouts=(REMOVED_BY_APP,)),
    ]
    mdig = write_layout(out, layers, ["busybox (make-run-image.sh)", "generated system files",
                                      "generated application files"])
    shutil.rmtree(work)
    info = {
        "manifest_digest": mdig,
        "layers": [{k: l[k] for k in ("digest", "diff_id", "size", "uncompressed_size", "entries")}
                   for l in layers],
        "files": n_sys + n_app,
        "file_bytes": b_sys + b_app,
        "compressed_bytes": sum(l["size"] for l in layers),
        "uncompressed_bytes": sum(l["uncompressed_size"] for l in layers),
        "entries": sum(l["entries"] for l in layers),
    }
    (out.parent / (out.name + ".json")).write_text(json.dumps(info, indent=1))
    return info


def make_rootfs(layout: Path, dest: Path) -> None:
    """The layout's layers unpacked in order (whiteouts applied): what a RUN sees."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    index = json.loads((layout / "index.json").read_text())
    man = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    for layer in man["layers"]:
        extract_layer(layout / "blobs/sha256" / layer["digest"].split(":")[1], dest)


def make_context(out: Path, seed: int, small_files: int, small_bytes: int, large: list[tuple[str, str, int]]) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    content = Content(seed)
    n, b = make_tree(out, content, CONTEXT_PROFILE, small_files, small_bytes, per_dir=30, symlinks=False)
    for rel, kind, size in large:
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            left = size
            while left > 0:
                part = min(left, 8 * 1024 * 1024)
                f.write(content.of_kind(kind, part))
                left -= part
        n += 1
        b += size
    _set_mtimes(out)
    info = {"files": n, "bytes": b}
    (out.parent / (out.name + ".json")).write_text(json.dumps(info, indent=1))
    return info


DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = os.environ.get("BENCH_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def make_debian_rootfs(dest: Path) -> None:
    """A Debian minbase tree (debootstrap from Debian's mirror: the one download of the bench),
    with the package cache and lists removed as Debian's container images do: ~120 MB in
    ~6.7k entries, close to the official `debian:bookworm` image."""
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing (apt-get install debootstrap)")
    tmp = dest.parent / (dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(tmp), DEBIAN_MIRROR], check=True,
                   stdout=subprocess.DEVNULL)
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (tmp / d).glob("*"):
            if p.is_file():
                p.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def make_debian_layout(rootfs: Path, out: Path) -> dict:
    """The minbase tree as a one-layer image compressed the way registries' images mostly are:
    one gzip member at level 6 (GNU tar | gzip -6), so it cannot be inflated in parallel."""
    shutil.rmtree(out, ignore_errors=True)
    blob_dir = out / "blobs" / "sha256"
    blob_dir.mkdir(parents=True)
    tmp = blob_dir / ".layer.tmp"
    with open(tmp, "wb") as f:
        tar = subprocess.Popen(["tar", "--sort=name", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", "-",
                                "."], stdout=subprocess.PIPE)
        diff_h, size_u = hashlib.sha256(), 0
        gz = subprocess.Popen(["gzip", "-6", "-n"], stdin=subprocess.PIPE, stdout=f)
        while chunk := tar.stdout.read(1 << 20):
            diff_h.update(chunk)
            size_u += len(chunk)
            gz.stdin.write(chunk)
        gz.stdin.close()
        if tar.wait() != 0 or gz.wait() != 0:
            raise RuntimeError("tar | gzip failed")
    h = hashlib.sha256()
    with open(tmp, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    layer = {"digest": "sha256:" + h.hexdigest(), "diff_id": "sha256:" + diff_h.hexdigest(),
             "size": tmp.stat().st_size, "uncompressed_size": size_u}
    tmp.rename(blob_dir / h.hexdigest())
    with tarfile.open(blob_dir / h.hexdigest(), "r:gz") as t:
        layer["entries"] = sum(1 for _ in t)
    mdig = write_layout(out, [layer], [f"debootstrap --variant=minbase {DEBIAN_SUITE}"])
    info = {"manifest_digest": mdig, "layers": [layer], "compressed_bytes": layer["size"],
            "uncompressed_bytes": size_u, "entries": layer["entries"]}
    (out.parent / (out.name + ".json")).write_text(json.dumps(info, indent=1))
    return info


def ensure_debian(work: Path, log=print) -> Path:
    """The Debian minbase image (bench (c)) under work/VERSION; returns the layout."""
    root = work / VERSION
    root.mkdir(parents=True, exist_ok=True)
    for name, fn in [("debian-rootfs", lambda: make_debian_rootfs(root / "debian-rootfs")),
                     ("debian-minbase", lambda: make_debian_layout(root / "debian-rootfs", root / "debian-minbase"))]:
        marker = root / f".done-{name}"
        if not marker.exists():
            import time

            t = time.monotonic()
            log(f"bench: generating {name} ...")
            fn()
            marker.write_text("ok\n")
            log(f"bench: generated {name} in {time.monotonic() - t:.1f}s")
    return root / "debian-minbase"


def ensure(repo: Path, work: Path, bench_limit: Path, log=print) -> Path:
    """Generates whatever is missing under work/VERSION; returns that directory."""
    root = work / VERSION
    root.mkdir(parents=True, exist_ok=True)

    def step(name: str, fn) -> None:
        marker = root / f".done-{name}"
        if marker.exists():
            return
        import time

        t = time.monotonic()
        log(f"bench: generating {name} ...")
        fn()
        marker.write_text("ok\n")
        log(f"bench: generated {name} in {time.monotonic() - t:.1f}s")

    step("base-300", lambda: make_base(repo, bench_limit, root / "base-300", 1.0, SEED))
    step("rootfs-300", lambda: make_rootfs(root / "base-300", root / "rootfs-300"))
    step("ctx-w1", lambda: make_context(root / "ctx-w1", SEED + 1, 4000, 50 * MB, [
        ("large/app.jar", "compressed", 45 * MB),
        ("large/model.bin", "binary", 40 * MB),
        ("large/data.json", "text", 30 * MB),
        ("large/libnative.so", "binary", 20 * MB),
        ("large/archive.tar.gz", "compressed", 15 * MB),
    ]))
    step("ctx-w3", lambda: make_context(root / "ctx-w3", SEED + 2, 600, 20 * MB, []))
    step("base-1g", lambda: make_base(repo, bench_limit, root / "base-1g", 1000 / 300, SEED + 3))
    (root / "ctx-empty").mkdir(exist_ok=True)
    return root


if __name__ == "__main__":
    import sys

    repo = Path(__file__).resolve().parent.parent
    ensure(repo, repo / "bench" / "work", repo / "target" / "release" / "bench-limit")
    sys.exit(0)
