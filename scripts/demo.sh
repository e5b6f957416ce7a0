#!/usr/bin/env bash
# The main job: a real local control plane (etcd, kube-apiserver, kube-controller-manager
# built from Go modules), the operator, a workload backed up by its sidecar on a schedule,
# the data destroyed and restored — shown with the real kubectl and restic.
# Pass --keep to leave everything running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash testenv/build.sh >/dev/null
cargo build --quiet -p stash --bins --examples
exec target/debug/examples/demo "$@"
