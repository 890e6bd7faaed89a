#!/usr/bin/env bash
# The main job on the bundled sample: build ext-extend, make a busybox run image, extend it with
# the sample extension (testdata/sample: run.Dockerfile + its extension layer as the context),
# and show the digest and what the new layers add.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cargo build --release --locked -q
# A static executable (.cargo/config.toml), so it also runs inside any run image.
bin=target/${CARGO_BUILD_TARGET:-x86_64-unknown-linux-gnu}/release/ext-extend
demo=target/demo
rm -rf "$demo"
mkdir -p "$demo"

echo "==> building the sample run image (busybox-static, 2 layers) into $demo/run-image"
testdata/scripts/make-run-image.sh "$demo/run-image" latest

echo "==> ext-extend build"
"$bin" build \
  --from "oci:$demo/run-image:latest" \
  -f testdata/sample/run.Dockerfile \
  --context testdata/sample/ext-layer \
  --output "oci:$demo/extended:latest" \
  --json > "$demo/result.json"

digest=$(sed -n 's/.*"manifest_digest": "\(sha256:[0-9a-f]*\)".*/\1/p' "$demo/result.json")
echo
echo "extended image: oci:$demo/extended:latest"
echo "manifest digest: $digest"
echo "files added by the new layers:"
for layer in $(tr -d ' \n' < "$demo/result.json" | grep -o '"digest":"sha256:[0-9a-f]*","size":[0-9]*,"media_type":"[^"]*","new":true' | sed 's/.*"digest":"sha256:\([0-9a-f]*\)".*/\1/'); do
  tar -tvzf "$demo/extended/blobs/sha256/$layer" | sed 's/^/  /'
done
