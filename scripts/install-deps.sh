#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need from Debian's packages, if missing:
# umoci and skopeo (independent image checkers), busybox-static (the real binary test images
# are built from), docker-registry and apache2-utils (the local registry and its htpasswd),
# openssl (the registry tests' token server signs its JWTs with it).
# xz-utils, bzip2 and zstd make the ADD archive cases of the conformance table (zstd also checks
# our zstd layers); buildah builds the table as an independent builder.
# Pass extra package names as arguments (e.g. strace for the benchmark).
set -euo pipefail

want=(umoci skopeo busybox-static docker-registry apache2-utils openssl file xz-utils bzip2 zstd buildah "$@")
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
# Another apt (unattended-upgrades, a second CI job) may hold apt's locks: wait for it instead
# of failing (dpkg's lock through DPkg::Lock::Timeout, the package lists' lock by retrying).
apt_get() {
  local out
  for _ in $(seq 1 120); do
    if out=$($SUDO apt-get -o DPkg::Lock::Timeout=600 "$@" 2>&1); then
      return 0
    fi
    if grep -q -e "Could not get lock" -e "Unable to lock" <<<"$out"; then
      echo "install-deps: apt is busy (another apt holds its lock), waiting" >&2
      sleep 5
      continue
    fi
    printf '%s\n' "$out" >&2
    return 1
  done
  echo "install-deps: apt stayed locked for 10 minutes" >&2
  return 1
}

echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt_get update -qq
apt_get install -y -qq --no-install-recommends "${missing[@]}"
