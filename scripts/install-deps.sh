#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need from Debian's packages, if missing:
# umoci and skopeo (independent image checkers), busybox-static (the real binary test images
# are built from), docker-registry and apache2-utils (the local registry and its htpasswd),
# openssl (the registry tests' token server signs its JWTs with it).
# Pass extra package names as arguments (e.g. buildah for the benchmark).
set -euo pipefail

want=(umoci skopeo busybox-static docker-registry apache2-utils openssl file "$@")
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
