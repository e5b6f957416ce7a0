//! Repository controller (stash-api.md §3.1): finalizer `stash` on every live Repository; on
//! deletion with `wipeOut: true` the restic data under the bucket/prefix is deleted.
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
use stash_runtime::{Action, Reconcile, events::Severity, status::StatusWriter};

use super::{Ctx, Error};

/// Event reason when a wipe-out was asked for but cannot be done.
pub const WIPE_OUT_NOT_SUPPORTED: &str = "WipeOutNotSupported";
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

/// When the `WipeOut` condition of each Repository (by uid) was last written. A status write
/// is a change the controller watches, so it runs the reconcile again at once: rewriting the
/// condition on every failed attempt (its message carries timings) would retry the wipe in a
/// tight loop instead of every [`stash_runtime::Reconcile::error_policy`] interval.
#[derive(Default)]
pub(crate) struct ConditionWrites(
    std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
);

/// How often a still-failing wipe-out refreshes the condition's message.
const CONDITION_REFRESH: Duration = Duration::from_secs(60);

impl ConditionWrites {
    /// Should the condition be written now (it is new, or the last write is old enough)?
    /// Records the write when it says yes.
    fn due(&self, uid: &str, already_failing: bool) -> bool {
        let mut m = self.0.lock().expect("condition writes");
        let now = std::time::Instant::now();
        m.retain(|_, t| now.duration_since(*t) < 10 * CONDITION_REFRESH);
        let due = !already_failing
            || m.get(uid)
                .is_none_or(|t| now.duration_since(*t) >= CONDITION_REFRESH);
        if due {
            m.insert(uid.to_string(), now);
        }
        due
    }
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
        finalizer(
            &api,
            consts::REPOSITORY_FINALIZER,
            repo,
            |event| {
                let api = status_api.clone();
                async move {
                match event {
                    Finalizer::Apply(_) => Ok(Action::requeue(Duration::from_secs(600))),
                    Finalizer::Cleanup(repo) => {
                        let reference = repo.object_ref(&());
                        if repo.spec.wipe_out && wiped_for_real(&repo) {
                            if wipe_out_abandoned(&repo) {
                                let note = format!(
                                    "wipeOut abandoned ({ABANDON_WIPE_OUT_ANNOTATION}): the restic data of Repository {} was left in place",
                                    repo.name_any()
                                );
                                ctx.events
                                    .publish(&reference, Severity::Warning, "WipeOutAbandoned", note)
                                    .await;
                                return Ok(Action::await_change());
                            }
                            return match wipe(&ctx, &repo).await {
                                Ok(report) => {
                                    let note = format!(
                                        "deleted {} restic objects of Repository {} from {}; {} other objects left in place",
                                        report.1.deleted,
                                        repo.name_any(),
                                        report.0,
                                        report.1.kept
                                    );
                                    tracing::info!(repository = %repo.name_any(), "{note}");
                                    ctx.events
                                        .publish(&reference, Severity::Normal, "WipedOut", note)
                                        .await;
                                    Ok(Action::await_change())
                                }
                                Err(WipeError::SecretGoneWithNamespace(e)) => {
                                    let note = format!(
                                        "{e}, and namespace {} is being deleted: the wipe-out cannot be done, the restic data of Repository {} was left in place and the finalizer is removed",
                                        repo.namespace().unwrap_or_default(),
                                        repo.name_any()
                                    );
                                    tracing::warn!(repository = %repo.name_any(), "wipeOut given up: {note}");
                                    // Events may be refused in a terminating namespace; the log
                                    // line above is the record then.
                                    ctx.events
                                        .publish(&reference, Severity::Warning, "WipeOutAbandoned", note)
                                        .await;
                                    Ok(Action::await_change())
                                }
                                Err(WipeError::Failed(e)) => {
                                    let note = format!(
                                        "{e} (the finalizer stays and the wipe is retried; annotate the Repository {ABANDON_WIPE_OUT_ANNOTATION}=true to delete it without wiping)"
                                    );
                                    tracing::warn!(repository = %repo.name_any(), "wipeOut failed: {note}");
                                    ctx.events
                                        .publish(&reference, Severity::Warning, "WipeOutFailed", note.clone())
                                        .await;
                                    write_wipe_out_condition(&ctx, writes, &api, &repo, note).await;
                                    Err(Error::Config(e))
                                }
                            };
                        }
                        if let Some(note) = wipe_out_note(&repo) {
                            tracing::warn!(repository = %repo.name_any(), "{note}");
                            ctx.events
                                .publish(
                                    &reference,
                                    Severity::Warning,
                                    WIPE_OUT_NOT_SUPPORTED,
                                    note,
                                )
                                .await;
                        }
                        Ok(Action::await_change())
                    }
                }
                }
            },
        )
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e)
            | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    }
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
    let current = repo.status.clone();
    let already_failing = current.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == consts_wipe::TYPE && c.reason == consts_wipe::FAILED)
    });
    if !writes.due(&repo.uid().unwrap_or_default(), already_failing) {
        return;
    }
    let mut desired = current.clone().unwrap_or_default();
    let desired_condition =
        wipe_out_failed_condition(&desired.conditions, message, repo.metadata.generation);
    desired.conditions = super::conditions::replace(&desired.conditions, desired_condition);
    let writer = StatusWriter::new(ctx.metrics.clone(), "repository");
    if let Err(e) = writer.write(api, repo, current.as_ref(), &desired).await {
        tracing::debug!(repository = %repo.name_any(), "WipeOut condition not written: {e}");
    }
}

mod consts_wipe {
    pub const TYPE: &str = stash_crds::repository::WIPE_OUT_CONDITION;
    pub const FAILED: &str = "WipeOutFailed";
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
        w.0.lock()
            .unwrap()
            .insert("a".into(), std::time::Instant::now() - CONDITION_REFRESH);
        assert!(
            w.due("a", true),
            "after the interval the message is refreshed"
        );
    }
}
