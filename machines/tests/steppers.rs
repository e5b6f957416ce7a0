//! Scenario tests of the steppers; the BackupSession ones run against the generated lifecycle
//! and the hand-written twin.

use stash_machines::backup_session::{
    self as bs, BackupLifecycle, Config, HostPhase, HostReport, Observation, OtherSession,
    OverlapPolicy, RepositoryUse, TargetModel,
};
use stash_machines::restore_session as rs;
use stash_machines::{Effect, EventKind, JobState, Lifecycle, Policy, api_error_is_permanent};
use std::time::Duration;

fn config(model: TargetModel, total_hosts: u32) -> Config {
    Config::Found {
        paused: false,
        model,
        total_hosts,
        overlap: OverlapPolicy::Skip,
    }
}

fn obs<L: BackupLifecycle>(phase: Option<L>, config: Config) -> Observation<L> {
    Observation {
        name: "daily-100".into(),
        created_at: 100,
        phase,
        total_hosts: phase.map(|_| 1),
        hosts: vec![],
        config,
        others: vec![],
        repository: RepositoryUse::initialized(),
        job: None,
        now: 110,
        policy: Policy {
            deadline: Duration::from_secs(600),
            poll: Duration::from_secs(30),
        },
    }
}

fn host(phase: Option<HostPhase>, error: Option<&str>, snapshots: u32) -> HostReport {
    HostReport {
        hostname: "host-0".into(),
        phase,
        error: error.map(Into::into),
        snapshots,
        duration: Duration::from_secs(4),
    }
}

fn names<L: Lifecycle>(d: &bs::Decision<L>) -> (&'static str, Option<String>) {
    (d.phase.name(), d.status().and_then(|s| s.reason.clone()))
}

