#!/usr/bin/env bash
# Runs every test: unit, model, trybuild, and the end-to-end tests on a real single-node
# cluster (scripts/cluster.sh: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# containerd + runc, CNI, CoreDNS, kubelet, kube-proxy, built from Go modules) with stash-rs
# installed from deploy/install/stash-rs.yaml. Needs root, Linux, the Rust and Go toolchains;
# installs everything else it needs itself, and leaves the host as it found it (checked).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

# Debian packages: the node's runc and netfilter tools, the image builder's debootstrap and
# busybox, a real PostgreSQL server for the database backups.
need=()
for p in runc iptables nftables conntrack debootstrap busybox-static postgresql curl binutils; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  echo "installing from Debian: ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# Go-built binaries (cached outside the repo, built once per machine).
bin=$(bash testenv/build.sh)
echo "testenv binaries: $bin (build/cache check took $((SECONDS - start)) s)"

# A run from a fresh clone gains nothing from incremental compilation, and its caches are half
# of the target dir (~8 of 15 GiB): the disk is shared, and a full one fails the run.
export CARGO_TERM_COLOR=never RUST_BACKTRACE=1 CARGO_INCREMENTAL=0
echo "disk: $(df -h --output=avail . | tail -1 | tr -d ' ') free here before the build"
cargo build --workspace --all-targets --locked -j "$(nproc)"
echo "build done at $((SECONDS - start)) s"
# Style and lints are part of the suite: a failure here fails the run.
lint=0
cargo fmt --all -- --check || lint=1
cargo clippy --workspace --all-targets --locked -- -D warnings || lint=1
echo "fmt and clippy done at $((SECONDS - start)) s (ok: $((1 - lint)))"

out=$(mktemp /tmp/stash-test-output.XXXXXX)
trap 'bash scripts/cluster.sh down; rm -f "$out"' EXIT
# A hard stop leaves things behind; the next start (here: `testenv down`) removes them.
bash scripts/cluster.sh recovery
bash scripts/cluster.sh start
echo "cluster up at $((SECONDS - start)) s"
# The chart first (it needs a cluster without stash-rs): install, upgrade, uninstall.
status=0
# (Through the runner: the binaries built above, not a `cargo test -p` that would rebuild
# half the workspace with that package's features.)
python3 scripts/run_tests.py --only helm_install 2>&1 | tee "$out" || status=1
# Then stash-rs as users install it, from the committed manifest, and every other test.
bash scripts/cluster.sh install
echo "operator installed at $((SECONDS - start)) s"
# Several test binaries at a time, the operator-restarting ones alone (scripts/run_tests.py),
# and the main job's tour (scripts/demo.sh's demo example) on the same cluster beside them.
python3 scripts/run_tests.py --skip helm_install --demo "${CARGO_TARGET_DIR:-target}/debug/examples/demo" 2>&1 | tee -a "$out" || status=1
summary=$(grep -E '^test result:' "$out" | awk '{p+=$4; f+=$6} END {print p" passed, "f" failed"}')
echo "whole suite took $((SECONDS - start)) s"
echo "tests: $summary"
((lint == 0)) || { echo "cargo fmt --check or cargo clippy -D warnings failed" >&2; status=1; }
exit $status
