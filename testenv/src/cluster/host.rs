//! What the node changes on the host, recorded before it changes it, and undone at teardown
//! (also by the next start, when a run was killed): sysctls, fixed paths, cgroups, mounts,
//! processes. Everything is found through the record in the state directory or by living
//! under the state directory; nothing is found by name.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Sysctls the kubelet writes whatever its configuration says (plus the keyring limits it
/// raises); restored at teardown.
pub const SYSCTLS: &[&str] = &[
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Paths the kubelet, containerd and the CNI plugins use whatever their flags say. Those that
/// did not exist before the start are removed at teardown.
pub const FIXED_PATHS: &[&str] = &[
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/var/lib/cni",
    "/run/containerd",
    "/run/netns",
    "/etc/cni",
    "/opt/cni",
    "/tmp/hostpath_pv",
];

/// The record of one run, in `<state>/record.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    /// Sysctl values before the start.
    pub sysctls: BTreeMap<String, String>,
    /// Fixed paths that did not exist before the start.
    pub created_paths: Vec<PathBuf>,
    /// Top-level cgroups (one per v1 hierarchy) that did not exist before the start and may
    /// be created by the kubelet or containerd: `<hierarchy>/<name>`.
    pub created_cgroups: Vec<PathBuf>,
    /// Processes started by the run: pid, start time (clock ticks since boot), name.
    pub procs: Vec<(u32, u64, String)>,
    /// Whether the root namespace's `unreachable` route was added by the run.
    pub added_route: bool,
}

impl Record {
    fn path(state: &Path) -> PathBuf {
        state.join("record.json")
    }

    /// Read the record of a previous run, if any.
    pub fn load(state: &Path) -> Option<Self> {
        let text = fs::read_to_string(Self::path(state)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Write the record (after every change, so a kill at any point leaves it current).
    pub fn save(&self, state: &Path) -> Result<()> {
        let path = Self::path(state);
        let tmp = path.with_extension("tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).expect("record serialises"),
        )
        .map_err(|e| Error::Io(format!("write {}", tmp.display()), e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::Io(format!("rename {}", path.display()), e))
    }

    /// Record the host's state before anything is changed.
    pub fn before_start() -> Self {
        let mut r = Self::default();
        for s in SYSCTLS {
            if let Ok(v) = fs::read_to_string(Path::new("/proc/sys").join(s)) {
                r.sysctls.insert((*s).to_string(), v.trim().to_string());
            }
        }
        for p in FIXED_PATHS {
            if !Path::new(p).exists() {
                r.created_paths.push(PathBuf::from(p));
            }
        }
        for h in cgroup_hierarchies() {
            for name in ["kubepods", "k8s.io", super::CGROUP_ROOT] {
                let p = h.join(name);
                if !p.exists() {
                    r.created_cgroups.push(p);
                }
            }
        }
        r
    }

    /// Remember a started process.
    pub fn add_proc(&mut self, pid: u32, name: &str) {
        self.procs
            .push((pid, start_time(pid).unwrap_or(0), name.to_string()));
    }
}

/// Every mounted cgroup v1 hierarchy (and the v2 one) under `/sys/fs/cgroup`.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let Ok(mounts) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mp = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| PathBuf::from(unescape(mp)))
        })
        .filter(|p| p.starts_with("/sys/fs/cgroup"))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`), to tell a recorded process from
/// a later one that reuses its pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is gone or a zombie (reaped late by PID 1 on this machine).
pub fn gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s.get(i + 2..i + 3))
            .is_none_or(|st| st == "Z"),
    }
}

/// SIGKILL every listed process (group first, then the pid) and wait until each is gone.
pub fn kill_all(pids: &[u32]) {
    for &pid in pids {
        signal(pid, libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !pids.iter().all(|&p| gone(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Send `sig` to the process group `pid` (when it leads one) and to `pid` itself.
pub fn signal(pid: u32, sig: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a pid this run started (checked by the caller's record).
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Every process running one of the binaries in `dir` (the environment's binary directory,
/// whose entries link into the cache): containerd's shims outlive their task directories,
/// so this is how a `down` finds them. A binary replaced while it ran reads as
/// `<path> (deleted)`.
pub fn procs_running_from(dir: &Path) -> Vec<u32> {
    let bins: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| fs::canonicalize(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    let me = std::process::id();
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && !gone(pid))
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
                let exe = exe.to_string_lossy();
                let exe = Path::new(exe.trim_end_matches(" (deleted)"));
                bins.iter().any(|b| b == exe)
            })
        })
        .collect()
}

/// Every process in the cgroup subtree `dir` (any hierarchy).
pub fn cgroup_procs(dir: &Path) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(text) = fs::read_to_string(d.join("cgroup.procs")) {
            out.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Remove a cgroup subtree, deepest first (only directories: cgroupfs refuses the rest).
pub fn remove_cgroup_tree(dir: &Path) {
    if !dir.is_dir() {
        return;
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        match fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    eprintln!("testenv: could not remove cgroup {}", dir.display());
}

/// Every mount point at or under `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|p| p.starts_with(root))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// Unmount everything under `root` (lazily, deepest first), repeating while anything is left
/// (a bind mount can be stacked several times).
pub fn unmount_under(root: &Path) {
    for _ in 0..10 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&m)
                .status();
        }
    }
    let left = mounts_under(root);
    if !left.is_empty() {
        eprintln!("testenv: still mounted under {}: {left:?}", root.display());
    }
}

