//! Carrying out a lifecycle's decision: the one effect interpreter of every session controller.
//!
//! A machine decides ([`stash_machines::Decision`]); a controller only says how each kind of
//! effect is done for its objects ([`Perform`]) and hands the decision to [`interpret`], which
//! performs the effects in order, feeds a permanent refusal of an action back to the machine,
//! and turns the outcome into the controller's next [`Action`]. Status writes go through the
//! [`crate::StatusWriter`], which checks every phase change against the lifecycle's table.
use std::{fmt::Debug, future::Future, time::Duration};

use kube::runtime::controller::Action;
use stash_machines::{Decision, Effect, EventRecord, Lifecycle, Performed, StatusPatch};

/// How one controller performs its lifecycle's effects for one object.
pub trait Perform<L: Lifecycle, A>: Send {
    /// What a failed effect returns (retried by the controller with back-off).
    type Error: Send;

    /// Carry out a lifecycle-specific action; it must be idempotent. A refusal that retrying
    /// cannot change is [`Performed::Refused`]; anything transient is an error.
    fn act(&mut self, action: &A) -> impl Future<Output = Result<Performed, Self::Error>> + Send;

    /// Write the status fields the operator owns, as `patch` says.
    fn write_status(
        &mut self,
        patch: StatusPatch<L>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Emit an Event on the object.
    fn emit(&mut self, event: EventRecord) -> impl Future<Output = ()> + Send;

    /// The machine's decision again, now that `action` was refused for good with `message`.
    fn decide_refused(&mut self, action: &A, message: String) -> Decision<L, A>;
}

/// How many times one reconcile lets the machine decide again after a refusal (a machine that
/// asks for a refused action again would otherwise loop).
const MAX_REDECISIONS: usize = 2;

/// Perform `decision`'s effects in order through `perform`; returns when to look again: never
/// for a terminal phase (only an edit brings the object back), else after the decision's
/// requeue or `poll`.
pub async fn interpret<L, A, P>(
    decision: Decision<L, A>,
    perform: &mut P,
    poll: Duration,
) -> Result<Action, P::Error>
where
    L: Lifecycle,
    A: Debug + Send,
    P: Perform<L, A>,
{
    let mut decision = decision;
    let mut redecisions = 0;
    let mut requeue = None;
    'decide: loop {
        if let Some(rejection) = &decision.rejection {
            tracing::error!(%rejection, "BUG: the machine's event was rejected by its lifecycle");
        }
        for effect in std::mem::take(&mut decision.effects) {
            match effect {
                Effect::Act(action) => match perform.act(&action).await? {
                    Performed::Done => {}
                    Performed::Refused(message) if redecisions < MAX_REDECISIONS => {
                        redecisions += 1;
                        decision = perform.decide_refused(&action, message);
                        requeue = None;
                        continue 'decide;
                    }
                    Performed::Refused(message) => {
                        tracing::error!(?action, %message, "BUG: the machine asked again for an action refused for good");
                        break 'decide;
                    }
                },
                Effect::WriteStatus(patch) => perform.write_status(patch).await?,
                Effect::Emit(event) => perform.emit(event).await,
                Effect::RequeueAfter(after) => requeue = Some(after),
            }
        }
        break;
    }
    Ok(if decision.phase.is_terminal() {
        Action::await_change()
    } else {
        Action::requeue(requeue.unwrap_or(poll).max(Duration::from_secs(1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use stash_machines::restore_session::{self as rs, Phase};
    use stash_machines::{JobState, Policy};

    /// Records what it was asked to do; refuses the first `refuse` actions.
    #[derive(Default)]
    struct Recorder {
        log: Vec<String>,
        refuse: usize,
        obs: Option<rs::Observation>,
    }

    impl Perform<Phase, rs::Action> for Recorder {
        type Error = std::convert::Infallible;

        async fn act(&mut self, action: &rs::Action) -> Result<Performed, Self::Error> {
            self.log.push(format!("act {action:?}"));
            if self.refuse > 0 {
                self.refuse -= 1;
                return Ok(Performed::Refused("quota exceeded".into()));
            }
            Ok(Performed::Done)
        }

        async fn write_status(&mut self, patch: StatusPatch<Phase>) -> Result<(), Self::Error> {
            self.log.push(format!("status {:?}", patch.phase));
            Ok(())
        }

        async fn emit(&mut self, event: EventRecord) {
            self.log.push(format!("event {}", event.reason));
        }

        fn decide_refused(&mut self, _: &rs::Action, message: String) -> rs::Decision {
            let obs = self.obs.as_mut().expect("an observation");
            obs.job = Some(JobState::Rejected { message });
            rs::decide(obs)
        }
    }

    fn observation() -> rs::Observation {
        rs::Observation {
            name: "restore".into(),
            created_at: 100,
            phase: None,
            total_hosts: None,
            hosts: vec![],
            model: rs::TargetModel::Job,
            target_hosts: vec!["host-0".into()],
            hosts_refused: None,
            node_hosts: None,
            rules: vec![rs::Rule::default()],
            job: None,
            now: 110,
            policy: Policy {
                deadline: Duration::from_secs(600),
                poll: Duration::from_secs(30),
            },
        }
    }

    fn run(refuse: usize) -> (Action, Vec<String>) {
        let obs = observation();
        let mut r = Recorder {
            refuse,
            obs: Some(obs.clone()),
            ..Recorder::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let action = rt
            .block_on(interpret(rs::decide(&obs), &mut r, Duration::from_secs(30)))
            .expect("infallible");
        (action, r.log)
    }

    #[test]
    fn effects_are_performed_in_order_and_a_waiting_phase_is_requeued() {
        let (action, log) = run(0);
        assert_eq!(
            log,
            [
                "act CreateRestoreJobs",
                "status Running",
                "event RestoreSessionRunning"
            ]
        );
        // The machine's requeue (the poll, capped by the deadline), not the default.
        assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    }

    #[test]
    fn a_refused_action_goes_back_to_the_machine_which_ends_the_session() {
        let (action, log) = run(1);
        assert_eq!(
            log,
            [
                "act CreateRestoreJobs",
                "status Failed",
                "event RestoreSessionFailedToExecute"
            ]
        );
        assert_eq!(action, Action::await_change());
    }
}
