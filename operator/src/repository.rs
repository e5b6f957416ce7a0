//! Repository controller (stash-api.md §3.1): finalizer `stash` on every live Repository; on
//! deletion with `wipeOut: true` the restic data under the bucket/prefix is deleted. Every
//! step of the deletion is decided by [`stash_machines::repository`] (its lifecycle, table
//! and model test); this module observes, wipes, and carries the decision out.
//!
//! S3 (and S3-compatible servers), GCS and Azure are wiped through their object stores
//! ([`super::wipe`]): only restic's own objects, after the prefix is verified to hold a restic
//! repository. The finalizer stays until the wipe succeeds; a failure is a Warning event
//! `WipeOutFailed`, condition `WipeOut` (status `False`, reason `WipeOutFailed`, the error) in
//! `status.conditions`, and a retry every 5 s. A storage Secret that is gone while the
//! namespace is being deleted can never come back: the wipe-out is given up (event
//! `WipeOutAbandoned`, the data stays, the finalizer goes) rather than keeping the namespace
//! Terminating forever. Annotating the Repository with
//! [`ABANDON_WIPE_OUT_ANNOTATION`]` = "true"` lets the deletion finish without wiping (the data
//! stays; event `WipeOutAbandoned`). Swift, B2 and REST servers are not wiped: the Repository
//! gets a Warning event `WipeOutNotSupported` naming the provider, its data is left in place,
//! and the finalizer is removed so the deletion is never blocked. (Local backends cannot ask for
//! `wipeOut`: the admission webhook rejects it, like upstream.)
use std::{sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Namespace, Secret},
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller,
        finalizer::{Event as Finalizer, finalizer},
    },
};
use stash_crds::{Repository, consts};
use stash_machines::repository::{self, Phase, Step, WipeOutcome};
use stash_runtime::{Action, Reconcile, events::Severity, status::StatusWriter};

use super::{Ctx, Error};
use stash_core::names::FIELD_MANAGER;

/// Event reason when a wipe-out was asked for but cannot be done.
pub const WIPE_OUT_NOT_SUPPORTED: &str = repository::reasons::WIPE_OUT_NOT_SUPPORTED;
/// Annotation that lets a Repository whose wipe-out keeps failing be deleted without it.
pub const ABANDON_WIPE_OUT_ANNOTATION: &str = "stash.appscode.com/abandon-wipe-out";

/// Is the Repository's provider wiped through its object store?
fn wiped_for_real(repo: &Repository) -> bool {
    let b = &repo.spec.backend;
    b.s3.is_some() || b.gcs.is_some() || b.azure.is_some()
}

/// What deleting `repo` means for its data: `None` when nothing is to be wiped or the provider
/// is wiped for real (S3, GCS, Azure), else the message of the Warning event (not supported).
pub fn wipe_out_note(repo: &Repository) -> Option<String> {
    if !repo.spec.wipe_out || wiped_for_real(repo) {
        return None;
    }
    let provider = repo
        .spec
        .backend
        .provider()
        .map_or("unknown", |p| p.as_str());
    Some(format!(
        "wipeOut is not supported for {provider}: the restic data of Repository {} was left in place",
        repo.name_any()
    ))
}

/// Has the user asked to delete the Repository without wiping its data?
pub fn wipe_out_abandoned(repo: &Repository) -> bool {
    repo.annotations()
        .get(ABANDON_WIPE_OUT_ANNOTATION)
        .is_some_and(|v| v.trim() == "true")
}

pub(crate) struct Repositories(pub(crate) Arc<Ctx>, pub(crate) ConditionWrites);

/// When the `WipeOut` condition of each Repository (by uid) was last written by this process:
/// the memory [`repository::condition_due`] decides from (a status write is a change the
/// controller watches; see [`repository::CONDITION_REFRESH`]).
#[derive(Default)]
pub(crate) struct ConditionWrites(
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
);

