//! Writing status in one place.
//!
//! Every status write of the operator goes through [`StatusWriter::write`]: it skips
//! no-op writes, carries the resourceVersion it was computed from (so a write based on a
//! stale read fails with a conflict and the reconcile runs again on fresh data), and checks
//! every phase change against the lifecycle's generated transition table first.
use std::fmt::Debug;

use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use serde::de::DeserializeOwned;

use crate::metrics::{Metrics, TransitionLabels};

pub use stash_machines::Lifecycle;

/// Is `from → to` an edge of `L`'s generated transition table? `None` is the initial phase;
/// staying in the same phase is always permitted.
pub fn permits<L: Lifecycle>(from: Option<L>, to: L) -> bool {
    let from = from.unwrap_or(L::INITIAL);
    from == to || L::TRANSITIONS.iter().any(|t| t.from == from && t.to == to)
}

/// Why a status write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The phase change is not in the lifecycle's transition table: a bug in the caller.
    #[error("illegal {lifecycle} transition {from} -> {to}")]
    IllegalTransition {
        /// The lifecycle.
        lifecycle: &'static str,
        /// The phase before.
        from: String,
        /// The phase asked for.
        to: String,
    },
    /// The API call failed (a 409 means the object changed since it was read).
    #[error("status write failed: {0}")]
    Kube(#[from] kube::Error),
    /// The status could not be serialised.
    #[error("status serialisation: {0}")]
    Serde(#[from] serde_json::Error),
}

/// Check `from → to` against `L`'s table, counting and logging a violation.
pub fn check_transition<L: Lifecycle>(
    metrics: &Metrics,
    from: Option<L>,
    to: L,
) -> Result<(), StatusError> {
    if permits(from, to) {
        return Ok(());
    }
    let (from, to) = (
        from.map_or_else(|| "<none>".to_string(), |p| format!("{p:?}")),
        format!("{to:?}"),
    );
    tracing::error!(lifecycle = L::NAME, %from, %to, "BUG: phase change outside the transition table refused");
    metrics
        .illegal_transitions
        .get_or_create(&TransitionLabels {
            lifecycle: L::NAME.into(),
            from: from.clone(),
            to: to.clone(),
        })
        .inc();
    Err(StatusError::IllegalTransition {
        lifecycle: L::NAME,
        from,
        to,
    })
}

/// The one place status is written.
#[derive(Clone, Debug)]
pub struct StatusWriter {
    metrics: Metrics,
    controller: &'static str,
}

impl StatusWriter {
    /// A writer for `controller`'s objects.
    pub fn new(metrics: Metrics, controller: &'static str) -> Self {
        Self {
            metrics,
            controller,
        }
    }

    /// Server-side apply of the status fields this writer owns (`owned`, a JSON object of
    /// status fields), after checking the phase change against `L`'s table. The apply names
    /// field manager `manager`, carries the resourceVersion read (a stale read is refused with
    /// 409) and leaves every field it does not name to its own owner (e.g. the hosts' entries
    /// of a list-map).
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_phase<L, K>(
        &self,
        api: &Api<K>,
        obj: &K,
        manager: &str,
        unchanged: bool,
        owned: serde_json::Value,
        from: Option<L>,
        to: L,
    ) -> Result<bool, StatusError>
    where
        L: Lifecycle,
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        check_transition::<L>(&self.metrics, from, to)?;
        self.apply(api, obj, manager, unchanged, owned).await
    }

    /// Server-side apply of the status fields `manager` owns (`owned`, a JSON object of status
    /// fields) unless `unchanged`, for kinds without a lifecycle table (a BackupConfiguration's
    /// readiness). Carries the resourceVersion read (a stale read is refused with 409).
    pub async fn apply<K>(
        &self,
        api: &Api<K>,
        obj: &K,
        manager: &str,
        unchanged: bool,
        owned: serde_json::Value,
    ) -> Result<bool, StatusError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        if unchanged {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": { "name": obj.name_any(), "resourceVersion": obj.resource_version() },
            "status": owned,
        });
        api.patch_status(
            &obj.name_any(),
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.count_write();
        Ok(true)
    }

    fn count_write(&self) {
        self.metrics
            .status_writes
            .get_or_create(&Metrics::controller(self.controller))
            .inc();
    }
}
