//! What follows a failed BackupSession (`retryConfig`): the decisions are
//! [`stash_machines::backup_session::retry`]'s; this carries them out on the failed session
//! (its `nextRetry` and `retried`, field manager [`FIELD_MANAGER`]) and creates the session
//! that follows it.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams, PostParams},
    core::ObjectMeta,
};
use stash_crds::{BackupConfiguration, BackupSession, backup_session::BackupSessionSpec, consts};
use stash_machines::{
    EventKind, EventRecord,
    backup_session::{Phase, retry},
    reasons,
};

use super::{Ctx, Error};

/// The field manager of a session's `status.nextRetry` and `status.retried`.
pub const FIELD_MANAGER: &str = "stash-rs-retry";

/// The annotation naming the failed session a retry follows.
pub const RETRY_OF: &str = "stash.appscode.com/retry-of";

/// Take the next retry step for the finished session `bs`; when to look again, if at all.
pub async fn follow(
    ctx: &Ctx,
    bs: &BackupSession,
    bc: Option<&BackupConfiguration>,
) -> Result<Option<Duration>, Error> {
    let status = bs.status.as_ref();
    let retry_config = bc.and_then(|b| b.spec.retry_config.as_ref());
    let now = jiff::Timestamp::now();
    let facts = retry::Facts {
        failed: status.and_then(|s| s.phase) == Some(Phase::Failed),
        retry_left: bs.spec.retry_left(),
        retried: status.and_then(|s| s.retried),
        next_retry: status
            .and_then(|s| s.next_retry.as_ref())
            .map(|t| u64::try_from(t.0.as_second()).unwrap_or(0)),
        config_usable: bc.is_some_and(|b| !b.spec.paused),
        // A delay that does not parse (admission refuses it) counts as none.
        delay: stash_crds::duration::time_out(retry_config.and_then(|r| r.delay.as_deref()))
            .ok()
            .flatten()
            .unwrap_or_default(),
        now: u64::try_from(now.as_second()).unwrap_or(0),
    };
    let ns = bs.namespace().unwrap_or_default();
    let api = Api::<BackupSession>::namespaced(ctx.client.clone(), &ns);
    match retry::step(&facts) {
        retry::Step::Nothing => Ok(None),
        retry::Step::Wait(d) => Ok(Some(d)),
        retry::Step::Schedule { at } => {
            let at_time =
                jiff::Timestamp::from_second(i64::try_from(at).unwrap_or(i64::MAX)).unwrap_or(now);
            apply(&api, bs, serde_json::json!({ "nextRetry": Time(at_time) })).await?;
            let left = facts.retry_left;
            emit(
                ctx,
                bs,
                EventKind::Normal,
                reasons::BACKUP_SESSION_RETRY_SCHEDULED,
                format!(
                    "a new BackupSession follows this failed one in {}s ({left} retr{} left)",
                    facts.delay.as_secs(),
                    if left == 1 { "y" } else { "ies" }
                ),
            )
            .await;
            Ok(Some(facts.delay))
        }
        retry::Step::Create { retry_left } => {
            let next = next_session(bs, retry_left);
            let name = next.name_any();
            match api.create(&PostParams::default(), &next).await {
                Ok(_) => {}
                // Created before a crash, or before a failed status write: the same session.
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            // One apply owns both fields: one that leaves `nextRetry` out would remove it.
            let next_retry = status.and_then(|s| s.next_retry.clone());
            apply(
                &api,
                bs,
                serde_json::json!({ "nextRetry": next_retry, "retried": true }),
            )
            .await?;
            emit(
                ctx,
                bs,
                EventKind::Normal,
                reasons::BACKUP_SESSION_RETRIED,
                format!("BackupSession {name} follows this failed one ({retry_left} retries left after it)"),
            )
            .await;
            Ok(None)
        }
        retry::Step::GiveUp(why) => {
            let mut owned = serde_json::json!({ "retried": false });
            if let Some(t) = status.and_then(|s| s.next_retry.clone()) {
                owned["nextRetry"] = serde_json::json!(t);
            }
            apply(&api, bs, owned).await?;
            emit(
                ctx,
                bs,
                EventKind::Warning,
                reasons::BACKUP_SESSION_NOT_RETRIED,
                why,
            )
            .await;
            Ok(None)
        }
    }
}

/// The session that follows the failed `bs`: the same configuration, labels and owner, with
/// one retry less.
pub fn next_session(bs: &BackupSession, retry_left: u32) -> BackupSession {
    let mut annotations = std::collections::BTreeMap::new();
    annotations.insert(RETRY_OF.to_string(), bs.name_any());
    let mut labels = bs.labels().clone();
    labels.insert(
        consts::BACKUP_CONFIGURATION_LABEL.into(),
        bs.spec.configuration_name(),
    );
    BackupSession {
        metadata: ObjectMeta {
            name: Some(retry::next_name(&bs.name_any())),
            namespace: bs.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: bs.meta().owner_references.clone(),
            ..Default::default()
        },
        spec: BackupSessionSpec {
            backup_configuration: Some(k8s_openapi::api::core::v1::LocalObjectReference {
                name: bs.spec.configuration_name(),
            }),
            invoker: None,
            retry_left: Some(i32::try_from(retry_left).unwrap_or(i32::MAX)),
        },
        status: None,
    }
}

async fn apply(
    api: &Api<BackupSession>,
    bs: &BackupSession,
    status: serde_json::Value,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": BackupSession::api_version(&()),
        "kind": BackupSession::kind(&()),
        "metadata": { "name": bs.name_any() },
        "status": status,
    });
    api.patch_status(
        &bs.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn emit(
    ctx: &Ctx,
    bs: &BackupSession,
    kind: EventKind,
    reason: &'static str,
    message: String,
) {
    let reference = bs.object_ref(&());
    ctx.events
        .publish_record(
            &reference,
            EventRecord {
                kind,
                reason,
                message,
            },
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_runs_the_same_configuration_with_one_retry_less() {
        let mut failed = BackupSession::new(
            "app-backup-1700",
            BackupSessionSpec {
                backup_configuration: None,
                invoker: Some(stash_crds::backup_session::Invoker {
                    api_group: None,
                    kind: "BackupConfiguration".into(),
                    name: "app-backup".into(),
                }),
                retry_left: Some(2),
            },
        );
        failed.metadata.namespace = Some("demo".into());
        let next = next_session(&failed, 1);
        assert_eq!(next.name_any(), "app-backup-1700-retry-1");
        assert_eq!(next.spec.configuration_name(), "app-backup");
        assert_eq!(next.spec.retry_left, Some(1));
        assert_eq!(
            next.labels()
                .get(consts::BACKUP_CONFIGURATION_LABEL)
                .map(String::as_str),
            Some("app-backup")
        );
        assert_eq!(
            next.annotations().get(RETRY_OF).map(String::as_str),
            Some("app-backup-1700")
        );
    }
}