/// Write the recorded sysctl values back.
pub fn restore_sysctls(rec: &Record) {
    for (k, v) in &rec.sysctls {
        let path = Path::new("/proc/sys").join(k);
        if fs::read_to_string(&path)
            .map(|cur| cur.trim() != v)
            .unwrap_or(false)
            && let Err(e) = fs::write(&path, v)
        {
            eprintln!("testenv: cannot restore {k}={v}: {e}");
        }
    }
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// A snapshot of what the environment may change on the host, compared before and after.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSnapshot {
    /// [`SYSCTLS`] plus `net/ipv4/ip_forward` of the root namespace.
    pub sysctls: BTreeMap<String, String>,
    /// The root namespace's links (`ip -o link` names).
    pub links: Vec<String>,
    /// The root namespace's routes (`ip route show table all`, without the kernel's cache).
    pub routes: Vec<String>,
    /// Network namespaces (`ip netns list`).
    pub netns: Vec<String>,
    /// Which [`FIXED_PATHS`] exist.
    pub fixed_paths: Vec<String>,
    /// Top-level cgroup directories in each hierarchy.
    pub cgroups: Vec<String>,
    /// The root namespace's iptables (nft backend) chains and rules.
    pub iptables: Vec<String>,
    /// Processes running one of the environment's own binaries (`name pid`).
    #[serde(default)]
    pub procs: Vec<String>,
}