impl ConditionWrites {
    /// Should the condition be written now? Records the write when the machine says yes.
    fn due(&self, uid: &str, already_failing: bool) -> bool {
        let mut m = self.0.lock().expect("condition writes");
        let now = std::time::Instant::now();
        m.retain(|_, t| now.duration_since(*t) < 10 * repository::CONDITION_REFRESH);
        let since = m.get(uid).map(|t| now.duration_since(*t));
        let due = repository::condition_due(already_failing, since);
        if due {
            m.insert(uid.to_string(), now);
        }
        due
    }
}

/// What the deletion machine observes of `repo`.
pub fn observe(repo: &Repository) -> repository::Observation {
    repository::Observation {
        deleting: repo.metadata.deletion_timestamp.is_some(),
        wipe_out: repo.spec.wipe_out,
        wipeable: wiped_for_real(repo),
        abandoned: wipe_out_abandoned(repo),
        failing: wipe_out_failing(repo),
    }
}

/// Does the `WipeOut` condition say an earlier attempt failed?
fn wipe_out_failing(repo: &Repository) -> bool {
    repo.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == consts_wipe::TYPE && c.reason == consts_wipe::FAILED)
    })
}

impl Reconcile<Repository> for Repositories {
    type Error = Error;
    const NAME: &'static str = "repository";