fn scenarios<L: BackupLifecycle>() {
    // A Job the API refuses for good fails the session with the API's words.
    let mut o = obs::<L>(None, config(TargetModel::Job, 1));
    o.job = Some(JobState::Rejected {
        message: "jobs.batch is forbidden: exceeded quota".into(),
    });
    let d = bs::decide_with(&o);
    assert_eq!(d.phase, L::FAILED);
    assert_eq!(
        d.status().and_then(|s| s.reason.clone()).as_deref(),
        Some("could not create the backup Job: jobs.batch is forbidden: exceeded quota")
    );
    assert_eq!(d.actions().count(), 0, "a refused Job is not created again");

    // A Repository without a backup yet: the sessions of every configuration sharing it start one
    // at a time, oldest first (two first backups would both `restic init` it).
    let other = |name: &str, phase: Option<L>, created_at: u64| OtherSession {
        name: name.into(),
        phase,
        created_at,
    };
    for (others, starts) in [
        (vec![], true),
        (vec![other("theirs-1", Some(L::RUNNING), 200)], false),
        (vec![other("theirs-1", None, 90)], false),
        (vec![other("aaa-1", None, 100)], false),
        (vec![other("theirs-1", None, 100)], true),
        (vec![other("theirs-1", None, 101)], true),
        (vec![other("theirs-1", Some(L::SUCCEEDED), 90)], true),
        (vec![other("theirs-1", Some(L::FAILED), 90)], true),
    ] {
        let mut o = obs::<L>(None, config(TargetModel::Sidecar, 1));
        o.repository = RepositoryUse {
            initialized: false,
            others: others.clone(),
            claimed_by: None,
        };
        let d = bs::decide_with(&o);
        assert_eq!(d.phase == L::RUNNING, starts, "{others:?}");
        if !starts {
            assert!(
                d.status().is_none(),
                "waiting writes nothing: {:?}",
                d.effects
            );
        } else {
            // Starting the first backup of a new Repository claims it, once the sidecars are
            // granted (a session that claimed and then waited for its grant would hold the
            // claim while an older one waits for it: each would wait for the other).
            assert_eq!(
                d.actions().collect::<Vec<_>>(),
                [&bs::Action::GrantSidecars, &bs::Action::ClaimRepository]
            );
            // ... and a claim held by another session (the caches lag) makes it wait, quietly.
            let mut claimed = o.clone();
            claimed.repository.claimed_by = Some("theirs-2".into());
            let d = bs::decide_with(&claimed);
            assert_eq!(d.phase, L::INITIAL);
            assert!(d.is_quiet(), "{:?}", d.effects);
        }
        // Once a backup has succeeded into it, the other configurations no longer matter.
        o.repository = RepositoryUse::initialized();
        assert_eq!(bs::decide_with(&o).phase, L::RUNNING);
    }

    // Job model: create the Job before writing Running.
    let d = bs::decide_with(&obs::<L>(None, config(TargetModel::Job, 2)));
    assert_eq!(d.phase, L::RUNNING);
    assert_eq!(d.effects[0], Effect::Act(bs::Action::CreateBackupJob));
    assert_eq!(d.status().unwrap().total_hosts, Some(2));

    // Sidecar model: the sidecars are granted the session before it is marked Running (which is
    // what they wait for), and nothing else is acted on.
    let d = bs::decide_with(&obs::<L>(None, config(TargetModel::Sidecar, 2)));
    assert_eq!(d.phase, L::RUNNING);
    assert_eq!(
        d.actions().collect::<Vec<_>>(),
        [&bs::Action::GrantSidecars]
    );
    assert_eq!(d.effects[0], Effect::Act(bs::Action::GrantSidecars));
    assert!(matches!(d.effects[1], Effect::WriteStatus(_)));

    // Decision 1: an errored entry without a phase (upstream's job-model quirk) is a failure, and
    // so is a success without a snapshot.
    for h in [
        host(None, Some("repository locked"), 0),
        host(Some(HostPhase::Succeeded), None, 0),
    ] {
        let mut o = obs(Some(L::RUNNING), config(TargetModel::Job, 1));
        o.hosts = vec![h];
        let d = bs::decide_with(&o);
        assert_eq!(d.phase, L::FAILED, "{:?}", o.hosts);
    }
    let mut o = obs(Some(L::RUNNING), config(TargetModel::Sidecar, 1));
    o.hosts = vec![host(Some(HostPhase::Succeeded), None, 2)];
    let d = bs::decide_with(&o);
    assert_eq!(d.phase, L::SUCCEEDED);
    assert_eq!(
        d.status().unwrap().session_duration,
        Some(Duration::from_secs(4))
    );

    // Decision 3: a running session of the same configuration skips this one, with a reason.
    let mut o = obs::<L>(None, config(TargetModel::Sidecar, 1));
    o.others = vec![OtherSession {
        name: "daily-40".into(),
        phase: Some(L::RUNNING),
        created_at: 40,
    }];
    let d = bs::decide_with(&o);
    assert_eq!(
        names(&d),
        (
            "Skipped",
            Some("BackupSession daily-40 of the same BackupConfiguration is running".into())
        )
    );
    assert!(
        d.effects.iter().any(
            |e| matches!(e, Effect::Emit(r) if r.kind == EventKind::Warning && r.reason == "BackupSessionSkipped")
        )
    );

    // ... or makes it wait.
    o.config = Config::Found {
        paused: false,
        model: TargetModel::Sidecar,
        total_hosts: 1,
        overlap: OverlapPolicy::Wait,
    };
    let d = bs::decide_with(&o);
    assert_eq!(d.phase, L::INITIAL);
    assert!(d.is_quiet());

    // Deadlines: a host that never reports ends the session Failed, naming what is missing.
    let mut o = obs(Some(L::RUNNING), config(TargetModel::Sidecar, 1));
    o.now = 700;
    assert_eq!(
        names(&bs::decide_with(&o)),
        (
            "Failed",
            Some("deadline of 600s exceeded: 1 of 1 host(s) never reported".into())
        )
    );

    // A failed Job ends it at once.
    let mut o = obs(Some(L::RUNNING), config(TargetModel::Job, 1));
    o.job = Some(JobState::Failed {
        message: "BackoffLimitExceeded".into(),
    });
    assert_eq!(bs::decide_with(&o).phase, L::FAILED);

    // Paused: skipped (upstream's behaviour).
    let o = obs::<L>(
        None,
        Config::Found {
            paused: true,
            model: TargetModel::Job,
            total_hosts: 1,
            overlap: OverlapPolicy::Skip,
        },
    );
    assert_eq!(
        names(&bs::decide_with(&o)),
        ("Skipped", Some("BackupConfiguration is paused".into()))
    );

    // Terminal: nothing at all.
    let d = bs::decide_with(&obs(Some(L::SUCCEEDED), config(TargetModel::Job, 1)));
    assert!(d.effects.is_empty());
}

#[test]
fn backup_session_scenarios_hold_for_the_generated_machine() {
    scenarios::<bs::Phase>();
}

#[test]
fn backup_session_scenarios_hold_for_the_hand_written_twin() {
    scenarios::<bs::twin::Phase>();
}

fn restore(hosts: &[&str], rules: Vec<rs::Rule>) -> rs::Observation {
    rs::Observation {
        name: "restore".into(),
        created_at: 0,
        phase: None,
        total_hosts: None,
        hosts: vec![],
        model: rs::TargetModel::Workload,
        target_hosts: hosts.iter().map(|h| h.to_string()).collect(),
        hosts_refused: None,
        node_hosts: None,
        rules,
        job: None,
        now: 1,
        policy: Policy::default(),
    }
}

