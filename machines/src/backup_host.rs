//! What one host's agent (a sidecar, or a backup Job's pod) does for a BackupSession, decided
//! from what the API and restic say, never from the agent's memory:
//!
//! * nothing until the operator has marked the session `Running`, and nothing once this host's
//!   entry is in `status.stats` (it has reported);
//! * a paused configuration does not stop a session already `Running` (the operator decides
//!   pausing, for sessions not yet started);
//! * every snapshot carries the session's identity as a restic tag ([`session_tag`]); an agent
//!   that restarts between writing a snapshot and reporting it finds that snapshot by the tag
//!   and reports it instead of backing the directory up again;
//! * what comes after the snapshots (`check`, `forget`, `stats`) never decides the host's
//!   outcome: a failure there is reported beside the snapshots ([`after_snapshot`]).

use std::collections::BTreeMap;

/// The restic tag that ties a snapshot to the session that took it.
pub fn session_tag(session: &str) -> String {
    format!("stash-session={session}")
}

/// What the agent observed for one session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostObservation {
    /// `status.phase` is `Running`.
    pub running: bool,
    /// This host's entry is already in `status.stats`.
    pub reported: bool,
    /// The directories this host backs up.
    pub directories: Vec<String>,
    /// The snapshots restic holds for this host with the session's tag: path → snapshot id.
    /// `None` when restic has not been asked yet.
    pub tagged: Option<BTreeMap<String, String>>,
}

/// The next step of the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostStep {
    /// Nothing to do for this session (not running yet, or already reported).
    Idle,
    /// Ask restic which snapshots carry the session's tag (fills `tagged`).
    LookUpSnapshots,
    /// Back up `back_up` (tagged with the session); `reuse` are directories whose snapshot
    /// already exists (path → id) and are reported as they are.
    BackUp {
        /// Directories to back up.
        back_up: Vec<String>,
        /// Directories already in the repository for this session.
        reuse: BTreeMap<String, String>,
    },
    /// Every directory already has its snapshot: report them, take none.
    Report {
        /// path → snapshot id.
        snapshots: BTreeMap<String, String>,
    },
}

/// Decides the host's next step.
pub fn decide(obs: &HostObservation) -> HostStep {
    if !obs.running || obs.reported {
        return HostStep::Idle;
    }
    let Some(tagged) = &obs.tagged else {
        return HostStep::LookUpSnapshots;
    };
    let mut reuse = BTreeMap::new();
    let mut back_up = Vec::new();
    for d in &obs.directories {
        match tagged.get(d) {
            Some(id) => {
                reuse.insert(d.clone(), id.clone());
            }
            None if !back_up.contains(d) => back_up.push(d.clone()),
            None => {}
        }
    }
    if back_up.is_empty() {
        HostStep::Report { snapshots: reuse }
    } else {
        HostStep::BackUp { back_up, reuse }
    }
}

/// One step after the snapshots (`check`, `forget`, `stats`) and how it went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AfterSnapshot {
    /// It worked.
    Done,
    /// It failed with this message.
    Failed(String),
}

/// The host's outcome once its snapshots exist: always `Succeeded` with every snapshot
/// recorded; each failed follow-up step becomes a warning (an event and a log line), never a
/// lost snapshot. Returns the warnings in step order.
pub fn after_snapshot(steps: &[(&str, AfterSnapshot)]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|(name, s)| match s {
            AfterSnapshot::Done => None,
            AfterSnapshot::Failed(e) => Some(format!("{name} failed after the snapshot: {e}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(running: bool, reported: bool, tagged: Option<&[(&str, &str)]>) -> HostObservation {
        HostObservation {
            running,
            reported,
            directories: vec!["/data".into(), "/logs".into()],
            tagged: tagged.map(|t| {
                t.iter()
                    .map(|(p, id)| ((*p).to_string(), (*id).to_string()))
                    .collect()
            }),
        }
    }

    #[test]
    fn a_host_waits_for_running_and_stops_once_reported() {
        assert_eq!(decide(&obs(false, false, None)), HostStep::Idle);
        assert_eq!(decide(&obs(true, true, Some(&[]))), HostStep::Idle);
        assert_eq!(decide(&obs(true, false, None)), HostStep::LookUpSnapshots);
    }

    #[test]
    fn a_restarted_host_reports_its_snapshots_instead_of_taking_new_ones() {
        assert_eq!(
            decide(&obs(true, false, Some(&[]))),
            HostStep::BackUp {
                back_up: vec!["/data".into(), "/logs".into()],
                reuse: BTreeMap::new(),
            }
        );
        assert_eq!(
            decide(&obs(true, false, Some(&[("/data", "aaaa")]))),
            HostStep::BackUp {
                back_up: vec!["/logs".into()],
                reuse: [("/data".to_string(), "aaaa".to_string())].into(),
            }
        );
        let both = [("/data", "aaaa"), ("/logs", "bbbb")];
        assert_eq!(
            decide(&obs(true, false, Some(&both))),
            HostStep::Report {
                snapshots: [
                    ("/data".to_string(), "aaaa".to_string()),
                    ("/logs".to_string(), "bbbb".to_string())
                ]
                .into()
            }
        );
    }

    #[test]
    fn follow_up_failures_are_warnings_in_order() {
        let w = after_snapshot(&[
            ("check", AfterSnapshot::Failed("pack 1 damaged".into())),
            ("forget", AfterSnapshot::Done),
            ("stats", AfterSnapshot::Failed("timeout".into())),
        ]);
        assert_eq!(
            w,
            [
                "check failed after the snapshot: pack 1 damaged",
                "stats failed after the snapshot: timeout"
            ]
        );
        assert!(after_snapshot(&[("check", AfterSnapshot::Done)]).is_empty());
    }

    #[test]
    fn the_tag_names_the_session() {
        assert_eq!(session_tag("daily-1"), "stash-session=daily-1");
    }
}
