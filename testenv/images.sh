#!/usr/bin/env bash
# Builds the container images the test cluster runs, without a Docker daemon or a registry, as
# docker-archive tars that `ctr -n k8s.io images import` (containerd v2) and `docker load` accept.
#
#   testenv/images.sh OUTDIR STASH_BIN STASH_AGENT_BIN
#
# writes OUTDIR/stash.tar        stash-rs/stash:0.1.0       (the Dockerfile's final stage)
#        OUTDIR/pushgateway.tar  prom/pushgateway:v1.11.3
#        OUTDIR/busybox.tar      busybox:latest
#        OUTDIR/pause.tar        stash-rs.local/pause:3.10  (containerd's sandbox image)
#
# Progress goes to stderr; stdout stays empty. Each image is one uncompressed layer with fixed
# mtimes and numeric owners. An image whose tar is newer than all its inputs is not rebuilt.
#
# The stash image's base (a `debootstrap --variant=minbase` Debian plus the apt packages below)
# is cached under $CACHE/rootfs-<key>, keyed by the suite, the package list and the recipe
# (build_rootfs's text); a finished build writes a `.ok` stamp, a half-finished one is never
# used. Needs root (debootstrap, chroot), debootstrap, busybox-static, gcc with a static libc,
# python3, and restic + pushgateway from testenv/build.sh.
set -euo pipefail

