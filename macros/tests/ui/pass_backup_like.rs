use stash_macros::{lifecycle, phase_enum};

#[lifecycle(name = "Demo", events(Start, Done, Fail))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    #[on(Done => Succeeded if all_ok, Done => Failed, Fail => Failed)]
    Running,
    #[terminal]
    Succeeded,
    #[terminal]
    Failed,
    #[terminal]
    #[declared_only]
    Unknown,
}

#[phase_enum]
pub enum HostPhase {
    Succeeded,
    Failed,
}

fn main() {
    assert_eq!(Phase::Pending.transition(Event::Start, |_| false), Ok(Phase::Running));
    assert_eq!(Phase::Running.transition(Event::Done, |g| g == Guard::AllOk), Ok(Phase::Succeeded));
    assert_eq!(TRANSITIONS.len(), 5);
    assert!(MERMAID.contains("Running --> Succeeded: Done [all_ok]"));
    assert_eq!(HostPhase::ALL.len(), 2);
}
