//! What `describe` shows: the lifecycle with the current phase marked, hosts, errors.
use std::fmt::Write as _;

use kube::ResourceExt;
use stash_crds::{BackupSession, RestoreSession};
use stash_machines::Lifecycle;

/// `12s`, `3m04s`, `2h05m`.
pub fn secs(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Left-aligned columns, two spaces apart, header first.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = width[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// The lifecycle of `L` as a list of phases, each with its transitions, `current` marked with
/// `▶` and `(current)`. A phase that is the initial one says so.
pub fn lifecycle<L: Lifecycle>(current: L) -> String {
    let mut out = format!("Lifecycle ({}):\n", L::NAME);
    for &p in L::PHASES {
        let here = p == current;
        let mut note = Vec::new();
        if p == L::INITIAL {
            note.push("initial");
        }
        if p.is_declared_only() {
            note.push("declared, never set");
        } else if p.is_terminal() {
            note.push("terminal");
        }
        let note = if note.is_empty() {
            String::new()
        } else {
            format!(" ({})", note.join(", "))
        };
        let _ = writeln!(
            out,
            "  {} {}{note}{}",
            if here { "▶" } else { " " },
            p.name(),
            if here { "   ◀ current" } else { "" }
        );
        for t in L::TRANSITIONS.iter().filter(|t| t.from == p) {
            let guard = t
                .guard
                .map(|g| format!(" [{}]", L::guard_name(g)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "        {}{guard} → {}",
                L::event_name(t.event),
                t.to.name()
            );
        }
    }
    out
}

fn field(out: &mut String, k: &str, v: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<21}{v}", format!("{k}:"));
}

fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// `kubectl stash describe` of a BackupSession.
pub fn backup_session(bs: &BackupSession) -> String {
    use stash_crds::backup_session::Phase;
    let status = bs.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::INITIAL);
    let mut out = String::new();
    field(
        &mut out,
        "BackupSession",
        format!("{}/{}", bs.namespace().unwrap_or_default(), bs.name_any()),
    );
    let bc = bs
        .spec
        .backup_configuration
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    field(&mut out, "BackupConfiguration", bc);
    field(&mut out, "Created", created(&bs.metadata));
    field(
        &mut out,
        "Phase",
        if status.phase.is_some() {
            phase.name().to_string()
        } else {
            format!("{} (no status yet)", phase.name())
        },
    );
    let total = status
        .total_hosts
        .map_or("?".to_string(), |t| t.to_string());
    field(
        &mut out,
        "Hosts",
        format!("{}/{total} reported", status.stats.len()),
    );
    if let Some(d) = &status.session_duration {
        field(&mut out, "Duration", d);
    }
    if let Some(r) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        field(&mut out, "Reason", r);
    }
    out.push('\n');
    out.push_str(&lifecycle(phase));
    out.push('\n');
    out.push_str("Hosts:\n");
    if status.stats.is_empty() {
        out.push_str("  (none reported yet)\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .stats
            .iter()
            .map(|h| {
                let size = h
                    .snapshots
                    .iter()
                    .filter_map(|s| s.size.clone())
                    .collect::<Vec<_>>()
                    .join(",");
                vec![
                    h.hostname.clone().unwrap_or_default(),
                    h.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
                    h.duration
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                    h.snapshots.len().to_string(),
                    size,
                ]
            })
            .collect();
        for l in table(&["HOST", "PHASE", "DURATION", "SNAPSHOTS", "SIZE"], &rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    errors(
        &mut out,
        status
            .stats
            .iter()
            .map(|h| (h.hostname.clone().unwrap_or_default(), h.error.clone())),
    );
    out
}

/// `kubectl stash describe` of a RestoreSession.
pub fn restore_session(rs: &RestoreSession) -> String {
    use stash_crds::restore_session::Phase;
    let status = rs.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or(Phase::INITIAL);
    let mut out = String::new();
    field(
        &mut out,
        "RestoreSession",
        format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any()),
    );
    let repo = rs
        .spec
        .repository
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    field(&mut out, "Repository", repo);
    field(&mut out, "Created", created(&rs.metadata));
    field(
        &mut out,
        "Phase",
        if status.phase.is_some() {
            phase.name().to_string()
        } else {
            format!("{} (no status yet)", phase.name())
        },
    );
    let total = status
        .total_hosts
        .map_or("?".to_string(), |t| t.to_string());
    field(
        &mut out,
        "Hosts",
        format!("{}/{total} reported", status.stats.len()),
    );
    if let Some(d) = &status.session_duration {
        field(&mut out, "Duration", d);
    }
    if let Some(r) = status.reason.as_deref().filter(|r| !r.is_empty()) {
        field(&mut out, "Reason", r);
    }
    out.push('\n');
    out.push_str(&lifecycle(phase));
    out.push('\n');
    out.push_str("Hosts:\n");
    if status.stats.is_empty() {
        out.push_str("  (none reported yet)\n");
    } else {
        let rows: Vec<Vec<String>> = status
            .stats
            .iter()
            .map(|h| {
                vec![
                    h.hostname.clone().unwrap_or_default(),
                    h.phase.map(|p| format!("{p:?}")).unwrap_or_default(),
                    h.duration
                        .as_ref()
                        .map(|d| d.to_string())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        for l in table(&["HOST", "PHASE", "DURATION"], &rows).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    errors(
        &mut out,
        status
            .stats
            .iter()
            .map(|h| (h.hostname.clone().unwrap_or_default(), h.error.clone())),
    );
    out
}

fn errors(out: &mut String, hosts: impl Iterator<Item = (String, Option<String>)>) {
    let errs: Vec<(String, String)> = hosts
        .filter_map(|(h, e)| e.filter(|e| !e.is_empty()).map(|e| (h, e)))
        .collect();
    if !errs.is_empty() {
        out.push_str("\nErrors:\n");
        for (h, e) in errs {
            let _ = writeln!(out, "  {h}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(status: serde_json::Value) -> BackupSession {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupSession",
            "metadata": {"name": "nightly-1", "namespace": "ns"},
            "spec": {"backupConfiguration": {"name": "nightly"}},
            "status": status,
        }))
        .expect("session")
    }

    #[test]
    fn describe_a_session_without_status() {
        let mut bs = session(serde_json::json!({}));
        bs.status = None;
        let out = backup_session(&bs);
        assert!(
            out.contains("Phase:               Pending (no status yet)"),
            "{out}"
        );
        assert!(out.contains("▶ Pending (initial)   ◀ current"), "{out}");
        assert!(out.contains("(none reported yet)"), "{out}");
    }

    #[test]
    fn describe_a_running_session_with_hosts_and_errors() {
        let out = backup_session(&session(serde_json::json!({
            "phase": "Running", "totalHosts": 3,
            "stats": [
                {"hostname": "host-0", "phase": "Succeeded", "duration": "4.2s",
                 "snapshots": [{"name": "repo-1a2b3c4d", "directory": "/data", "size": "1.5 MiB"}]},
                {"hostname": "host-1", "phase": "Failed", "duration": "1s",
                 "error": "restic backup: exit status 1, reason: Fatal: unable to open config file"},
            ],
        })));
        assert!(
            out.starts_with("BackupSession:       ns/nightly-1\nBackupConfiguration: nightly\n"),
            "{out}"
        );
        assert!(out.contains("Phase:               Running\n"), "{out}");
        assert!(out.contains("Hosts:               2/3 reported\n"), "{out}");
        assert_eq!(
            out.matches('▶').count(),
            1,
            "exactly one phase is marked:\n{out}"
        );
        assert!(out.contains("  ▶ Running   ◀ current\n"), "{out}");
        assert!(
            out.contains("    Pending (initial)\n        Start → Running\n"),
            "{out}"
        );
        assert!(
            out.contains("        Complete [all_hosts_succeeded] → Succeeded\n"),
            "{out}"
        );
        assert!(out.contains("    Succeeded (terminal)\n"), "{out}");
        assert!(
            out.contains("  HOST    PHASE      DURATION  SNAPSHOTS  SIZE\n"),
            "{out}"
        );
        assert!(
            out.contains("  host-0  Succeeded  4.2s      1          1.5 MiB\n"),
            "{out}"
        );
        assert!(out.contains("  host-1  Failed     1s        0\n"), "{out}");
        assert!(out.contains("Errors:\n  host-1: restic backup: exit status 1, reason: Fatal: unable to open config file\n"), "{out}");
    }

    #[test]
    fn describe_a_failed_restore() {
        let rs: RestoreSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "restore-1", "namespace": "ns"},
            "spec": {"repository": {"name": "local-repo"},
                     "target": {"ref": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db"}},
                     "rules": [{"paths": ["/data"]}]},
            "status": {"phase": "Failed", "totalHosts": 2, "reason": "no rule matches host host-1",
                       "stats": [{"hostname": "host-0", "phase": "Succeeded", "duration": "2s"}]},
        }))
        .expect("restore");
        let out = restore_session(&rs);
        assert!(
            out.starts_with("RestoreSession:      ns/restore-1\nRepository:          local-repo\n"),
            "{out}"
        );
        assert!(
            out.contains("Reason:              no rule matches host host-1\n"),
            "{out}"
        );
        assert!(out.contains("Lifecycle (RestoreSession):\n"), "{out}");
        assert!(out.contains("  ▶ Failed (terminal)   ◀ current\n"), "{out}");
        assert!(
            out.contains("        Complete [any_host_failed] → Failed\n"),
            "{out}"
        );
        assert!(out.contains("  host-0  Succeeded  2s\n"), "{out}");
    }

    #[test]
    fn lifecycle_marks_exactly_the_current_phase() {
        use stash_crds::backup_session::Phase;
        let s = lifecycle(Phase::Running);
        assert_eq!(s.matches('▶').count(), 1, "{s}");
        assert!(s.contains("▶ Running   ◀ current"), "{s}");
        assert!(
            s.contains("Complete [all_hosts_succeeded] → Succeeded"),
            "{s}"
        );
        assert!(s.contains("Unknown (declared, never set)"), "{s}");
        for t in <Phase as Lifecycle>::TRANSITIONS {
            assert!(s.contains(&format!("→ {}", t.to.name())));
        }
    }

    #[test]
    fn durations_and_tables() {
        assert_eq!(secs(7), "7s");
        assert_eq!(secs(184), "3m04s");
        assert_eq!(secs(7500), "2h05m");
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }
}