if [[ $# -ne 3 ]]; then
  echo "usage: testenv/images.sh OUTDIR STASH_BIN STASH_AGENT_BIN" >&2
  exit 2
fi

HERE=$(cd "$(dirname "$0")" && pwd)
SELF=$HERE/$(basename "$0")
CACHE=${STASH_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stash-rs-testenv}
OUT=$1
STASH_BIN=$2
STASH_AGENT_BIN=$3
DEBIAN_MIRROR=${STASH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SECURITY_MIRROR=${STASH_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# The Dockerfile's RESTIC_VERSION build argument: the version the restic wrapper module pins (the
# module testenv/build.sh builds $CACHE/bin/restic from; install/tests/generated.rs checks that
# the Dockerfile's default agrees).
RESTIC_VERSION=$(awk '$1 == "github.com/restic/restic" { sub(/^v/, "", $2); print $2; exit }' "$HERE/go/restic/go.mod")
if [[ -z $RESTIC_VERSION ]]; then
  echo "images: no github.com/restic/restic requirement in $HERE/go/restic/go.mod" >&2
  exit 1
fi

# ---------------------------------------------------------------------------------------------
# The stash image recipe. It must say what the Dockerfile's final stage says:
# install/tests/image_recipe.rs parses these assignments (one per line, as written here) and the
# Dockerfile, and fails when they disagree.
STASH_SUITE=bookworm                                   # FROM debian:${STASH_SUITE}-slim
STASH_PACKAGES=(ca-certificates tzdata postgresql-client)  # apt-get install --no-install-recommends
STASH_BINARIES=(stash:/usr/local/bin/stash stash:/usr/local/bin/stash-agent restic:/usr/local/bin/restic)  # COPY --from=<stage> ... <dest>
STASH_USER=65534:65534                                 # USER
STASH_ENTRYPOINT=(/usr/local/bin/stash)                # ENTRYPOINT [...]
STASH_LABELS=(
  "org.opencontainers.image.title=stash-rs"
  "org.opencontainers.image.description=Kubernetes backup operator speaking the Stash API"
  "org.opencontainers.image.licenses=Apache-2.0"
  "io.stash-rs.restic.version=${RESTIC_VERSION}"
)                                                      # LABEL
STASH_TAG=stash-rs/stash:0.1.0
# ---------------------------------------------------------------------------------------------
PUSHGATEWAY_TAG=prom/pushgateway:v1.11.3
BUSYBOX_TAG=busybox:latest
PAUSE_TAG=stash-rs.local/pause:3.10

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot, file ownership)"
[[ -f $STASH_BIN && -x $STASH_BIN ]] || die "STASH_BIN $STASH_BIN is not an executable file"
[[ -f $STASH_AGENT_BIN && -x $STASH_AGENT_BIN ]] || die "STASH_AGENT_BIN $STASH_AGENT_BIN is not an executable file"
STASH_BIN=$(realpath "$STASH_BIN")
STASH_AGENT_BIN=$(realpath "$STASH_AGENT_BIN")
for tool in python3 sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

ARCH=$(dpkg --print-architecture 2>/dev/null || echo amd64)
case $ARCH in amd64 | arm64) ;; *) die "unsupported architecture $ARCH" ;; esac

mkdir -p "$OUT" "$CACHE"
OUT=$(realpath "$OUT")
WORK=$(mktemp -d "$OUT/.images.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# fresh OUTPUT INPUT...: OUTPUT exists and is newer than every input (this script included).
fresh() {
  local out=$1 in; shift
  [[ -f $out ]] || return 1
  for in in "$SELF" "$@"; do
    [[ $out -nt $in ]] || return 1
  done
}

# mkimage OUTPUT.tar TAG SPEC [--user U] [--entrypoint JSON] [--cmd JSON] [--label K=V]...
# [--workdir DIR] [--expose PORT] [--history TEXT] [--arch ARCH] [--tmpdir DIR (same file system)]
#
# Writes a one-layer docker-archive. SPEC has one entry a line, paths relative to the image root:
#   rootfs DIR                       every file under DIR (contents of dev, proc, sys skipped)
#   dir PATH MODE UID GID
#   file PATH SRC MODE UID GID       SRC's contents (symlinks followed)
#   symlink PATH TARGET
# Later entries replace earlier ones with the same path; missing parent directories are created
# 0755 root:root. All mtimes are SOURCE_DATE_EPOCH (default 0), owners are numeric only.
mkimage() {
  python3 - "$@" <<'PY'
import argparse, hashlib, io, json, os, sys, tarfile

p = argparse.ArgumentParser()
p.add_argument("output"); p.add_argument("tag"); p.add_argument("spec")
p.add_argument("--user", default="")
p.add_argument("--entrypoint"); p.add_argument("--cmd")
p.add_argument("--label", action="append", default=[])
p.add_argument("--workdir", default="/")
p.add_argument("--expose", action="append", default=[])
p.add_argument("--history", default="testenv/images.sh")
p.add_argument("--arch", default="amd64")
p.add_argument("--tmpdir", default=None)
a = p.parse_args()

epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
SKIP_CONTENTS = {"dev", "proc", "sys"}

# path -> ("disk", source path, overrides) | ("dir", mode, uid, gid) | ("symlink", target)
entries = {}
def norm(path):
    path = os.path.normpath(path.strip("/"))
    if path in ("", ".") or path.startswith(".."):
        sys.exit(f"mkimage: bad path {path!r}")
    return path

for line in open(a.spec):
    f = line.split()
    if not f:
        continue
    kind = f[0]
    if kind == "rootfs":
        root = f[1]
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            if rel in SKIP_CONTENTS:
                dirnames[:] = []
                filenames = []
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                entries[norm(os.path.relpath(full, root))] = ("disk", full, None)
            # os.walk does not descend into symlinked directories; they are listed in dirnames
            # and stored as symlinks by gettarinfo.
    elif kind == "dir":
        entries[norm(f[1])] = ("dir", int(f[2], 8), int(f[3]), int(f[4]))
    elif kind == "file":
        entries[norm(f[1])] = ("disk", os.path.realpath(f[2]), (int(f[3], 8), int(f[4]), int(f[5])))
    elif kind == "symlink":
        entries[norm(f[1])] = ("symlink", f[2])
    else:
        sys.exit(f"mkimage: unknown spec entry {line!r}")

for path in list(entries):
    parent = os.path.dirname(path)
    while parent and parent not in entries:
        entries[parent] = ("dir", 0o755, 0, 0)
        parent = os.path.dirname(parent)

class Hashing:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0
    def write(self, b):
        self.h.update(b); self.n += len(b)
        return self.f.write(b)

tmpdir = a.tmpdir or os.path.dirname(os.path.abspath(a.output))
base = os.path.basename(a.output)
layer_path = os.path.join(tmpdir, base + ".layer")
with open(layer_path, "wb") as raw:
    hw = Hashing(raw)
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(entries):
            e = entries[path]
            if e[0] == "disk":
                ti = tar.gettarinfo(e[1], arcname=path)
                if ti is None:  # sockets
                    continue
                if e[2] is not None:
                    if not ti.isreg():
                        sys.exit(f"mkimage: {e[1]} is not a regular file")
                    ti.mode, ti.uid, ti.gid = e[2]
            elif e[0] == "dir":
                ti = tarfile.TarInfo(path); ti.type = tarfile.DIRTYPE
                ti.mode, ti.uid, ti.gid = e[1], e[2], e[3]
            else:
                ti = tarfile.TarInfo(path); ti.type = tarfile.SYMTYPE
                ti.linkname = e[1]; ti.mode = 0o777
            ti.mtime = epoch
            ti.uname = ti.gname = ""
            ti.pax_headers = {}
            if ti.isreg():
                with open(e[1], "rb") as src:
                    tar.addfile(ti, src)
            else:
                tar.addfile(ti)
layer_hex = hw.h.hexdigest()

created = "%04d-%02d-%02dT%02d:%02d:%02dZ" % __import__("time").gmtime(epoch)[:6]
cfg = {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
       "WorkingDir": a.workdir}
if a.user: cfg["User"] = a.user
if a.entrypoint: cfg["Entrypoint"] = json.loads(a.entrypoint)
if a.cmd: cfg["Cmd"] = json.loads(a.cmd)
if a.label: cfg["Labels"] = dict(l.split("=", 1) for l in a.label)
if a.expose: cfg["ExposedPorts"] = {port: {} for port in a.expose}
config = {
    "architecture": a.arch, "os": "linux", "created": created, "config": cfg,
    "rootfs": {"type": "layers", "diff_ids": ["sha256:" + layer_hex]},
    "history": [{"created": created, "created_by": a.history}],
}
config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
config_hex = hashlib.sha256(config_bytes).hexdigest()
manifest = [{"Config": config_hex + ".json", "RepoTags": [a.tag], "Layers": [layer_hex + "/layer.tar"]}]
repo, _, tag = a.tag.rpartition(":")
repositories = {repo: {tag: layer_hex}}

def member(tar, name, data=None, path=None, dir=False):
    ti = tarfile.TarInfo(name)
    ti.mtime, ti.mode = epoch, 0o644
    if dir:
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(ti)
    elif path is not None:
        ti.size = os.path.getsize(path)
        with open(path, "rb") as f:
            tar.addfile(ti, f)
    else:
        ti.size = len(data)
        tar.addfile(ti, io.BytesIO(data))

tmp = os.path.join(tmpdir, base + ".tmp")
with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
    member(tar, layer_hex, dir=True)
    member(tar, layer_hex + "/VERSION", b"1.0")
    member(tar, layer_hex + "/layer.tar", path=layer_path)
    member(tar, config_hex + ".json", config_bytes)
    member(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    member(tar, "repositories", json.dumps(repositories, separators=(",", ":")).encode())
os.unlink(layer_path)
os.rename(tmp, a.output)
size = os.path.getsize(a.output)
print(f"images: wrote {a.output} ({a.tag}, {size / 1048576:.1f} MiB, layer sha256:{layer_hex[:12]})", file=sys.stderr)
PY
}

# build_rootfs DIR: the Dockerfile's `FROM debian:bookworm-slim` + `apt-get install` into DIR.
build_rootfs() {
  local dir=$1 logf=$1.log
  log "debootstrap --variant=minbase $STASH_SUITE (log $logf)"
  debootstrap --variant=minbase --components=main "$STASH_SUITE" "$dir" "$DEBIAN_MIRROR" >"$logf" 2>&1 \
    || { tail -20 "$logf" >&2; die "debootstrap failed"; }
  # What the debian:*-slim images configure: the same apt sources and the dpkg excludes that
  # keep documentation out, apt that does not keep downloaded packages, no daemons started.
  rm -f "$dir/etc/apt/sources.list"
  cat >"$dir/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $STASH_SUITE $STASH_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $DEBIAN_SECURITY_MIRROR
Suites: $STASH_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
EOF
  echo 'APT::Install-Recommends "false"; APT::Install-Suggests "false";' >"$dir/etc/apt/apt.conf.d/docker-no-recommends"
  echo 'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };' >"$dir/etc/apt/apt.conf.d/docker-clean"
  printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
  chmod 0755 "$dir/usr/sbin/policy-rc.d"
  log "apt-get install ${STASH_PACKAGES[*]}"
  {
    chroot "$dir" apt-get update
    # A freshly pulled debian:*-slim carries the point release's updates; debootstrap does not.
    DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get -y upgrade
    DEBIAN_FRONTEND=noninteractive chroot "$dir" apt-get install -y --no-install-recommends "${STASH_PACKAGES[@]}"
    chroot "$dir" apt-get clean
  } >>"$logf" 2>&1 || { tail -20 "$logf" >&2; die "apt-get in the rootfs failed"; }
  chroot "$dir" dpkg-query -W >"$dir.packages"
  rm -f "$dir/usr/sbin/policy-rc.d"
  # Trim what a container never needs (and what debootstrap installed before the excludes).
  rm -rf "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/* "$dir"/var/cache/debconf/*-old \
    "$dir"/var/lib/dpkg/*-old "$dir"/var/log/* "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
    "$dir"/usr/share/groff/* "$dir"/usr/share/lintian/* "$dir"/usr/share/locale/* \
    "$dir"/tmp/* "$dir"/var/tmp/* "$dir"/root/.bash_history
  find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
  # debootstrap leaves device nodes and a mounts symlink; containerd provides /dev itself.
  find "$dir/dev" -mindepth 1 -delete
  : >"$dir/etc/hostname"; : >"$dir/etc/resolv.conf"
}

# The cached base rootfs of the stash image; prints its directory.
stash_rootfs() {
  local key dir
  key=$( (echo "$STASH_SUITE"; echo "${STASH_PACKAGES[*]}"; declare -f build_rootfs) | sha256sum | cut -c1-16)
  dir=$CACHE/rootfs-$key
  (
    flock 9
    if [[ ! -f $dir/.ok ]]; then
      local start=$SECONDS
      log "building the $STASH_SUITE rootfs (cache $dir)"
      rm -rf "$dir"; mkdir -p "$dir"
      build_rootfs "$dir/rootfs"
      echo "$((SECONDS - start))" >"$dir/.ok"
      log "built the rootfs in $((SECONDS - start)) s ($(du -sm "$dir/rootfs" | cut -f1) MiB)"
    fi
  ) 9>"$CACHE/.rootfs.lock"
  echo "$dir"
}

# ---------------------------------------------------------------------------------------------
# stash-rs/stash:0.1.0
build_stash() {
  local out=$OUT/stash.tar restic=$CACHE/bin/restic base spec=$WORK/stash.spec entry stage dest src
  [[ -x $restic ]] || die "$restic is missing; run testenv/build.sh first"
  base=$(stash_rootfs)
  if fresh "$out" "$STASH_BIN" "$STASH_AGENT_BIN" "$restic" "$base/.ok"; then log "$out is up to date"; return; fi
  log "building $STASH_TAG"
  echo "rootfs $base/rootfs" >"$spec"
  for entry in "${STASH_BINARIES[@]}"; do
    stage=${entry%%:*} dest=${entry#*:}
    case $stage in
      stash) [[ $dest == */stash-agent ]] && src=$STASH_AGENT_BIN || src=$STASH_BIN ;;
      restic) src=$restic ;;
      *) die "no source for the $stage binary" ;;
    esac
    echo "file $dest $src 0755 0 0" >>"$spec"
  done
  local args=(--user "$STASH_USER" --history "testenv/images.sh: debootstrap $STASH_SUITE + ${STASH_PACKAGES[*]} + ${STASH_BINARIES[*]}")
  args+=(--entrypoint "$(python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${STASH_ENTRYPOINT[@]}")")
  for entry in "${STASH_LABELS[@]}"; do args+=(--label "$entry"); done
  mkimage "$out" "$STASH_TAG" "$spec" --arch "$ARCH" --tmpdir "$WORK" "${args[@]}"
}

