//! The same lifecycle tests, run against the generated BackupSession lifecycle and its
//! hand-written twin (and the generated RestoreSession lifecycle).

use stash_machines::lifecycle::{Lifecycle, RejectionKind, transition_by_table};
use stash_machines::{backup_host, backup_session, repository, restore_host, restore_session};
use statig::blocking::IntoStateMachineExt as _;

/// Every guard valuation for a lifecycle with at most a few guards.
fn valuations<L: Lifecycle>() -> Vec<Vec<L::Guard>> {
    let n = L::GUARDS.len();
    (0..1u32 << n)
        .map(|mask| {
            (0..n)
                .filter(|i| mask & (1 << i) != 0)
                .map(|i| L::GUARDS[i])
                .collect()
        })
        .collect()
}

fn the_match_agrees_with_the_table<L: Lifecycle>() {
    for &p in L::PHASES {
        for &e in L::EVENTS {
            for holds in valuations::<L>() {
                let g = |g: L::Guard| holds.contains(&g);
                assert_eq!(
                    p.transition(e, &g),
                    transition_by_table(p, e, &g),
                    "{p:?} {e:?} {holds:?}"
                );
            }
        }
    }
}

fn phases_only_move_forward_and_terminals_absorb<L: Lifecycle>() {
    for t in L::TRANSITIONS {
        assert!(t.to.rank() > t.from.rank(), "{t:?} goes back");
        assert!(!t.from.is_terminal());
        assert!(!t.to.is_declared_only());
    }
    for &p in L::PHASES.iter().filter(|p| p.is_terminal()) {
        for &e in L::EVENTS {
            let r = p.transition(e, &|_| true).unwrap_err();
            assert_eq!((r.phase, r.event, r.kind), (p, e, RejectionKind::Terminal));
        }
    }
    assert_eq!(L::INITIAL.rank(), 0);
}

#[test]
fn generated_backup_lifecycle_match_agrees_with_its_table() {
    the_match_agrees_with_the_table::<backup_session::Phase>();
    phases_only_move_forward_and_terminals_absorb::<backup_session::Phase>();
}

#[test]
fn twin_backup_lifecycle_match_agrees_with_its_table() {
    the_match_agrees_with_the_table::<backup_session::twin::Phase>();
    phases_only_move_forward_and_terminals_absorb::<backup_session::twin::Phase>();
}

#[test]
fn generated_restore_lifecycle_match_agrees_with_its_table() {
    the_match_agrees_with_the_table::<restore_session::Phase>();
    phases_only_move_forward_and_terminals_absorb::<restore_session::Phase>();
}

#[test]
fn generated_host_lifecycles_match_agree_with_their_tables() {
    the_match_agrees_with_the_table::<backup_host::Phase>();
    phases_only_move_forward_and_terminals_absorb::<backup_host::Phase>();
    the_match_agrees_with_the_table::<restore_host::Phase>();
    phases_only_move_forward_and_terminals_absorb::<restore_host::Phase>();
}

#[test]
fn generated_repository_lifecycle_match_agrees_with_its_table() {
    the_match_agrees_with_the_table::<repository::Phase>();
    phases_only_move_forward_and_terminals_absorb::<repository::Phase>();
}

/// A lifecycle described by names only, to compare two lifecycles of different types.
type Described = (
    Vec<String>,
    Vec<String>,
    Vec<(u8, bool, bool)>,
    String,
    String,
);

fn by_name<L: Lifecycle>() -> Described {
    let phases = L::PHASES.iter().map(|p| p.name().to_string()).collect();
    let rows = L::TRANSITIONS
        .iter()
        .map(|t| {
            let guard = t.guard.map(L::guard_name).unwrap_or("-");
            format!(
                "{} --{} [{guard}]--> {}",
                t.from.name(),
                L::event_name(t.event),
                t.to.name()
            )
        })
        .collect();
    let flags = L::PHASES
        .iter()
        .map(|p| (p.rank(), p.is_terminal(), p.is_declared_only()))
        .collect();
    (
        phases,
        rows,
        flags,
        L::MERMAID.to_string(),
        L::DOT.to_string(),
    )
}

#[test]
fn the_twin_is_the_generated_lifecycle_written_by_hand() {
    assert_eq!(
        by_name::<backup_session::Phase>(),
        by_name::<backup_session::twin::Phase>()
    );
    // Same behaviour on every (phase, event, guard) triple, compared by name.
    for (i, &p) in backup_session::Phase::ALL.iter().enumerate() {
        let q = backup_session::twin::Phase::ALL[i];
        for (j, &e) in backup_session::Event::ALL.iter().enumerate() {
            let f = <backup_session::twin::Phase as Lifecycle>::EVENTS[j];
            for ok in [false, true] {
                let a = p
                    .transition(e, |_| ok)
                    .map(|x| x.as_str())
                    .map_err(|r| r.kind);
                let b = q
                    .transition(f, |_| ok)
                    .map(|x| x.as_str())
                    .map_err(|r| r.kind);
                assert_eq!(a, b, "{p} {e}");
            }
        }
    }
}

