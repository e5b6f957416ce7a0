//! Kubernetes Events, published through kube's `Recorder`.
use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

/// Publishes events as one named controller.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Things went as expected.
    Normal,
    /// Something needs attention.
    Warning,
}

impl From<stash_machines::EventKind> for Severity {
    fn from(kind: stash_machines::EventKind) -> Self {
        match kind {
            stash_machines::EventKind::Normal => Severity::Normal,
            stash_machines::EventKind::Warning => Severity::Warning,
        }
    }
}

impl Events {
    /// Publish an event a machine decided on.
    pub async fn publish_record(&self, object: &ObjectReference, ev: stash_machines::EventRecord) {
        self.publish(object, ev.kind.into(), ev.reason, ev.message)
            .await;
    }

    /// A publisher reporting as `controller` (e.g. `stash-operator`).
    pub fn new(client: Client, controller: &str) -> Self {
        let reporter = Reporter {
            controller: controller.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publish an event about `object`. Failures are logged, never fatal: an event is
    /// information, not state.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        severity: Severity,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: match severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, object).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}
