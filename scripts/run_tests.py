#!/usr/bin/env python3
"""Run every test binary of the workspace, several at a time (issue 23: the e2e binaries mostly
wait on the cluster; `cargo test` runs them one after another).

    scripts/run_tests.py [--jobs N] [--threads T] [--skip NAME]... [--only NAME]... [--demo EXE]

Builds the test binaries (`cargo test --no-run`), then runs them: the binaries that restart or
kill the operator (DISRUPTIVE) one at a time after all others, the others JOBS at a time,
longest first (durations of the last run on this machine, else LONGEST). Each binary runs with
cargo's environment (its package directory, CARGO_MANIFEST_DIR, CARGO_PKG_NAME) and
`--test-threads=T`, in its own process group, stopped (SIGTERM, then SIGKILL) after TIMEOUT
seconds. Its output is printed in one block when it ends, under cargo's `Running` header, so
`test result:` lines read as cargo's do. `--demo EXE` runs the main job's tour (the demo
example, what `scripts/demo.sh` runs after `scripts/cluster.sh up`) as one more job of the
pool: its exit status counts like a test binary's. Exit status 1 when anything failed.
"""
import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

# Restart or kill the operator's pods: nothing else may run beside them (other tests' webhook
# calls and sessions would see the restart; hostile_input_e2e checks that nothing restarted).
DISRUPTIVE = ["admission_e2e", "operator_crash_e2e"]
# Test targets with `test = false`: built by name (scripts/test.sh runs them at their moment).
EXPLICIT = ["helm_install"]
# Where no measured duration is known yet (a fresh machine): the longest binaries first.
LONGEST = ["restore_e2e", "demo", "session_faults_e2e", "backup_e2e", "snapshot_api_e2e", "metrics_e2e",
           "jobs_e2e", "backends_e2e", "webhook_auth_e2e", "history_e2e", "plugin"]
TIMEOUT = 1800
CACHE = os.environ.get("STASH_TESTENV_CACHE") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "stash-rs-testenv")
DURATIONS = os.path.join(CACHE, "test-durations.json")

print_lock = threading.Lock()