impl HostSnapshot {
    /// Take the snapshot now.
    pub fn take() -> Self {
        let run = |cmd: &[&str]| -> Vec<String> {
            std::process::Command::new(cmd[0])
                .args(&cmd[1..])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut sysctls = BTreeMap::new();
        for s in SYSCTLS.iter().chain(&["net/ipv4/ip_forward"]) {
            if let Ok(v) = fs::read_to_string(Path::new("/proc/sys").join(s)) {
                sysctls.insert((*s).to_string(), v.trim().to_string());
            }
        }
        let links = run(&["ip", "-o", "link", "show"])
            .iter()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
            .collect();
        let mut cgroups = Vec::new();
        for h in cgroup_hierarchies() {
            if let Ok(rd) = fs::read_dir(&h) {
                for e in rd
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                {
                    cgroups.push(e.path().display().to_string());
                }
            }
        }
        cgroups.sort();
        Self {
            sysctls,
            links,
            routes: run(&["ip", "route", "show", "table", "all"])
                .into_iter()
                .filter(|r| !r.contains(" cache"))
                .collect(),
            netns: run(&["ip", "netns", "list"]),
            fixed_paths: FIXED_PATHS
                .iter()
                .filter(|p| Path::new(p).exists())
                .map(|p| p.to_string())
                .collect(),
            cgroups,
            iptables: run(&["iptables-save"])
                .into_iter()
                .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
                .collect(),
            procs: crate::bins::bin_dir()
                .map(|d| {
                    procs_running_from(&d)
                        .into_iter()
                        .map(|pid| {
                            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
                            format!("{} {pid}", exe.display())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// What differs from `before`, one line each; empty when the host is as it was.
    pub fn diff(before: &Self, after: &Self) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &before.sysctls {
            match after.sysctls.get(k) {
                Some(a) if a == v => {}
                a => out.push(format!("sysctl {k}: {v} before, {a:?} after")),
            }
        }
        let lists: [(&str, &Vec<String>, &Vec<String>); 7] = [
            ("link", &before.links, &after.links),
            ("route", &before.routes, &after.routes),
            ("netns", &before.netns, &after.netns),
            ("path", &before.fixed_paths, &after.fixed_paths),
            ("cgroup", &before.cgroups, &after.cgroups),
            ("iptables", &before.iptables, &after.iptables),
            ("process", &before.procs, &after.procs),
        ];
        for (what, b, a) in lists {
            for x in b.iter().filter(|x| !a.contains(x)) {
                out.push(format!("{what} gone: {x}"));
            }
            for x in a.iter().filter(|x| !b.contains(x)) {
                out.push(format!("{what} left behind: {x}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> HostSnapshot {
        HostSnapshot {
            sysctls: [("kernel/panic".to_string(), "0".to_string())].into(),
            links: vec!["lo".into(), "eth0".into()],
            routes: vec!["default via 1.2.3.4 dev eth0".into()],
            netns: vec![],
            fixed_paths: vec![],
            cgroups: vec!["/sys/fs/cgroup/cpu/user".into()],
            iptables: vec![],
            procs: vec![],
        }
    }

    #[test]
    fn a_process_running_a_binary_of_the_directory_is_found_even_once_deleted() {
        let tmp = std::env::temp_dir().join(format!("testenv-procs-{}", std::process::id()));
        let real = tmp.join("real");
        let links = tmp.join("bin");
        fs::create_dir_all(&real).unwrap();
        fs::create_dir_all(&links).unwrap();
        fs::copy("/bin/sleep", real.join("napper")).unwrap();
        std::os::unix::fs::symlink(real.join("napper"), links.join("napper")).unwrap();
        let mut child = std::process::Command::new(links.join("napper"))
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let other = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let found = procs_running_from(&links);
        assert_eq!(
            found,
            vec![pid],
            "only the process of the directory's binary"
        );
        // A rebuilt binary: the running process's exe reads `... (deleted)`.
        fs::remove_file(real.join("napper")).unwrap();
        fs::copy("/bin/sleep", real.join("napper")).unwrap();
        assert_eq!(procs_running_from(&links), vec![pid]);
        child.kill().unwrap();
        child.wait().unwrap();
        let mut other = other;
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(procs_running_from(&links).is_empty());
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn an_unchanged_host_has_no_difference() {
        assert!(HostSnapshot::diff(&snap(), &snap()).is_empty());
    }

    #[test]
    fn every_kind_of_leftover_is_reported() {
        let before = snap();
        let mut after = snap();
        after.sysctls.insert("kernel/panic".into(), "10".into());
        after.links.push("stvh0".into());
        after.routes.push("unreachable 198.18.0.0/15".into());
        after.netns.push("stash-rs-testenv".into());
        after.fixed_paths.push("/var/lib/cni".into());
        after.cgroups.push("/sys/fs/cgroup/cpu/kubepods".into());
        after
            .procs
            .push("/cache/containerd-shim-runc-v2 4242".into());
        after.iptables.push("-A KUBE-FIREWALL -j DROP".into());
        let d = HostSnapshot::diff(&before, &after);
        assert_eq!(d.len(), 8, "{d:#?}");
        assert!(d[0].contains("kernel/panic: 0 before"), "{d:#?}");
    }

    #[test]
    fn the_start_time_tells_a_process_apart() {
        let me = std::process::id();
        let t = start_time(me).expect("own start time");
        assert!(t > 0);
        assert!(!gone(me));
        assert!(gone(u32::MAX - 1));
    }
}