# /etc/passwd and /etc/group for the small images.
write_users() {
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$WORK/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$WORK/group"
  cat >>"$1" <<EOF
dir dev 0755 0 0
dir proc 0555 0 0
dir sys 0555 0 0
dir tmp 1777 0 0
dir etc 0755 0 0
file etc/passwd $WORK/passwd 0644 0 0
file etc/group $WORK/group 0644 0 0
EOF
}

# prom/pushgateway:v1.11.3, from testenv/build.sh's static build.
build_pushgateway() {
  local out=$OUT/pushgateway.tar bin=$CACHE/bin/pushgateway spec=$WORK/pushgateway.spec
  [[ -x $bin ]] || die "$bin is missing; run testenv/build.sh first"
  if fresh "$out" "$bin"; then log "$out is up to date"; return; fi
  log "building $PUSHGATEWAY_TAG"
  : >"$spec"
  write_users "$spec"
  cat >>"$spec" <<EOF
file bin/pushgateway $bin 0755 0 0
dir var/pushgateway 0755 65534 65534
EOF
  mkimage "$out" "$PUSHGATEWAY_TAG" "$spec" --arch "$ARCH" --tmpdir "$WORK" --user 65534 \
    --entrypoint '["/bin/pushgateway"]' --expose 9091/tcp --history "testenv/images.sh: pushgateway"
}

