//! One host's restore (stash-api.md §7.3, §9.1): resolve the host's rule, then restore every
//! listed snapshot, or the latest snapshot of the source host for every listed path.
use std::path::Path;

use stash_crds::{Repository, RestoreSession, restore_session::Rule};
use stash_machines::restore_host::{RestoreHostObservation, Session};
use stash_machines::restore_session::{self as machine, RuleMatch};
use stash_machines::snapshots;
use stash_restic as restic;

use crate::backup::Settings;

/// What to restore for one host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Restore these snapshots, whole (`latest`: the newest of `source_host`), each only if
    /// every path it holds lies under the target's mounts
    /// ([`stash_machines::snapshots::choose`]).
    Snapshots {
        /// The host whose `latest` is meant.
        source_host: String,
        /// The snapshot names, ids or id prefixes.
        names: Vec<String>,
    },
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
    let rule: &Rule = match matched_rule(rs, host) {
        Some(rule) => rule,
        None if rs.spec.restore_rules().is_empty() && !default_paths.is_empty() => {
            return Ok(Plan::Paths {
                source_host: host.into(),
                paths: default_paths.to_vec(),
            });
        }
        None => return Err(format!("no restore rule matches host {host}")),
    };
    let source_host = rule
        .source_host
        .clone()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| host.into());
    if !rule.snapshots.is_empty() {
        return Ok(Plan::Snapshots {
            source_host,
            names: rule.snapshots.clone(),
        });
    }
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

/// The rule of `spec.rules` or `spec.target.rules` (whichever the manifest wrote) that
/// `host` restores by ([`machine::resolve_rule`]), if any.
fn matched_rule<'a>(rs: &'a RestoreSession, host: &str) -> Option<&'a Rule> {
    let rules = rs.spec.restore_rules();
    let resolvable: Vec<machine::Rule> = rules
        .iter()
        .map(|r| machine::Rule {
            target_hosts: r.target_hosts.clone(),
        })
        .collect();
    match machine::resolve_rule(host, &resolvable) {
        RuleMatch::Rule(i) => rules.get(i),
        RuleMatch::NoRuleMatched => None,
    }
}

/// Which files of the snapshots `host` restores: its rule's `include` and `exclude` patterns
/// (restic `--include`/`--exclude`; none: every file).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// Only these.
    pub include: Vec<String>,
    /// All but these.
    pub exclude: Vec<String>,
    /// The target's extra `restic restore` arguments (`spec.target.args`), as written.
    pub args: Vec<String>,
}

/// The [`Filters`] of `host`'s rule, with the target's arguments.
pub fn filters(rs: &RestoreSession, host: &str) -> Filters {
    let args = rs
        .spec
        .target
        .as_ref()
        .map(|t| t.args.clone())
        .unwrap_or_default();
    let mut f = matched_rule(rs, host)
        .map(|r| Filters {
            include: r.include.clone(),
            exclude: r.exclude.clone(),
            args: Vec::new(),
        })
        .unwrap_or_default();
    f.args = args;
    f
}

/// The full ids of the snapshots `names` restores for `source_host` into a target mounting
/// `mounts`: the repository's snapshots are read once and the choice is the machine's
/// ([`snapshots::choose`]): exact ids, `latest` of the source host, paths under the mounts.
pub async fn resolve_snapshots(
    r: &restic::Repo,
    names: &[String],
    source_host: &str,
    mounts: &[String],
) -> Result<Vec<String>, String> {
    let mut all = r
        .snapshots(&restic::SnapshotFilter::default())
        .await
        .map_err(|e| format!("list snapshots: {e}"))?;
    all.sort_by_key(|s| s.time);
    let candidates: Vec<snapshots::Candidate<'_>> = all
        .iter()
        .map(|s| snapshots::Candidate {
            id: &s.id,
            hostname: &s.hostname,
            paths: &s.paths,
        })
        .collect();
    let chosen = snapshots::choose(names, source_host, &candidates, mounts)?;
    Ok(chosen.into_iter().map(|i| all[i].id.clone()).collect())
}

/// The full id `name` (a Snapshot API name, an id or an id prefix) stands for, or why none:
/// missing or ambiguous ([`snapshots::lookup`]).
pub async fn resolve_id(r: &restic::Repo, name: &str) -> Result<String, String> {
    let all = r
        .snapshots(&restic::SnapshotFilter::default())
        .await
        .map_err(|e| format!("list snapshots: {e}"))?;
    let id = snapshots::id_of(name);
    match snapshots::lookup(all.iter().map(|s| s.id.as_str()), id) {
        snapshots::Lookup::Found(i) => Ok(all[i].id.clone()),
        snapshots::Lookup::Missing => Err(format!("snapshot {name} not found")),
        snapshots::Lookup::Ambiguous(a, b) => Err(format!(
            "snapshot {name} is ambiguous: snapshots {} and {} both start with {id}",
            all[a].id, all[b].id
        )),
    }
}

/// Carry out `plan` into `target` (`/` inside the pod's mount namespace), whose volumes are
/// mounted at `mounts`.
pub async fn run(
    repo: &Repository,
    plan: &Plan,
    filters: &Filters,
    settings: &Settings,
    target: &Path,
    mounts: &[String],
) -> Result<(), String> {
    // Admission refused arguments off the allow-list; one that got in fails the host, named.
    let extra = stash_core::args::check(stash_core::args::Command::Restore, &filters.args)
        .map_err(|errs| crate::backup::refused_args("spec.target.args", &errs))?;
    let r = crate::backup::open(repo, settings)?;
    let filtered = |mut opts: restic::RestoreOptions| {
        opts.includes = filters.include.clone();
        opts.excludes = filters.exclude.clone();
        opts.extra = extra.clone();
        opts
    };
    match plan {
        Plan::Snapshots { source_host, names } => {
            for id in resolve_snapshots(&r, names, source_host, mounts).await? {
                let opts = filtered(restic::RestoreOptions::new(id.as_str(), target));
                r.restore(&opts)
                    .await
                    .map_err(|e| format!("restore of snapshot {id}: {e}"))?;
            }
        }
        Plan::Paths { source_host, paths } => {
            for p in paths {
                let mut opts = filtered(restic::RestoreOptions::new("latest", target));
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
            Ok(Plan::Snapshots {
                source_host: "host-2".into(),
                names: vec!["repo-0123abcd".into()]
            })
        );
        assert_eq!(
            plan(&r, "host-5", &[]),
            Ok(Plan::Paths {
                source_host: "host-5".into(),
                paths: vec!["/source/data".into()]
            })
        );
    }

    #[test]
    fn the_later_place_of_the_rules_and_their_filters_are_read() {
        let r: RestoreSession = serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession",
            "metadata": {"name": "r"},
            "spec": {"repository": {"name": "repo"},
                     "target": {"rules": [{"paths": ["/source/data"], "include": ["/source/data/keep*"],
                                           "exclude": ["*.tmp"]}]}}
        }))
        .expect("rs");
        assert_eq!(
            plan(&r, "host-0", &[]),
            Ok(Plan::Paths {
                source_host: "host-0".into(),
                paths: vec!["/source/data".into()]
            })
        );
        assert_eq!(
            filters(&r, "host-0"),
            Filters {
                include: vec!["/source/data/keep*".into()],
                exclude: vec!["*.tmp".into()],
                args: vec![],
            }
        );
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
