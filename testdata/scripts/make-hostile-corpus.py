#!/usr/bin/env python3
"""Writes the hostile test corpus: uncompressed tar layers (and one gzip bomb) that a malicious
base image could carry, each named for what it tries. The tests in
crates/ext-extend/tests/sandbox.rs append them to the busybox test image and check that
ext-extend either refuses them with a clear error or runs them safely, never writing outside
its scratch root (canary files).

    make-hostile-corpus.py OUT_DIR --canary HOST_DIR [--probe PROBE_BINARY]

HOST_DIR is a directory of the build host that escapes aim at (its `canary` file must stay
untouched). PROBE_BINARY (the escape_probe example) is placed setuid-root and with file
capabilities when given. Names and link targets are written verbatim: Python's tarfile does
not sanitize what it writes. Output is deterministic."""
import argparse, gzip, io, os, struct, tarfile

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--canary", required=True)
p.add_argument("--probe")
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)
canary = os.path.abspath(args.canary)
climb = "../" * 24 + canary.lstrip("/")

def entry(name, kind=tarfile.REGTYPE, data=b"", mode=0o644, uid=0, gid=0, link="", dev=(0, 0), pax=None):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid, info.mtime = kind, mode, uid, gid, 315532801
    info.linkname = link
    info.devmajor, info.devminor = dev
    if pax:
        info.pax_headers = pax
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, (io.BytesIO(data) if kind == tarfile.REGTYPE else None)

def layer(name, entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for info, data in entries:
            t.addfile(info, data)
    with open(os.path.join(args.out, name + ".tar"), "wb") as f:
        f.write(buf.getvalue())

D, S, H, C, B = tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE

# Device nodes, world-writable: /dev/full (writes fail with ENOSPC when it is reachable) and
# /dev/urandom (reads succeed when reachable). Harmless devices on purpose: the test proves
# reachability, and a regression must not damage the machine.
layer("devices", [entry("xx-full", C, mode=0o666, dev=(1, 7)), entry("xx-urandom", C, mode=0o666, dev=(1, 9))])

# Symlink, hard-link and whiteout escapes, each aimed at the canary directory.
layer("symlink-absolute", [entry("evil", S, link=canary), entry("evil/pwned", data=b"x")])
layer("symlink-climb", [entry("up", S, link="../" * 24), entry("up" + canary + "/pwned", data=b"x")])
layer("symlink-chain", [entry("a", S, link="b"), entry("b", S, link="c/../../../../../../../.."), entry("c", D), entry("a" + canary + "/pwned", data=b"x")])
layer("dotdot-name", [entry(climb + "/../pwned", data=b"x")])
layer("absolute-name", [entry(canary + "/pwned", data=b"x")])
layer("hardlink-out", [entry("pw", H, link=climb)])
layer("hardlink-absolute", [entry("pw", H, link=canary + "/canary")])
layer("whiteout-climb", [entry(climb.rsplit("/", 1)[0] + "/.wh.canary")])
layer("whiteout-through-symlink", [entry("w", S, link=canary), entry("w/.wh.canary")])
layer("opaque-through-symlink", [entry("o", S, link=canary), entry("o/.wh..wh..opq")])
layer("dir-replaced-by-symlink", [entry("d", D, mode=0o755), entry("d", S, link=canary), entry("d/pwned", data=b"x")])

# Header bombs: a GNU long name and a PAX record far beyond any real path (8 MiB), and a
# gzip bomb (100 MiB of zeros in one file, about 100 KB compressed).
def raw_header(name, kind, size):
    h = bytearray(512)
    h[: len(name)] = name
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % size
    h[136:148] = b"00000000000\0"
    h[156] = ord(kind)
    h[257:265] = b"ustar  \0"
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)

big = 8 << 20  # twice the 4 MiB limit
with open(os.path.join(args.out, "gnu-longname-bomb.tar"), "wb") as f:
    f.write(raw_header(b"././@LongLink", "L", big))
    f.write(b"a" * big)
    f.write(raw_header(b"x", "0", 0) + b"\0" * 1024)
with open(os.path.join(args.out, "pax-bomb.tar"), "wb") as f:
    f.write(raw_header(b"PaxHeaders/x", "x", big))
    head = b"%d path=" % big
    f.write(head + b"a" * (big - len(head)))
    f.write(raw_header(b"x", "0", 0) + b"\0" * 1024)
zeros = 100 << 20
with gzip.GzipFile(os.path.join(args.out, "gzip-bomb.tar.gz"), "wb", compresslevel=9, mtime=0) as f:
    f.write(raw_header(b"bomb", "0", zeros))
    chunk = b"\0" * (1 << 20)
    for _ in range(zeros >> 20):
        f.write(chunk)
    f.write(b"\0" * 1024)

if args.probe:
    probe = open(args.probe, "rb").read()
    layer("setuid-probe", [entry("usr/local/bin/escape-probe", data=probe, mode=0o4755, uid=0)])
    # security.capability v2: cap_sys_chroot, cap_dac_override, cap_sys_admin permitted and
    # effective (what `setcap cap_sys_chroot,cap_dac_override,cap_sys_admin+ep` writes).
    caps = (1 << 18) | (1 << 1) | (1 << 21)
    xattr = struct.pack("<IIIII", 0x02000000 | 1, caps & 0xFFFFFFFF, 0, caps >> 32, 0)
    layer("filecaps-probe", [entry("usr/local/bin/escape-probe", data=probe, mode=0o755,
                                   pax={"SCHILY.xattr.security.capability": xattr.decode("latin-1")})], fmt=tarfile.PAX_FORMAT)
    layer("probe", [entry("usr/local/bin/escape-probe", data=probe, mode=0o755)])
