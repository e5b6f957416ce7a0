#!/usr/bin/env bash
# What a backed-up pod pays for its sidecar, measured in a real pod of the running cluster
# (scripts/cluster.sh up): a Deployment with a BackupConfiguration (scheduled once a year, so
# the sidecar stays idle), then the sidecar's executable (size in the image) and its resident
# memory (VmRSS, VmHWM from /proc/1/status inside the container) after it has settled.
# Prints one line per figure; cleans up its namespace.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bash testenv/build.sh)
export KUBECONFIG=/var/lib/stash-rs-testenv/kubeconfigs/admin.kubeconfig
k() { "$bin/kubectl" "$@"; }
ns=footprint-$$
trap 'k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true' EXIT
k create namespace "$ns" >/dev/null
k -n "$ns" create secret generic repo-secret --from-literal=RESTIC_PASSWORD=footprint >/dev/null
k -n "$ns" apply -f - >/dev/null <<YAML
apiVersion: stash.appscode.com/v1alpha1
kind: Repository
metadata: {name: repo}
spec:
  backend:
    storageSecretName: repo-secret
    local: {mountPath: /repo, hostPath: {path: /var/lib/stash-rs-footprint/$ns}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  replicas: 1
  selector: {matchLabels: {app: footprint}}
  template:
    metadata: {labels: {app: footprint}}
    spec:
      containers:
      - name: app
        image: busybox:latest
        command: [sh, -c, 'mkdir -p /data && sleep 100000']
        volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: stash.appscode.com/v1beta1
kind: BackupConfiguration
metadata: {name: app}
spec:
  repository: {name: repo}
  schedule: "0 0 1 1 *"
  target:
    ref: {apiVersion: apps/v1, kind: Deployment, name: app}
    volumeMounts: [{name: data, mountPath: /data}]
    directories: [/data]
  retentionPolicy: {name: keep, keepLast: 5, prune: true}
YAML
# The sidecar arrives with a rollout: wait until a pod of the Deployment has a ready "stash".
for _ in $(seq 120); do
  pod=$(k -n "$ns" get pods -l app=footprint -o jsonpath='{range .items[*]}{.metadata.name}{" "}{range .status.containerStatuses[*]}{.name}={.ready}{","}{end}{"\n"}{end}' \
    | awk '/stash=true/ && /app=true/ {print $1; exit}')
  [[ -n $pod ]] && break
  sleep 1
done
[[ -n ${pod:-} ]] || { echo "footprint: no pod with a ready sidecar after 120 s" >&2; k -n "$ns" get pods -o wide >&2; exit 1; }
sleep "${FOOTPRINT_SETTLE:-20}"
exe=$(k -n "$ns" exec "$pod" -c stash -- readlink /proc/1/exe)
size=$(k -n "$ns" exec "$pod" -c stash -- stat -c %s "$exe")
status=$(k -n "$ns" exec "$pod" -c stash -- cat /proc/1/status)
echo "footprint: sidecar executable $exe, $size bytes ($((size / 1024 / 1024)) MiB) in the image"
echo "footprint: sidecar $(grep -E '^VmRSS' <<<"$status" | tr -s ' \t' ' ') (idle, $((${FOOTPRINT_SETTLE:-20})) s after Ready); $(grep -E '^VmHWM' <<<"$status" | tr -s ' \t' ' ')"
