# ext-extend. `make demo` runs the bundled sample; `make test` runs every test (what CI runs).
CARGO ?= cargo

.PHONY: all build demo test deps lint fmt clean bench fuzz fuzz-smoke

all: build

# A static executable (see .cargo/config.toml): target/x86_64-unknown-linux-gnu/release/ext-extend.
build:
	$(CARGO) build --release --locked

demo:
	scripts/demo.sh

deps:
	scripts/install-deps.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

test: deps lint
	$(CARGO) test --workspace --locked
	$(MAKE) fuzz-smoke

# Each fuzz target for FUZZ_SECONDS (README "Security"); fuzz-smoke: a few seconds each.
FUZZ_SECONDS ?= 300
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

fuzz-smoke:
	scripts/fuzz.sh smoke

# Benchmark against Buildah and the physical limit (README "Performance"); needs root.
bench:
	scripts/install-deps.sh buildah strace debootstrap
	$(CARGO) build --release --locked -p ext-extend -p bench-limit
	python3 bench/bench.py
	python3 bench/compression.py

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf target/demo
