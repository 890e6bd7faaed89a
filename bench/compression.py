#!/usr/bin/env python3
"""`make bench` (e): the layer compression table, by which the default is chosen.

Compresses two tars with every setting (gzip/zlib-rs levels 1-6, zstd levels 1, 3, 6, 9), through
ext-oci's own layer writer (`cargo run --release --example compression_table`: the same code,
threads and hashing as `LayerWriter`), then decompresses each result:
- the W1 context (200 MB: text, binaries, already-compressed files), as a tar;
- the Debian minbase image's layer (bookworm, debootstrap, ~128 MB of tar; bench (c)).
Rounds are interleaved (every setting once per round); medians of --rounds (>= 5).

The "build + push" columns add the upload of the compressed bytes at 100 MB/s and 1 GB/s to the
compression time (what one build costs before the image is in the registry); "pull" adds the
download and the decompression (what every node that runs or extends the image pays).

Writes bench/results/compression.md and .json and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results"
SETTINGS = ["gzip:1", "gzip:2", "gzip:3", "gzip:4", "gzip:5", "gzip:6", "zstd:1", "zstd:3", "zstd:6", "zstd:9"]
LINKS = {"100 MB/s": 100e6, "1 GB/s": 1e9}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def inputs(root: Path) -> dict[str, Path]:
    """The two tars, made once under work/VERSION/compression/."""
    out = root / "compression"
    out.mkdir(parents=True, exist_ok=True)
    w1 = out / "w1-context.tar"
    if not w1.exists():
        subprocess.run(["tar", "--sort=name", "--numeric-owner", "-C", str(root / "ctx-w1"), "-cf", str(w1) + ".tmp",
                        "."], check=True)
        os.rename(str(w1) + ".tmp", w1)
    deb = out / "debian-minbase.tar"
    if not deb.exists():
        layout = workloads.ensure_debian(WORK, log)
        info = json.loads((layout.parent / (layout.name + ".json")).read_text())
        blob = layout / "blobs" / "sha256" / info["layers"][0]["digest"].split(":")[1]
        with open(str(deb) + ".tmp", "wb") as f:
            subprocess.run(["gzip", "-dc", str(blob)], stdout=f, check=True)
        os.rename(str(deb) + ".tmp", deb)
    return {"W1 context": w1, "Debian minbase": deb}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--output", default=str(RESULTS / "compression"))
    args = ap.parse_args()
    root = WORK / workloads.VERSION
    if not (root / ".done-ctx-w1").exists():
        workloads.ensure(REPO, WORK, REPO / "target" / "release" / "bench-limit", log)
    tars = inputs(root)
    subprocess.run(["cargo", "build", "--release", "--locked", "-p", "ext-oci", "--example", "compression_table"],
                   cwd=REPO, check=True)
    exe = next((REPO / "target").glob("*/release/examples/compression_table"))
    load_before = "%.2f %.2f %.2f" % os.getloadavg()
    started = time.monotonic()
    argv = ["nice", str(exe), str(args.rounds), str(args.threads), ",".join(SETTINGS), *map(str, tars.values())]
    log("bench: " + " ".join(argv))
    r = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=True)
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    load_after = "%.2f %.2f %.2f" % os.getloadavg()
    names = {str(p): n for n, p in tars.items()}

    table = []
    for path, name in names.items():
        for s in SETTINGS:
            fmt, level = s.split(":")
            mine = [x for x in rows if x["input"] == path and x["format"] == fmt and x["level"] == int(level)]
            sizes = {x["size"] for x in mine}
            digests = {x["digest"] for x in mine}
            assert len(sizes) == 1 and len(digests) == 1, f"{name} {s}: output differs between rounds"
            c = statistics.median(x["compress_s"] for x in mine)
            d = statistics.median(x["decompress_s"] for x in mine)
            size = mine[0]["size"]
            table.append({"input": name, "setting": s, "input_bytes": mine[0]["input_bytes"], "size": size,
                          "compress_s": c, "decompress_s": d,
                          "push": {k: c + size / bw for k, bw in LINKS.items()},
                          "pull": {k: size / bw + d for k, bw in LINKS.items()}})

    L = ["# Layer compression (`make bench` (e), bench/compression.py)", ""]
    L.append(f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} CPUs, "
             f"{args.threads} compression threads; medians of {args.rounds} interleaved rounds; load average "
             f"before/after: {load_before} / {load_after}; {time.monotonic() - started:.0f} s. Sizes are exact "
             f"(the bytes do not vary between rounds). Build + push = compression + upload; pull = download + "
             f"decompression.")
    L.append("")
    L.append("| input | setting | MB | ratio | compress s | MB/s | decompress s | build+push 100 MB/s | "
             "build+push 1 GB/s | pull 100 MB/s | pull 1 GB/s |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in table:
        L.append(f"| {t['input']} | {t['setting'].replace(':', ' ')} | {t['size'] / 1e6:.1f} | "
                 f"{t['input_bytes'] / t['size']:.2f} | {t['compress_s']:.2f} | "
                 f"{t['input_bytes'] / t['compress_s'] / 1e6:.0f} | {t['decompress_s']:.2f} | "
                 f"{t['push']['100 MB/s']:.2f} | {t['push']['1 GB/s']:.2f} | {t['pull']['100 MB/s']:.2f} | "
                 f"{t['pull']['1 GB/s']:.2f} |")
    md = "\n".join(L) + "\n"
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({"load_before": load_before, "load_after": load_after,
                                                    "rounds": args.rounds, "threads": args.threads,
                                                    "table": table, "runs": rows}, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