    async fn reconcile(&self, repo: Arc<Repository>) -> Result<Action, Error> {
        let ctx = self.0.clone();
        let writes = &self.1;
        let api = Api::<Repository>::namespaced(
            ctx.client.clone(),
            &repo.namespace().unwrap_or_default(),
        );
        let status_api = api.clone();
        finalizer(&api, consts::REPOSITORY_FINALIZER, repo, |event| {
            let api = status_api.clone();
            let ctx = ctx.clone();
            async move {
                match event {
                    // Live: the machine keeps the finalizer (the helper has added it).
                    Finalizer::Apply(_) => Ok(Action::requeue(Duration::from_secs(600))),
                    Finalizer::Cleanup(repo) => cleanup(&ctx, writes, &api, &repo).await,
                }
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    }
}

/// A deleted Repository: ask the machine, wipe when it says so, then carry out its step
/// (`Ok`: the finalizer helper removes the finalizer; `Err`: it stays and the error policy
/// retries).
async fn cleanup(
    ctx: &Ctx,
    writes: &ConditionWrites,
    api: &Api<Repository>,
    repo: &Repository,
) -> Result<Action, Error> {
    let name = repo.name_any();
    let mut decision = repository::decide(&observe(repo));
    // What the event says: the machine names the reason, this side the details.
    let mut message = match decision.phase {
        Phase::Unsupported => wipe_out_note(repo).unwrap_or_default(),
        Phase::Abandoned => format!(
            "wipeOut abandoned ({ABANDON_WIPE_OUT_ANNOTATION}): the restic data of Repository {name} was left in place"
        ),
        _ => String::new(),
    };
    // A failed attempt's own error: what the reconcile returns (the metrics and logs' error).
    let mut failure = None;
    if decision.step == Step::Wipe {
        let outcome = match wipe(ctx, repo).await {
            Ok((location, report)) => {
                message = format!(
                    "deleted {} restic objects of Repository {name} from {location}; {} other objects left in place",
                    report.deleted, report.kept
                );
                WipeOutcome::Wiped
            }
            Err(WipeError::SecretGoneWithNamespace(e)) => {
                message = format!(
                    "{e}, and namespace {} is being deleted: the wipe-out cannot be done, the restic data of Repository {name} was left in place and the finalizer is removed",
                    repo.namespace().unwrap_or_default()
                );
                WipeOutcome::SecretGoneWithNamespace
            }
            Err(WipeError::Failed(e)) => {
                message = format!(
                    "{e} (the finalizer stays and the wipe is retried; annotate the Repository {ABANDON_WIPE_OUT_ANNOTATION}=true to delete it without wiping)"
                );
                failure = Some(e);
                WipeOutcome::Failed
            }
        };
        decision = repository::after_wipe(decision.phase, outcome);
    }
    if let Some(r) = decision.rejection {
        // A bug: the finalizer stays, nothing else is done.
        return Err(Error::Config(format!(
            "Repository {name}: the deletion lifecycle refused a step: {r:?}"
        )));
    }
    match decision.step {
        Step::Release { notice } => {
            if let Some(n) = notice {
                announce(ctx, repo, n, message).await;
            }
            Ok(Action::await_change())
        }
        Step::Retry { notice } => {
            announce(ctx, repo, notice, message.clone()).await;
            write_wipe_out_condition(ctx, writes, api, repo, message.clone()).await;
            Err(Error::Config(failure.unwrap_or(message)))
        }
        // Not a step of a deleted Repository: keep the finalizer and look again later.
        Step::Keep | Step::Wipe => Ok(Action::requeue(Duration::from_secs(60))),
    }
}

/// Publish the machine's notice as an Event on `repo`, and log it (events may be refused in a
/// terminating namespace; the log line is the record then).
async fn announce(ctx: &Ctx, repo: &Repository, notice: repository::Notice, message: String) {
    let name = repo.name_any();
    let severity = if notice.warning {
        tracing::warn!(repository = %name, reason = notice.reason, "{message}");
        Severity::Warning
    } else {
        tracing::info!(repository = %name, reason = notice.reason, "{message}");
        Severity::Normal
    };
    ctx.events
        .publish(&repo.object_ref(&()), severity, notice.reason, message)
        .await;
}

/// Record a failing wipe-out in the Repository's status: condition `WipeOut`, status `False`,
/// reason `WipeOutFailed`, the error as message (its transition time kept while it stays
/// failing). Best effort: the event and the retry do not depend on it.
async fn write_wipe_out_condition(
    ctx: &Ctx,
    writes: &ConditionWrites,
    api: &Api<Repository>,
    repo: &Repository,
    message: String,
) {
    if !writes.due(&repo.uid().unwrap_or_default(), wipe_out_failing(repo)) {
        return;
    }
    // The operator owns `status.conditions` (server-side apply, its field manager); the
    // agents own the backup figures.
    let current = repo
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let condition = wipe_out_failed_condition(&current, message, repo.metadata.generation);
    let desired = super::conditions::replace(&current, condition.clone());
    let writer = StatusWriter::new(ctx.metrics.clone(), "repository");
    // Only its own entry: `conditions` is a list-map keyed by `type`, and `SnapshotDeletion`
    // is the Snapshot API's.
    let owned = serde_json::json!({ "conditions": [condition] });
    let written = writer
        .apply(api, repo, FIELD_MANAGER, current == desired, owned)
        .await;
    if let Err(e) = written {
        tracing::debug!(repository = %repo.name_any(), "WipeOut condition not written: {e}");
    }
}

mod consts_wipe {
    pub const TYPE: &str = stash_crds::repository::WIPE_OUT_CONDITION;
    pub const FAILED: &str = stash_machines::repository::reasons::WIPE_OUT_FAILED;
}

/// The `WipeOut` condition for a failed attempt, given the current conditions.
pub fn wipe_out_failed_condition(
    current: &[Condition],
    message: String,
    generation: Option<i64>,
) -> Condition {
    super::conditions::condition(
        current,
        consts_wipe::TYPE,
        false,
        consts_wipe::FAILED,
        message,
        generation,
    )
}

/// Why a wipe-out did not happen.
#[derive(Debug)]
enum WipeError {
    /// The storage Secret is gone and so is (being) the namespace: it will never come back.
    SecretGoneWithNamespace(String),
    /// Anything else: retried.
    Failed(String),
}

impl From<String> for WipeError {
    fn from(e: String) -> Self {
        WipeError::Failed(e)
    }
}

/// Is namespace `ns` being deleted (or gone)?
async fn namespace_terminating(ctx: &Ctx, ns: &str) -> bool {
    match Api::<Namespace>::all(ctx.client.clone()).get_opt(ns).await {
        Ok(Some(n)) => n.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Delete the restic data of a Repository from its object store; where, and what was done.
async fn wipe(ctx: &Ctx, repo: &Repository) -> Result<(String, super::wipe::Report), WipeError> {
    let ns = repo.namespace().unwrap_or_default();
    let secret_name = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .unwrap_or_default();
    let secret = match Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&secret_name)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            let e = format!("storage Secret {secret_name} not found");
            return Err(if namespace_terminating(ctx, &ns).await {
                WipeError::SecretGoneWithNamespace(e)
            } else {
                WipeError::Failed(e)
            });
        }
        Err(e) => {
            return Err(WipeError::Failed(format!(
                "storage Secret {secret_name}: {e}"
            )));
        }
    };
    let data: super::wipe::SecretData = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).trim().to_string()))
        .collect();
    let target = super::wipe::target(&repo.spec.backend, &data)
        .await?
        .ok_or_else(|| "the backend has no object store to wipe".to_string())?;
    // Backups recorded: the repository must be found where the wipe looks.
    let expect_data = repo.status.as_ref().is_some_and(|s| {
        s.first_backup_time.is_some()
            || s.last_backup_time.is_some()
            || s.snapshot_count.is_some_and(|n| n > 0)
    });
    let report = target.wipe(expect_data).await?;
    Ok((target.describe.clone(), report))
}