fn statig_trace<L: Lifecycle>(
    mut drive: impl FnMut(&[(&str, bool)]) -> (Vec<(String, String)>, usize, String),
) -> (Vec<(String, String)>, usize, String) {
    let _ = L::NAME;
    drive(&[
        ("Complete", true),
        ("Start", true),
        ("Skip", false),
        ("Complete", true),
        ("Fail", false),
    ])
}

macro_rules! statig_run {
    ($m:path) => {{
        use $m as m;
        |events: &[(&str, bool)]| {
            let mut sm = m::StatigMachine::default().state_machine();
            for (name, ok) in events {
                let e = *<m::Phase as Lifecycle>::EVENTS
                    .iter()
                    .find(|e| <m::Phase as Lifecycle>::event_name(**e) == *name)
                    .unwrap();
                let ok = *ok;
                sm.handle_with_context(&e, &mut m::GuardContext(&|_| ok));
            }
            let trace = sm
                .trace
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect();
            (trace, sm.rejected.len(), sm.state().to_string())
        }
    }};
}

#[test]
fn statig_machines_of_generated_and_twin_record_the_same_trace() {
    let expected = (
        vec![
            ("Pending".to_string(), "Running".to_string()),
            ("Running".to_string(), "Succeeded".to_string()),
        ],
        3, // Complete in Pending, Skip in Running, Fail in Succeeded
        "Succeeded".to_string(),
    );
    assert_eq!(
        statig_trace::<backup_session::Phase>(statig_run!(backup_session)),
        expected
    );
    assert_eq!(
        statig_trace::<backup_session::twin::Phase>(statig_run!(backup_session::twin)),
        expected
    );
}

#[test]
fn statig_restore_machine_ends_unknown_when_no_guard_holds() {
    let mut sm = restore_session::StatigMachine::default().state_machine();
    sm.handle_with_context(
        &restore_session::Event::Start,
        &mut restore_session::GuardContext(&|_| false),
    );
    sm.handle_with_context(
        &restore_session::Event::Complete,
        &mut restore_session::GuardContext(&|_| false),
    );
    assert_eq!(*sm.state(), restore_session::Phase::Unknown);
    assert!(sm.rejected.is_empty());
}

#[test]
fn phase_types_serialize_and_describe_themselves_as_stash_strings() {
    fn check<T: serde::Serialize + schemars::JsonSchema>(values: &[T], names: &[&str]) {
        let json: Vec<String> = values
            .iter()
            .map(|v| {
                serde_json::to_value(v)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(json, names);
        let schema = serde_json::to_value(schemars::schema_for!(T)).unwrap();
        assert_eq!(schema["type"], "string", "{schema}");
        assert_eq!(schema["enum"], serde_json::json!(names), "{schema}");
    }
    use backup_session as b;
    use restore_session as r;
    check(
        &b::Phase::ALL,
        &[
            "Pending",
            "Running",
            "Succeeded",
            "Failed",
            "Skipped",
            "Unknown",
        ],
    );
    check(
        &b::twin::Phase::ALL,
        &[
            "Pending",
            "Running",
            "Succeeded",
            "Failed",
            "Skipped",
            "Unknown",
        ],
    );
    check(&b::HostPhase::ALL, &["Succeeded", "Failed"]);
    check(
        &r::Phase::ALL,
        &["Pending", "Running", "Succeeded", "Failed", "Unknown"],
    );
    check(&r::HostPhase::ALL, &["Succeeded", "Failed", "Unknown"]);
    let back: b::Phase = serde_json::from_str("\"Skipped\"").unwrap();
    assert_eq!(back, b::Phase::Skipped);
    assert!(serde_json::from_str::<b::Phase>("\"skipped\"").is_err());
    assert_eq!(b::Phase::from_name("Running"), Some(b::Phase::Running));
    assert_eq!(b::Phase::default(), b::Phase::Pending);
}

#[test]
fn rejections_name_the_phase_and_the_event() {
    let r = backup_session::Phase::Succeeded
        .transition(backup_session::Event::Start, |_| true)
        .unwrap_err();
    assert_eq!(
        r.to_string(),
        "BackupSession: event `Start` rejected in phase `Succeeded`: the phase is terminal"
    );
    let r = backup_session::Phase::Pending
        .transition(backup_session::Event::Complete, |_| true)
        .unwrap_err();
    assert_eq!(
        r.to_string(),
        "BackupSession: event `Complete` rejected in phase `Pending`: no transition on this event"
    );
}
