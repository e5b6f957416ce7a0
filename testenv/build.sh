#!/usr/bin/env bash
# Builds the real parts of the test environment from Go modules, once per machine.
#
#   testenv/build.sh            build whatever is missing, print the bin dir
#
# Binaries are cached outside the repository, keyed by a hash of the wrapper
# module (go.mod + go.sum), the Go version and the link flags, so a version bump
# in testenv/go/<name>/go.mod rebuilds exactly that part. A finished build
# writes a `.ok` stamp; a half-finished one is never used.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STASH_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-rs-testenv}
mkdir -p "$CACHE/bin"

export GOTOOLCHAIN=local GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
# Go's module and build caches are only needed while something builds (15 GiB for this set):
# they live in a work directory that is removed once the binaries are in place, so a machine
# (or a CI runner) keeps only the binaries.
GOWORK_DIR=$CACHE/go-work
export GOMODCACHE=$GOWORK_DIR/mod GOCACHE=$GOWORK_DIR/build

command -v go >/dev/null || { echo "testenv/build.sh: the go toolchain is required (Go >= 1.26)" >&2; exit 1; }

K8S_VERSION=1.36.3
K8S_MINOR=36
K8S_LD="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LD="$K8S_LD -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# build NAME LDFLAGS OUTPUT:PACKAGE...
build() {
  local name=$1 ld=$2; shift 2
  local mod=$HERE/go/$name
  local key
  key=$( (cat "$mod/go.mod" "$mod/go.sum"; go version; echo "$ld ${TAGS:-}") | sha256sum | cut -c1-16)
  local dir=$CACHE/$name-$key
  if [[ ! -f $dir/.ok ]]; then
    echo "testenv: building $name (cache $dir)" >&2
    local start=$SECONDS
    rm -rf "$dir"; mkdir -p "$dir/bin"
    (cd "$mod" && for spec in "$@"; do
      go build -p 2 -tags "${TAGS:-}" -ldflags "$ld" -o "$dir/bin/${spec%%=*}" "${spec#*=}"
    done)
    echo "$((SECONDS - start))" > "$dir/.ok"
    echo "testenv: built $name in $((SECONDS - start)) s" >&2
  fi
  for spec in "$@"; do ln -sf "$dir/bin/${spec%%=*}" "$CACHE/bin/${spec%%=*}"; done
}

(
  flock 9
  build etcd "-s -w" etcd=go.etcd.io/etcd/server/v3
  build restic "-s -w" restic=github.com/restic/restic/cmd/restic
  build rest-server "-s -w" rest-server=github.com/restic/rest-server/cmd/rest-server
  build pushgateway "-s -w" pushgateway=github.com/prometheus/pushgateway
  build k8s "$K8S_LD" \
    kube-apiserver=k8s.io/kubernetes/cmd/kube-apiserver \
    kube-controller-manager=k8s.io/kubernetes/cmd/kube-controller-manager \
    kubectl=k8s.io/kubernetes/cmd/kubectl \
    kube-scheduler=k8s.io/kubernetes/cmd/kube-scheduler \
    kubelet=k8s.io/kubernetes/cmd/kubelet \
    kube-proxy=k8s.io/kubernetes/cmd/kube-proxy
  # The node: containerd v2 (runc itself comes from Debian), the CNI plugins, CoreDNS.
  TAGS="no_btrfs no_devmapper no_zfs" build containerd "-s -w" \
    containerd=github.com/containerd/containerd/v2/cmd/containerd \
    containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    ctr=github.com/containerd/containerd/v2/cmd/ctr
  build cni "-s -w" \
    bridge=github.com/containernetworking/plugins/plugins/main/bridge \
    host-local=github.com/containernetworking/plugins/plugins/ipam/host-local \
    loopback=github.com/containernetworking/plugins/plugins/main/loopback \
    portmap=github.com/containernetworking/plugins/plugins/meta/portmap
  # The source of the pause image (testenv/images.sh builds it with gcc), from the same module.
  pause=$CACHE/pause/pause-v$K8S_VERSION.c
  if [[ ! -f $pause ]]; then
    src=$(cd "$HERE/go/k8s" && go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
    mkdir -p "$CACHE/pause"
    cp "$src/build/pause/linux/pause.c" "$pause.tmp" && mv "$pause.tmp" "$pause"
  fi
  build coredns "-s -w" coredns=github.com/coredns/coredns
  # The cluster's own image registry (docker.io is mapped to it: `image: busybox` pulls).
  build registry "-s -w" registry=github.com/distribution/distribution/v3/cmd/registry

  # Object-store servers for the backend tests: MinIO (S3 over TLS with a private CA) and
  # fake-gcs-server (Google Cloud Storage), pinned in their wrapper modules.
  build minio "-s -w" minio=github.com/minio/minio
  build fake-gcs-server "-s -w" fake-gcs-server=github.com/fsouza/fake-gcs-server

  # The S3 server for tests: moto (Apache-2.0), from PyPI, in its own venv.
  MOTO_VERSION=5.2.5
  venv=$CACHE/moto-$MOTO_VERSION/venv
  if [[ ! -f $venv/.ok ]]; then
    echo "testenv: installing moto $MOTO_VERSION (cache $venv)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "moto[server]==$MOTO_VERSION" >&2
    touch "$venv/.ok"
  fi
  ln -sf "$venv/bin/moto_server" "$CACHE/bin/moto_server"

  # Azure Blob Storage for tests: Azurite (MIT), from the npm registry, with the machine's Node.
  AZURITE_VERSION=3.37.0
  az=$CACHE/azurite-$AZURITE_VERSION
  if [[ ! -f $az/.ok ]]; then
    command -v npm >/dev/null || { echo "testenv/build.sh: npm (Node >= 20) is required for Azurite" >&2; exit 1; }
    echo "testenv: installing azurite $AZURITE_VERSION (cache $az)" >&2
    rm -rf "$az"; mkdir -p "$az"
    (cd "$az" && npm install --no-audit --no-fund --silent "azurite@$AZURITE_VERSION" >&2)
    touch "$az/.ok"
  fi
  # Azure treats an empty `x-ms-access-tier` header as absent; Azurite rejects it (400
  # InvalidHeaderValue, which restic retries forever). restic 0.19.1 sends it empty whenever
  # `azure.access-tier` is not set (Put Blob and Put Block List), as did rclone and azcopy
  # before they worked around it (rclone#6914, azcopy#2412). Make Azurite behave like Azure
  # there, and only there: an empty tier is no tier (the blob's tier is then inferred, Hot).
  bbh=$az/node_modules/azurite/dist/src/blob/handlers/BlockBlobHandler.js
  sed -i 's/if (options\.tier !== undefined) {/if (options.tier !== undefined \&\& options.tier !== "") {/' "$bbh"
  [[ $(grep -c 'options.tier !== undefined && options.tier !== ""' "$bbh") == 2 ]] \
    || { echo "testenv/build.sh: the Azurite access-tier patch did not apply to $bbh" >&2; exit 1; }
  ln -sf "$az/node_modules/.bin/azurite-blob" "$CACHE/bin/azurite-blob"

  # Everything is built: drop Go's caches (module files are read-only, hence go clean), and
  # those of earlier versions of this script, which kept them in $CACHE/go.
  for d in "$GOWORK_DIR" "$CACHE/go"; do
    [[ -d $d ]] || continue
    GOMODCACHE=$d/mod GOCACHE=$d/build go clean -cache -modcache >/dev/null 2>&1 || true
    rm -rf "$d"
  done
) 9>"$CACHE/.lock"

echo "$CACHE/bin"
