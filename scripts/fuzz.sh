#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ (Dockerfile front end, tar unpacker, image readers), one
# at a time, one process each, at the lowest CPU priority (the machine is shared).
#
#   scripts/fuzz.sh [SECONDS|smoke] [TARGET...]
#
# SECONDS per target (default 300; `smoke`: 5, unoptimized build). Seeds and kept inputs come from fuzz/corpus/
# (checked in); new inputs go to target/fuzz-corpus/ (merge the interesting ones back with
# `cargo +nightly fuzz cmin`). A crash leaves its input in fuzz/artifacts/<target>/ and fails.
# Needs root (the unpacker target creates devices and trusted.* xattrs), a nightly toolchain
# and cargo-fuzz; both are installed here when missing. The unpacker target makes a directory
# tree per input: with TMPDIR on a tmpfs (/dev/shm by default) it runs ~50x faster than on disk.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-300}
# Real fuzzing runs optimized code; the smoke run (part of `make test`) only replays the corpus
# and fuzzes a few seconds, so it builds without optimizations: 4.3 min instead of 9.9 on the
# 2-core CI machine, the largest single step of a fresh CI run.
profile=-O
[ "$secs" = smoke ] && secs=5 && profile=--dev
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(dockerfile unpack image_json)

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked
fi

if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=/dev/shm
fi

for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t" "fuzz/artifacts/$t"
  echo "== fuzz $t for ${secs}s"
  nice -n 19 cargo +nightly fuzz run "$profile" "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -timeout=20 -rss_limit_mb=2048 -print_final_stats=1
done
