#!/usr/bin/env bash
# The local single-node cluster with stash-rs installed, as a user installs it.
#
#   scripts/cluster.sh up     start, then install
#   scripts/cluster.sh start  build the images (testenv/images.sh), record the host, start the
#                             cluster (testenv start)
#   scripts/cluster.sh install  apply deploy/install/stash-rs.yaml (as committed) and wait until
#                             the operator is Ready and its APIService Available
#   scripts/cluster.sh down   stop the cluster and check the host is as it was before `up`
#   scripts/cluster.sh recovery  start the node, SIGKILL `testenv up` (a hard stop), check that
#                             `testenv down` removes what it left and the host is as before
#   scripts/cluster.sh reload rebuild the stash image from target/debug/stash{,-agent}, import it into the
#                             running cluster and restart the operator (for development)
#
# STASH_PROFILE=release takes target/release/stash{,-agent} instead (as the Dockerfile builds
# them; what the scale benchmark measures): `cargo build --release -p stash -p stash-agent --bins`.
#
# Needs root, Linux, the Rust and Go toolchains and the Debian packages scripts/test.sh installs.
# Everything the cluster runs lives in network namespace stash-rs-testenv (198.18.0.0/15) and
# under /var/lib/stash-rs-testenv; `down` removes it all (see README "What the cluster changes").
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${STASH_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-rs-testenv}
TARGET=${CARGO_TARGET_DIR:-target}
TESTENV=$TARGET/debug/testenv
PROFILE=${STASH_PROFILE:-debug}
BEFORE=$CACHE/host-before.json

images() {
  # The image gets copies of the stash and stash-agent binaries without debug sections.
  mkdir -p "$CACHE/images"
  local b
  for b in stash stash-agent; do
    [[ -x $TARGET/$PROFILE/$b ]] || { echo "cluster: no $TARGET/$PROFILE/$b; build it first" >&2; exit 1; }
    objcopy --strip-debug "$TARGET/$PROFILE/$b" "$CACHE/images/$b.bin.tmp"
    if ! cmp -s "$CACHE/images/$b.bin.tmp" "$CACHE/images/$b.bin" 2>/dev/null; then
      mv "$CACHE/images/$b.bin.tmp" "$CACHE/images/$b.bin"
    else
      rm "$CACHE/images/$b.bin.tmp"
    fi
  done
  bash testenv/images.sh "$CACHE/images" "$CACHE/images/stash.bin" "$CACHE/images/stash-agent.bin"
}

case ${1:-} in
recovery)
  [[ -x $TESTENV ]] || cargo build --quiet -p stash-testenv --bins
  "$TESTENV" down >/dev/null
  "$TESTENV" snapshot "$BEFORE.recovery"
  "$TESTENV" start >/dev/null
  pid=$(cut -d' ' -f1 /var/lib/stash-rs-testenv/ready)
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  left=$(ip netns list | grep -c stash-rs-testenv || true)
  echo "cluster: testenv up (pid $pid) killed with SIGKILL; network namespaces left behind: $left"
  [[ $left -ge 1 ]] || { echo "cluster: expected the killed run to leave its network namespace" >&2; exit 1; }
  "$TESTENV" down
  "$TESTENV" verify "$BEFORE.recovery"
  rm -f "$BEFORE.recovery"
  ;;
reload)
  bin=$(bash testenv/build.sh)
  images
  ctr=(nsenter --net=/run/netns/stash-rs-testenv -- "$bin/ctr" --address /var/lib/stash-rs-testenv/containerd/containerd.sock -n k8s.io)
  "${ctr[@]}" images import "$CACHE/images/stash.tar" >/dev/null
  "${ctr[@]}" images push --plain-http 198.18.0.2:5000/stash-rs/stash:0.1.0 docker.io/stash-rs/stash:0.1.0 >/dev/null
  KUBECONFIG=/var/lib/stash-rs-testenv/kubeconfigs/admin.kubeconfig "$bin/kubectl" -n stash-system rollout restart deployment/stash-operator
  KUBECONFIG=/var/lib/stash-rs-testenv/kubeconfigs/admin.kubeconfig "$bin/kubectl" -n stash-system rollout status deployment/stash-operator --timeout=300s
  ;;
start | up)
  t0=$SECONDS
  [[ -x $TESTENV && -x $TARGET/debug/stash && -x $TARGET/debug/stash-agent ]] || cargo build --quiet -p stash-testenv -p stash -p stash-agent --bins
  bin=$(bash testenv/build.sh)
  images
  echo "cluster: images ready at $((SECONDS - t0)) s"
  # A run that was killed is cleaned up first; the host is recorded only when nothing of ours
  # is left on it.
  "$TESTENV" down >/dev/null
  "$TESTENV" snapshot "$BEFORE"
  "$TESTENV" start --images "$CACHE/images"
  echo "cluster: started at $((SECONDS - t0)) s"
  if [[ $1 == up ]]; then
    exec bash "$0" install
  fi
  ;;
install)
  bin=$(bash testenv/build.sh)
  export KUBECONFIG=/var/lib/stash-rs-testenv/kubeconfigs/admin.kubeconfig
  kubectl=$bin/kubectl
  t1=$SECONDS
  "$kubectl" apply --server-side -f deploy/install/stash-rs.yaml >/dev/null
  "$kubectl" -n stash-system rollout status deployment/stash-operator --timeout=300s
  "$kubectl" wait --for=condition=Available --timeout=120s apiservice/v1alpha1.repositories.stash.appscode.com
  # A fresh install reaches Ready without a restart (issue 24: the first leader once exited
  # when its own webhook had no endpoint yet).
  restarts=$("$kubectl" -n stash-system get pods -l app.kubernetes.io/name=stash,app.kubernetes.io/component=operator \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[*].restartCount}{" "}{end}')
  echo "cluster: operator pods' restart counts after the install: ${restarts:-none}"
  for r in $restarts; do
    [[ $r == 0 ]] || { echo "cluster: an operator pod restarted during a fresh install" >&2; exit 1; }
  done
  echo "cluster: operator installed from deploy/install/stash-rs.yaml, Ready $((SECONDS - t1)) s after kubectl apply"
  echo "cluster: export KUBECONFIG=$KUBECONFIG; kubectl: $kubectl"
  ;;
down)
  "$TESTENV" down
  if [[ -f $BEFORE ]]; then
    "$TESTENV" verify "$BEFORE"
    rm -f "$BEFORE"
  fi
  ;;
*)
  echo "usage: scripts/cluster.sh up|start|install|down|reload" >&2
  exit 2
  ;;
esac