#[test]
fn restore_rule_resolution_reports_a_host_no_rule_matches() {
    let named = |h: &str| rs::Rule {
        target_hosts: vec![h.into()],
    };
    let rules = vec![named("host-1"), rs::Rule::default(), named("host-2")];
    assert_eq!(rs::resolve_rule("host-1", &rules), rs::RuleMatch::Rule(0));
    assert_eq!(rs::resolve_rule("host-2", &rules), rs::RuleMatch::Rule(2));
    assert_eq!(rs::resolve_rule("host-0", &rules), rs::RuleMatch::Rule(1));
    assert_eq!(
        rs::resolve_rule("host-0", &[named("host-1")]),
        rs::RuleMatch::NoRuleMatched
    );

    let d = rs::decide(&restore(&["host-0", "host-1"], vec![named("host-1")]));
    assert_eq!(d.phase, rs::Phase::Failed);
    assert_eq!(
        d.status().unwrap().reason.as_deref(),
        Some("no restore rule matches host(s): host-0")
    );

    let d = rs::decide(&restore(&["host-0"], vec![rs::Rule::default()]));
    assert_eq!(d.phase, rs::Phase::Running);
    // A workload target needs no action: the workload controller injects `stash-init`.
    assert_eq!(d.actions().count(), 0);
    assert!(matches!(d.effects[0], Effect::WriteStatus(_)));
}

#[test]
fn restore_outcomes_follow_failed_then_unknown_then_succeeded() {
    let mut o = restore(&["host-0", "host-1"], vec![rs::Rule::default()]);
    o.phase = Some(rs::Phase::Running);
    o.total_hosts = Some(2);
    let h = |name: &str, phase, error: Option<&str>| rs::HostReport {
        hostname: name.into(),
        phase,
        error: error.map(Into::into),
        duration: Duration::from_secs(1),
    };
    o.hosts = vec![
        h("host-0", Some(rs::HostPhase::Succeeded), None),
        h("host-1", Some(rs::HostPhase::Unknown), None),
    ];
    assert_eq!(rs::decide(&o).phase, rs::Phase::Unknown);
    o.hosts[0].error = Some("restic: exit 1".into());
    assert_eq!(rs::decide(&o).phase, rs::Phase::Failed);
    o.hosts = vec![
        h("host-0", Some(rs::HostPhase::Succeeded), None),
        h("host-1", Some(rs::HostPhase::Succeeded), None),
    ];
    assert_eq!(rs::decide(&o).phase, rs::Phase::Succeeded);
}

#[test]
fn permanent_and_transient_api_errors() {
    for code in [400, 403, 422] {
        assert!(api_error_is_permanent(code), "{code}");
    }
    for code in [409, 429, 500, 503, 504] {
        assert!(!api_error_is_permanent(code), "{code}");
    }
}

#[test]
fn a_restore_job_the_api_refuses_for_good_fails_the_restore() {
    let mut o = restore(&["host-0"], vec![]);
    o.model = rs::TargetModel::Job;
    o.job = Some(JobState::Rejected {
        message: "Job.batch \"x\" is invalid".into(),
    });
    let d = rs::decide(&o);
    assert_eq!(d.phase, rs::Phase::Failed);
    assert_eq!(
        d.status().and_then(|s| s.reason.clone()).as_deref(),
        Some("could not create the restore Job: Job.batch \"x\" is invalid")
    );
    assert_eq!(d.actions().count(), 0, "a refused Job is not created again");
}

/// Issue 24: a target asking for more hosts than a session restores fails the session with
/// the reason, and no host name is built for it.
#[test]
fn too_many_hosts_fail_the_restore_before_any_name_is_built() {
    assert_eq!(
        rs::numbered_hosts(3, None, true).expect("three"),
        ["host-0", "host-1", "host-2"]
    );
    assert_eq!(
        rs::numbered_hosts(0, None, true).expect("one at least"),
        ["host-0"]
    );
    assert_eq!(
        rs::numbered_hosts(i64::from(rs::MAX_HOSTS), None, true)
            .expect("the limit")
            .len(),
        rs::MAX_HOSTS as usize
    );
    let why = rs::numbered_hosts(i64::from(i32::MAX), None, true).expect_err("past the limit");
    assert!(why.contains("2147483647 replicas"), "{why}");
    let mut obs = restore(&[], vec![rs::Rule::default()]);
    obs.hosts_refused = Some(why.clone());
    let d = rs::decide(&obs);
    assert_eq!(d.phase, rs::Phase::Failed);
    assert!(
        d.effects.iter().any(
            |e| matches!(e, rs::Effect::WriteStatus(s) if s.reason.as_deref() == Some(why.as_str()))
        ),
        "{:?}",
        d.effects
    );
}

#[test]
fn a_daemonset_restore_counts_its_nodes_and_leaves_each_rule_to_its_host() {
    // Two nodes, known by number: the session starts with two hosts; a rule naming a node is
    // resolved by that node's agent, not refused up front for want of names.
    let named = rs::Rule {
        target_hosts: vec!["node-a".into()],
    };
    let mut o = restore(&[], vec![named]);
    o.node_hosts = Some(2);
    let d = rs::decide(&o);
    assert_eq!(d.phase, rs::Phase::Running);
    assert_eq!(d.status().and_then(|s| s.total_hosts), Some(2));
    // Scheduled on no node (or not there at all): nothing to restore.
    o.node_hosts = Some(0);
    let d = rs::decide(&o);
    assert_eq!(d.phase, rs::Phase::Failed);
    assert_eq!(
        d.status().and_then(|s| s.reason.clone()).as_deref(),
        Some("no hosts to restore")
    );
}
