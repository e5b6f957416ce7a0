#!/usr/bin/env bash
# Runs every test: unit, model, trybuild, and the end-to-end tests against a real local
# control plane (etcd, kube-apiserver, kube-controller-manager built from Go modules).
# Needs the Rust and Go toolchains; installs everything else it needs itself.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# Debian packages the tests use: a real PostgreSQL server for the database backups.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "installing PostgreSQL from Debian"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

# Go-built binaries (cached outside the repo, built once per machine) and the S3 server.
bin=$(bash testenv/build.sh)
echo "testenv binaries: $bin (build/cache check took $((SECONDS - start)) s)"

export CARGO_TERM_COLOR=never RUST_BACKTRACE=1
cargo build --workspace --all-targets --locked -j "$(nproc)"
echo "build done at $((SECONDS - start)) s"
cargo test --workspace --locked -j "$(nproc)" -- --test-threads=4 2>&1 | tee /tmp/stash-test-output.$$
summary=$(grep -E '^test result:' /tmp/stash-test-output.$$ | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')
rm -f /tmp/stash-test-output.$$
echo "whole suite took $((SECONDS - start)) s"
echo "tests: $summary"
