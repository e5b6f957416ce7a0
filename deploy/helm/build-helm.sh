#!/usr/bin/env bash
# Builds the Helm CLI (pinned in deploy/helm/go/go.mod) from the Go module proxy, once per
# machine, into the same cache as testenv/build.sh, keyed by a hash of the wrapper module,
# the Go version and the link flags. A finished build writes a `.ok` stamp.
#
#   deploy/helm/build-helm.sh     build helm if missing, print the path of the binary
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${STASH_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-rs-testenv}
mkdir -p "$CACHE/bin"

export GOTOOLCHAIN=local GOFLAGS="-mod=mod -trimpath" CGO_ENABLED=0
# Go's caches only live while helm builds (see testenv/build.sh).
GOWORK_DIR=$CACHE/go-work-helm
export GOMODCACHE=$GOWORK_DIR/mod GOCACHE=$GOWORK_DIR/build

command -v go >/dev/null || { echo "build-helm.sh: the go toolchain is required (Go >= 1.26)" >&2; exit 1; }

MOD=$HERE/go
LD="-s -w"
VERSION=$(awk '$1 == "helm.sh/helm/v3" { print $2 }' "$MOD/go.mod")
LD="$LD -X helm.sh/helm/v3/internal/version.version=$VERSION"
# As helm's Makefile: the default Kubernetes version of `helm template` is client-go's.
K8S_MINOR=$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2] }' "$MOD/go.mod")
for p in pkg/lint/rules pkg/chartutil; do
  LD="$LD -X helm.sh/helm/v3/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/$p.k8sVersionMinor=$K8S_MINOR"
done
(
  flock 9
  key=$( (cat "$MOD/go.mod" "$MOD/go.sum"; go version; echo "$LD") | sha256sum | cut -c1-16)
  dir=$CACHE/helm-$key
  if [[ ! -f $dir/.ok ]]; then
    echo "build-helm: building helm $VERSION (cache $dir)" >&2
    start=$SECONDS
    rm -rf "$dir"; mkdir -p "$dir/bin"
    (cd "$MOD" && go build -p 2 -ldflags "$LD" -o "$dir/bin/helm" helm.sh/helm/v3/cmd/helm)
    echo "$((SECONDS - start))" > "$dir/.ok"
    echo "build-helm: built helm in $((SECONDS - start)) s" >&2
  fi
  ln -sf "$dir/bin/helm" "$CACHE/bin/helm"
  if [[ -d $GOWORK_DIR ]]; then
    go clean -cache -modcache >/dev/null 2>&1 || true
    rm -rf "$GOWORK_DIR"
  fi
) 9>"$CACHE/.lock-helm"

echo "$CACHE/bin/helm"
