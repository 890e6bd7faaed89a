#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz corpora (fuzz/corpus/<target>/seed-*): small Dockerfiles
covering every instruction and expansion form, tar layers with every entry type and the classic
escapes, and OCI index/manifest/config triples. Deterministic; run from anywhere."""
import io, json, os, tarfile, hashlib

here = os.path.dirname(os.path.abspath(__file__))

def out(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# --- Dockerfiles -----------------------------------------------------------------------------
dockerfiles = {
    "sample": open(os.path.join(here, "../testdata/sample/run.Dockerfile")).read(),
    "all": """# syntax=docker/dockerfile:1
ARG base_image
ARG G=global
FROM ${base_image}
ARG user_id=1000 V
ENV A=1 B="two words" C='$NOT' PATH=${PATH}:/opt/bin
ENV LEGACY value with spaces
LABEL a=b "c d"=e io.buildpacks.rebasable=true
USER ${user_id}:${user_id}
WORKDIR /work/${V:-dir}
SHELL ["/bin/sh", "-c"]
COPY --chown=1000:1000 --chmod=0755 a b* /dest/
ADD archive.tar.gz /opt/
RUN echo $A && \\
    # a comment inside
    echo done
RUN ["/bin/echo", "exec form"]
RUN --network=none true
CMD ["x"]
ENTRYPOINT echo hi
EXPOSE 80 443/udp ${PORT:-8080}
VOLUME /data
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=1m30s --retries=3 CMD true
MAINTAINER someone
ONBUILD RUN true
""",
    "heredoc": """FROM ${base_image}
RUN <<EOF
#!/bin/sh
echo $HOME
EOF
COPY <<-EOT /etc/x.conf
	value=${V}
	EOT
RUN <<'RAW'
echo '$not expanded'
RAW
""",
    "escape": """# escape=`
FROM ${base_image}
ENV A=x`
  y B=`$C
RUN dir c:\\
""",
    "modifiers": """FROM ${base_image}
ARG P=/usr/local/bin:/usr/bin
ENV A=${P#*:} B=${P##*:} C=${P%:*} D=${P%%:*} E=${P/usr/USR} F=${P//usr/USR}
ENV G=${UNSET:-def} H=${P:+alt} I=${UNSET-x} J=${P+y} K=${P:?must} L=$$ M=${P//\\//|}
ENV N="${P}" O='${P}' Q=\\${P} R=${P:-${UNSET:-${V:-deep}}}
""",
    "laughs": "FROM x\nARG L0=xxxxxxxx\n" + "".join(f"ARG L{i+1}=${{L{i}}}${{L{i}}}\n" for i in range(6)),
    "bad": "FROM a\nFROM b\nCOPY --from=x a b\nRUN --mount=type=cache x\nADD http://x/y /z\nBOGUS x\nENV ${\nENV x=${a:=b}\n",
    "empty": "",
    "nested": "FROM x\nENV A=" + "${a:-" * 40 + "x" + "}" * 40 + "\n",
}
for name, text in dockerfiles.items():
    out("dockerfile", name, text)

# --- Tar layers (first byte: bit 0 overlay whiteouts, bit 1 split in two layers) ---------------
def tar(entries, fmt=tarfile.GNU_FORMAT):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for e in entries:
            info = tarfile.TarInfo(e["name"])
            info.type = e.get("type", tarfile.REGTYPE)
            info.mode = e.get("mode", 0o644)
            info.uid = e.get("uid", 0)
            info.gid = e.get("gid", 0)
            info.mtime = 1600000000
            info.linkname = e.get("link", "")
            info.devmajor, info.devminor = e.get("dev", (0, 0))
            if "pax" in e:
                info.pax_headers = e["pax"]
            data = e.get("data", b"")
            info.size = len(data) if info.type == tarfile.REGTYPE else 0
            t.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return buf.getvalue()

D, F, S, H, C, B, P = tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE
layers = {
    "basic": [dict(name="etc", type=D, mode=0o755), dict(name="etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n"),
              dict(name="bin", type=D), dict(name="bin/sh", data=b"\x7fELF", mode=0o755), dict(name="bin/ash", type=H, link="bin/sh"),
              dict(name="usr/lib/link", type=S, link="../../etc/passwd"), dict(name="tmp", type=D, mode=0o1777)],
    "special": [dict(name="dev/null", type=C, dev=(1, 3), mode=0o666), dict(name="dev/loop7", type=B, dev=(7, 7)),
                dict(name="run/fifo", type=P), dict(name="usr/bin/su", data=b"x", mode=0o4755),
                dict(name="usr/bin/ping", data=b"x", mode=0o755, pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}),
                dict(name="f-with-xattr", data=b"x", pax={"SCHILY.xattr.user.k": "v", "mtime": "1600000000.5"})],
    "whiteouts": [dict(name="a", type=D), dict(name="a/keep", data=b"k"), dict(name="a/.wh.gone"), dict(name="b/.wh..wh..opq"),
                  dict(name="b/new", data=b"n"), dict(name=".wh.c")],
    "escapes": [dict(name="evil", type=S, link="/"), dict(name="evil/etc/x", data=b"pwned"),
                dict(name="up", type=S, link="../../.."), dict(name="up/canary/file", data=b"pwned"),
                dict(name="hl", type=H, link="../canary/file"), dict(name="abs", type=H, link="/etc/passwd"),
                dict(name="../canary/file2", data=b"pwned"), dict(name="/abs-file", data=b"x"),
                dict(name="loop1", type=S, link="loop2"), dict(name="loop2", type=S, link="loop1"), dict(name="loop1/x", data=b"x")],
    "replace": [dict(name="d", type=D), dict(name="d/f", data=b"1"), dict(name="d", type=S, link="/tmp"), dict(name="d/f", data=b"2"),
                dict(name="x", data=b"file"), dict(name="x", type=D), dict(name="x/y", data=b"y")],
    "long": [dict(name="l/" + "n" * 200, data=b"long"), dict(name="s/" + "m" * 150, type=S, link="t" * 300),
             dict(name="h/" + "o" * 180, type=H, link="l/" + "n" * 200)],
}
for i, (name, entries) in enumerate(layers.items()):
    out("unpack", name, bytes([i % 4]) + tar(entries))
out("unpack", "pax", bytes([1]) + tar(layers["long"] + layers["special"], fmt=tarfile.PAX_FORMAT))
out("unpack", "escapes-two-layers", bytes([2]) + tar(layers["escapes"]))

# --- Image JSON: index \0 manifest \0 config ---------------------------------------------------
def d(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()
layer = b"layer"
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"], "User": "1000", "Labels": {"a": "b"}},
                     "rootfs": {"type": "layers", "diff_ids": [d(b"tar")]}, "history": [{"created_by": "x"}]}).encode()
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d(config), "size": len(config)},
                       "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d(layer), "size": 5}]}).encode()
index = json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d(manifest),
                    "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "latest"},
                    "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
nested = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
    {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d(b"x"), "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}).encode()
out("image_json", "valid", index + b"\0" + manifest + b"\0" + config)
out("image_json", "config-only", config)
out("image_json", "docker-types", index.replace(b"vnd.oci.image.manifest.v1+json", b"vnd.docker.distribution.manifest.v2+json") + b"\0" + manifest + b"\0" + config)
out("image_json", "nested-index", nested + b"\0" + manifest + b"\0" + config)
out("image_json", "bad-diffid", index + b"\0" + manifest + b"\0" + config.replace(d(b"tar").encode(), b"42"))
out("image_json", "schema1", b'{"schemaVersion":1,"fsLayers":[]}\0{}\0{}')