# busybox:latest, from Debian's busybox-static.
build_busybox() {
  local out=$OUT/busybox.tar bin=/bin/busybox spec=$WORK/busybox.spec applet
  [[ -x $bin ]] || die "$bin is missing; apt-get install busybox-static"
  # (`ldd` fails on a static binary; the busybox package's /bin/busybox is dynamic.)
  if ldd "$bin" >/dev/null 2>&1; then die "$bin is dynamically linked; apt-get install busybox-static"; fi
  if fresh "$out" "$bin"; then log "$out is up to date"; return; fi
  log "building $BUSYBOX_TAG"
  : >"$spec"
  write_users "$spec"
  echo "file bin/busybox $bin 0755 0 0" >>"$spec"
  for applet in $("$bin" --list); do
    [[ $applet == busybox ]] || echo "symlink bin/$applet busybox" >>"$spec"
  done
  echo "dir root 0700 0 0" >>"$spec"
  echo "dir var 0755 0 0" >>"$spec"
  mkimage "$out" "$BUSYBOX_TAG" "$spec" --arch "$ARCH" --tmpdir "$WORK" --cmd '["sh"]' \
    --history "testenv/images.sh: busybox-static $(dpkg-query -W -f '${Version}' busybox-static 2>/dev/null || echo '?')"
}

