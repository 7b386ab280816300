#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test (pure, namespace and end-to-end;
# each networking test makes and removes its own throwaway network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests exec every binary of the workspace (vainad, vaina-pod, the plugins,
# the CLI); cargo builds a package's binaries only for that package's own tests.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
