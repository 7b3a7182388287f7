#!/usr/bin/env bash
# The whole test suite: unit tests, protocol tests, and integration tests that boot real VMs
# (QEMU; KVM when /dev/kvm is usable, else TCG — FCVM_ACCEL=tcg forces TCG).
# Slow fixtures (guest assets, images) are built once into one shared data directory.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ensure_packages $RUN_DEPS $TEST_DEPS
cd "$FCVM_ROOT"
build_all release
export FCVM_TEST_DATA_DIR=${FCVM_TEST_DATA_DIR:-$FCVM_ROOT/target/fcvm-test-data}
export FCVM_QUIET=1
echo "==> cargo fmt --check / clippy" >&2
cargo fmt --all -- --check
cargo clippy -q --release --workspace --all-targets -- -D warnings
echo "==> Import graphs (no module cycles)" >&2
for crate in crates/*/; do python3 scripts/imports.py "$crate" >&2; done
echo "==> Tests (data dir $FCVM_TEST_DATA_DIR, accel ${FCVM_ACCEL:-auto})" >&2
cargo test --release --workspace -- --test-threads "${FCVM_TEST_THREADS:-2}" "$@"