# stash-rs.local/pause:3.10, built from the Kubernetes module's pause.c the way its Makefile does.
build_pause() {
  local out=$OUT/pause.tar src spec=$WORK/pause.spec
  src=$(ls -d "$CACHE"/pause/pause-v*.c 2>/dev/null | sort -V | tail -1)
  [[ -f $src ]] || die "no pause.c in $CACHE/pause; run testenv/build.sh first"
  if fresh "$out" "$src"; then log "$out is up to date"; return; fi
  log "building $PAUSE_TAG from $src"
  command -v gcc >/dev/null || die "gcc is required"
  gcc -Os -Wall -Werror -static -DVERSION=v3.10-stash-rs -o "$WORK/pause" "$src"
  strip "$WORK/pause" 2>/dev/null || true
  : >"$spec"
  write_users "$spec"
  echo "file pause $WORK/pause 0755 0 0" >>"$spec"
  mkimage "$out" "$PAUSE_TAG" "$spec" --arch "$ARCH" --tmpdir "$WORK" --user 65535:65535 \
    --entrypoint '["/pause"]' --history "testenv/images.sh: gcc -Os -static pause.c"
}

start=$SECONDS
build_pause
build_busybox
build_pushgateway
build_stash
log "done in $((SECONDS - start)) s"
