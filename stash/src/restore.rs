//! One host's restore (stash-api.md §7.3, §9.1): resolve the host's rule, then restore every
//! listed snapshot, or the latest snapshot of the source host for every listed path.
use std::path::Path;

use stash_crds::{Repository, RestoreSession, restore_session::Rule};
use stash_machines::restore_host::{RestoreHostObservation, Session};
use stash_machines::restore_session::{self as machine, RuleMatch};
use stash_restic as restic;

use crate::backup::Settings;

/// What to restore for one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Restore these snapshots, whole.
    Snapshots(Vec<String>),
    /// Restore the latest snapshot of `source_host` that contains each path.
    Paths {
        /// The host whose data is restored.
        source_host: String,
        /// The paths.
        paths: Vec<String>,
    },
}

/// What the restore host machine ([`stash_machines::restore_host::decide`]) observes of one
/// RestoreSession for `host`: the session's phase (empty or `Pending`: not started; `Running`;
/// terminal: ended) and whether this host's entry is already in `status.stats`.
pub fn host_observation(rs: &RestoreSession, host: &str) -> RestoreHostObservation {
    use stash_crds::restore_session::Phase;
    let status = rs.status.as_ref();
    RestoreHostObservation {
        session: match status.and_then(|s| s.phase) {
            Some(Phase::Running) => Session::Running,
            Some(p) if p.is_terminal() => Session::Ended,
            _ => Session::Pending,
        },
        reported: status
            .is_some_and(|s| s.stats.iter().any(|h| h.hostname.as_deref() == Some(host))),
    }
}

/// The plan for `host`, or why there is none (decision 2: a host no rule matches is an error).
pub fn plan(rs: &RestoreSession, host: &str, default_paths: &[String]) -> Result<Plan, String> {
    let rules: Vec<machine::Rule> = rs
        .spec
        .rules
        .iter()
        .map(|r| machine::Rule {
            target_hosts: r.target_hosts.clone(),
        })
        .collect();
    let rule: &Rule = match machine::resolve_rule(host, &rules) {
        RuleMatch::Rule(i) => &rs.spec.rules[i],
        RuleMatch::NoRuleMatched if rs.spec.rules.is_empty() && !default_paths.is_empty() => {
            return Ok(Plan::Paths {
                source_host: host.into(),
                paths: default_paths.to_vec(),
            });
        }
        RuleMatch::NoRuleMatched => return Err(format!("no restore rule matches host {host}")),
    };
    if !rule.snapshots.is_empty() {
        return Ok(Plan::Snapshots(rule.snapshots.clone()));
    }
    let source_host = rule
        .source_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| host.into());
    let paths = if rule.paths.is_empty() {
        default_paths.to_vec()
    } else {
        rule.paths.clone()
    };
    if paths.is_empty() {
        return Err(format!(
            "the rule for host {host} names neither snapshots nor paths"
        ));
    }
    Ok(Plan::Paths { source_host, paths })
}

/// A snapshot name of the Snapshot API (`<repository>-<8 hex>`) or a plain restic id → the id.
fn snapshot_id(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((_, id)) if id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()) => id,
        _ => name,
    }
}

/// Carry out `plan` into `target` (`/` inside the pod's mount namespace).
pub async fn run(
    repo: &Repository,
    plan: &Plan,
    settings: &Settings,
    target: &Path,
) -> Result<(), String> {
    let r = crate::backup::open(repo, settings)?;
    match plan {
        Plan::Snapshots(ids) => {
            for id in ids {
                let opts = restic::RestoreOptions::new(snapshot_id(id), target);
                r.restore(&opts)
                    .await
                    .map_err(|e| format!("restore of snapshot {id}: {e}"))?;
            }
        }
        Plan::Paths { source_host, paths } => {
            for p in paths {
                let mut opts = restic::RestoreOptions::new("latest", target);
                opts.host = Some(source_host.clone());
                opts.paths = vec![p.clone()];
                r.restore(&opts)
                    .await
                    .map_err(|e| format!("restore of {p} from host {source_host}: {e}"))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(rules: serde_json::Value) -> RestoreSession {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "r"}, "spec": {"repository": {"name": "repo"}, "rules": rules}
        }))
        .expect("rs")
    }

    #[test]
    fn rules_resolve_per_host_with_source_host_and_snapshots() {
        let r = rs(serde_json::json!([
            {"targetHosts": ["host-0"], "sourceHost": "host-1", "paths": ["/source/data"]},
            {"targetHosts": ["host-2"], "snapshots": ["repo-0123abcd"]},
            {"paths": ["/source/data"]}
        ]));
        assert_eq!(
            plan(&r, "host-0", &[]),
            Ok(Plan::Paths {
                source_host: "host-1".into(),
                paths: vec!["/source/data".into()]
            })
        );
        assert_eq!(
            plan(&r, "host-2", &[]),
            Ok(Plan::Snapshots(vec!["repo-0123abcd".into()]))
        );
        assert_eq!(
            plan(&r, "host-5", &[]),
            Ok(Plan::Paths {
                source_host: "host-5".into(),
                paths: vec!["/source/data".into()]
            })
        );
        assert_eq!(snapshot_id("repo-0123abcd"), "0123abcd");
        assert_eq!(snapshot_id("0123abcd"), "0123abcd");
    }

    #[test]
    fn a_host_no_rule_matches_is_an_error() {
        let r = rs(serde_json::json!([{"targetHosts": ["host-0"], "paths": ["/a"]}]));
        assert_eq!(
            plan(&r, "host-1", &[]),
            Err("no restore rule matches host host-1".into())
        );
    }
}