def build(cargo_jobs):
    """The test executables: [(name, package, manifest dir, executable)]."""
    cmd = ["cargo", "test", "--workspace", "--locked", "--no-run", "--message-format=json",
           "-j", str(cargo_jobs)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    # Targets with `test = false` (they need a cluster in a given state) are left out of the
    # default selection: named explicitly, with the whole workspace selected so that features
    # unify as above (nothing is rebuilt).
    for target in EXPLICIT:
        out += subprocess.run(cmd + ["--test", target], check=True, stdout=subprocess.PIPE,
                              text=True).stdout
    bins = []
    for line in out.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        if m.get("reason") != "compiler-artifact" or not m.get("profile", {}).get("test"):
            continue
        if not m.get("executable"):
            continue
        target = m["target"]
        pkg = m["package_id"]
        manifest_dir = os.path.dirname(m["manifest_path"])
        name = target["name"]
        kind = target["kind"][0]
        label = name if kind in ("test", "bench", "example") else f"{name} ({kind})"
        if all(b[4] != m["executable"] for b in bins):
            bins.append((label, name, pkg, manifest_dir, m["executable"], kind))
    return bins


@functools.lru_cache(maxsize=None)
def toolchain_libraries():
    """The toolchain's library directories (a proc-macro crate's tests link libstd dynamically)."""
    sysroot = subprocess.run(["rustc", "--print", "sysroot"], check=True, stdout=subprocess.PIPE,
                             text=True).stdout.strip()
    host = [l.split(": ", 1)[1] for l in subprocess.run(
        ["rustc", "-vV"], check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
        if l.startswith("host: ")][0]
    return [os.path.join(sysroot, "lib"), os.path.join(sysroot, "lib", "rustlib", host, "lib")]


def library_path(exe):
    """What cargo puts on LD_LIBRARY_PATH for a test: the target's deps directory and the
    toolchain's libraries."""
    dirs = [os.path.dirname(exe)] + toolchain_libraries()
    old = os.environ.get("LD_LIBRARY_PATH")
    return ":".join(dirs + ([old] if old else []))


def run_one(label, name, manifest_dir, exe, threads, results):
    env = dict(os.environ, CARGO_MANIFEST_DIR=manifest_dir,
               CARGO_PKG_NAME=os.path.basename(manifest_dir),
               LD_LIBRARY_PATH=library_path(exe))
    env.pop("TESTENV_KEEP", None)
    args = [exe]
    if threads and name != "demo":
        args.append(f"--test-threads={threads}")
    begun = time.monotonic()
    with tempfile.TemporaryFile(mode="w+") as log:
        p = subprocess.Popen(args, cwd=manifest_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            status = p.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            status = f"stopped after {TIMEOUT} s"
        took = time.monotonic() - begun
        log.seek(0)
        text = log.read()
    with print_lock:
        sys.stdout.write(f"     Running {label} ({exe})\n{text}")
        sys.stdout.write(f"     Finished {label} in {took:.1f} s (exit {status})\n")
        sys.stdout.flush()
        results[label] = (status, took, name)


def doc_tests(results):
    begun = time.monotonic()
    p = subprocess.run(["cargo", "test", "--workspace", "--locked", "--doc"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    with print_lock:
        sys.stdout.write(p.stdout)
        sys.stdout.flush()
        results["doc tests"] = (p.returncode, time.monotonic() - begun, "doc tests")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("STASH_TEST_JOBS", "3")))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("STASH_TEST_THREADS", "3")))
    ap.add_argument("--skip", action="append", default=[])
    ap.add_argument("--only", action="append", default=[],
                    help="run only these test binaries (by target name)")
    ap.add_argument("--demo", help="the demo example's executable, run as one more job")
    a = ap.parse_args()
    begun = time.monotonic()
    built = build(os.cpu_count() or 2)
    missing = sorted(set(a.only) - {b[1] for b in built})
    if missing:
        print("no such test binary: " + ", ".join(missing), file=sys.stderr)
        return 2
    bins = [b for b in built if b[1] not in a.skip and (not a.only or b[1] in a.only)]
    try:
        with open(DURATIONS) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}

    def weight(b):
        if b[1] in known:
            return -known[b[1]]
        if b[1] in LONGEST:
            return -1e6 + LONGEST.index(b[1])
        return 0

    if a.demo:
        stash_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "stash")
        bins.append(("demo (the main job's tour)", "demo", "", os.path.normpath(stash_dir),
                     os.path.abspath(a.demo), "example"))
    pool = sorted((b for b in bins if b[1] not in DISRUPTIVE), key=weight)
    serial = [b for b in bins if b[1] in DISRUPTIVE]
    results = {}
    queue = list(pool)
    queue_lock = threading.Lock()

    def worker():
        while True:
            with queue_lock:
                if not queue:
                    return
                label, name, _pkg, manifest_dir, exe, _kind = queue.pop(0)
            run_one(label, name, manifest_dir, exe, a.threads, results)

    workers = [threading.Thread(target=worker) for _ in range(max(1, a.jobs))]
    if not a.only:
        workers.append(threading.Thread(target=doc_tests, args=(results,)))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for label, name, _pkg, manifest_dir, exe, _kind in serial:
        run_one(label, name, manifest_dir, exe, a.threads, results)

    failed = sorted(l for l, (s, _, _) in results.items() if s != 0)
    took = time.monotonic() - begun
    durations = dict(known)
    durations.update({n: round(t, 1) for (s, t, n) in results.values() if s == 0})
    try:
        os.makedirs(CACHE, exist_ok=True)
        with open(DURATIONS, "w") as f:
            json.dump(durations, f, indent=1, sort_keys=True)
    except OSError:
        pass
    slowest = sorted(results.items(), key=lambda kv: -kv[1][1])[:8]
    print(f"test binaries: {len(results)} run in {took:.0f} s ({a.jobs} at a time, "
          f"--test-threads={a.threads}; {', '.join(DISRUPTIVE)} alone); slowest: "
          + ", ".join(f"{l} {t:.0f} s" for l, (_, t, _) in slowest))
    if failed:
        print("failed test binaries: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
