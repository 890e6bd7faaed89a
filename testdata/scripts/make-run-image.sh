#!/usr/bin/env bash
# Builds a small run image from the real busybox-static binary into an OCI layout, with umoci.
#
#   make-run-image.sh LAYOUT_DIR [TAG] [--distroless | --fake-apt]
#
# Layers: 1) busybox with its applet links, /etc/passwd (root, cnb 1000:1000), /etc/group,
# /etc/os-release, /tmp (1777), /etc/obsolete.conf; 2) deletes /etc/obsolete.conf (a whiteout)
# and adds /etc/motd. Config: user 1000:1000, PATH, working dir /.
# --distroless: no shell and no busybox at all (like gcr.io/distroless/static): only /etc
# files, certificates-like data, /tmp and /home/nonroot; user 65532.
# --fake-apt: busybox plus /usr/bin/apt-get, a stand-in that "installs" a package by writing
# /usr/bin/<package> (a script printing "<package> (fake) 1.0"), for the lifecycle's extender
# flows (`RUN apt-get update && apt-get install -y curl`) without a network or Debian.
set -euo pipefail

out=${1:?usage: make-run-image.sh LAYOUT_DIR [TAG] [--distroless]}
tag=${2:-latest}
flavor=${3:-busybox}
busybox=${BUSYBOX:-/bin/busybox}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root"/{etc,tmp,root,home}
chmod 1777 "$root/tmp"
cat > "$root/etc/os-release" <<'OS'
ID=ext-extend-test
NAME="ext-extend test image"
VERSION_ID=1
OS

if [ "$flavor" = "--distroless" ]; then
  user=65532:65532
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  mkdir -p "$root/home/nonroot" "$root/etc/ssl/certs"
  chown 65532:65532 "$root/home/nonroot"
  echo "# test certificate bundle" > "$root/etc/ssl/certs/ca-certificates.crt"
else
  user=1000:1000
  [ -x "$busybox" ] || { echo "make-run-image: $busybox missing (install busybox-static)" >&2; exit 1; }
  mkdir -p "$root"/{bin,home/cnb,usr/local/bin}
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$root/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\ncnb:x:1000:1000:cnb:/home/cnb:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\ncnb:x:1000:\nstaff:x:50:cnb\n' > "$root/etc/group"
  chown 1000:1000 "$root/home/cnb"
  if [ "$flavor" = "--fake-apt" ]; then
    mkdir -p "$root/usr/bin"
    cat > "$root/usr/bin/apt-get" <<'APT'
#!/bin/sh
# ext-extend test image: a stand-in for apt-get (no network, no packages).
set -e
case "$1" in
  update) echo "apt-get (fake): package lists are up to date" ;;
  install)
    shift
    for p in "$@"; do
      case "$p" in
        -*) ;;
        *) printf '#!/bin/sh\necho "%s (fake) 1.0"\n' "$p" > "/usr/bin/$p"
           chmod 755 "/usr/bin/$p"
           echo "apt-get (fake): installed $p" ;;
      esac
    done ;;
  *) echo "apt-get (fake): unsupported command $1" >&2; exit 100 ;;
esac
APT
    chmod 755 "$root/usr/bin/apt-get"
  fi
fi
echo "to be deleted by the second layer" > "$root/etc/obsolete.conf"

if [ ! -f "$out/oci-layout" ]; then
  umoci init --layout "$out"
fi
umoci new --image "$out:$tag"

# Layer 1: the root filesystem.
umoci unpack --image "$out:$tag" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$out:$tag" "$work/bundle" >/dev/null
rm -rf "$work/bundle"

# Layer 2: delete a file of layer 1 (a whiteout) and add one.
umoci unpack --image "$out:$tag" "$work/bundle" >/dev/null
rm "$work/bundle/rootfs/etc/obsolete.conf"
echo "built by ext-extend's make-run-image.sh" > "$work/bundle/rootfs/etc/motd"
umoci repack --image "$out:$tag" "$work/bundle" >/dev/null
rm -rf "$work/bundle"

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac
umoci config --image "$out:$tag" --os linux --architecture "$arch" \
  --config.user "$user" --config.workingdir / \
  --config.env PATH=/usr/local/bin:/usr/bin:/bin \
  --config.label org.opencontainers.image.title=ext-extend-test >/dev/null
umoci gc --layout "$out"
