#!/usr/bin/env bash
# The main job: a real local single-node cluster (scripts/cluster.sh), stash-rs installed from
# the committed manifest with its admission webhooks, a workload backed up by its sidecar on a
# schedule, `kubectl get snapshots`, the pushgateway's metrics, the data destroyed and restored
# — shown with the real kubectl and restic.
# Pass --keep to leave the cluster running (the kubeconfig is printed) until Ctrl-C.
# Needs root and Linux; see the README for what it changes on the host while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for p in runc iptables nftables conntrack debootstrap busybox-static curl binutils; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash testenv/build.sh >/dev/null
cargo build --quiet -p stash -p stash-agent -p stash-testenv --bins --examples
trap 'bash scripts/cluster.sh down' EXIT
bash scripts/cluster.sh up
if [[ " $* " == *" --keep "* ]]; then export TESTENV_KEEP=1; fi
"${CARGO_TARGET_DIR:-target}/debug/examples/demo" "$@"
if [[ " $* " == *" --keep "* ]]; then
  echo "the cluster stays up: export KUBECONFIG=/var/lib/stash-rs-testenv/kubeconfigs/admin.kubeconfig; Ctrl-C to stop it"
  trap 'exit 0' INT TERM
  while sleep 3600; do :; done
fi