/// Run the Repository controller.
/// Run the Repository controller on the shared Repository watch (subscribed now, driven when
/// the returned future runs).
pub fn run(
    ctx: Arc<Ctx>,
    feeds: &mut stash_index::stores::Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let trigger = feeds.repositories.applies();
    async move {
        let controller = Controller::for_shared_stream(trigger, ctx.stores.repositories.clone());
        stash_runtime::drive(
            controller,
            Repositories(ctx.clone(), ConditionWrites::default()),
            ctx.metrics.clone(),
            ctx.events.clone(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(spec: serde_json::Value) -> Repository {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "r", "namespace": "n"}, "spec": spec
        }))
        .expect("repository")
    }

    #[test]
    fn only_a_wipe_out_is_reported_and_names_the_provider() {
        let s3 = serde_json::json!({"s3": {"endpoint": "http://127.0.0.1:9000", "bucket": "b", "prefix": "p"}});
        assert_eq!(
            wipe_out_note(&repo(serde_json::json!({"backend": s3.clone()}))),
            None
        );
        assert_eq!(
            wipe_out_note(&repo(serde_json::json!({"backend": s3, "wipeOut": true}))),
            None,
            "S3 is wiped for real"
        );
        let gcs = serde_json::json!({"backend": {"gcs": {"bucket": "b"}}, "wipeOut": true});
        assert_eq!(wipe_out_note(&repo(gcs)), None, "GCS is wiped for real");
        let az = serde_json::json!({"backend": {"azure": {"container": "c"}}, "wipeOut": true});
        assert_eq!(wipe_out_note(&repo(az)), None, "Azure is wiped for real");
        let rest = serde_json::json!({"backend": {"rest": {"url": "http://x/"}}, "wipeOut": true});
        assert!(
            wipe_out_note(&repo(rest))
                .expect("note")
                .contains("for rest")
        );
    }

    #[test]
    fn the_wipe_out_condition_keeps_its_transition_time_while_failing() {
        let first = wipe_out_failed_condition(&[], "boom".into(), Some(3));
        assert_eq!(
            (
                first.type_.as_str(),
                first.status.as_str(),
                first.reason.as_str()
            ),
            ("WipeOut", "False", "WipeOutFailed")
        );
        assert_eq!(first.observed_generation, Some(3));
        let mut old = first.clone();
        old.last_transition_time =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::UNIX_EPOCH);
        let again = wipe_out_failed_condition(&[old.clone()], "boom again".into(), Some(3));
        assert_eq!(again.last_transition_time, old.last_transition_time);
        assert_eq!(again.message, "boom again");
    }

    #[test]
    fn a_failing_condition_is_rewritten_at_most_once_per_refresh_interval() {
        let w = ConditionWrites::default();
        assert!(w.due("a", false), "a new condition is written");
        assert!(!w.due("a", true), "not again right after");
        assert!(
            w.due("a", false),
            "a condition that is not there yet always is"
        );
        assert!(w.due("b", true), "another Repository has its own interval");
        w.0.lock().unwrap().insert(
            "a".into(),
            std::time::Instant::now() - repository::CONDITION_REFRESH,
        );
        assert!(
            w.due("a", true),
            "after the interval the message is refreshed"
        );
    }
}
