//! Repository controller (stash-api.md §3.1): finalizer `stash` on every live Repository; on
//! deletion with `wipeOut: true` the restic data under the bucket/prefix is deleted.
//!
//! S3 (and S3-compatible servers) are wiped with signed object-store requests
//! ([`super::wipe`]): the finalizer stays until the wipe succeeds (a failure is an event and a
//! retry). The other object stores are not wiped yet: the Repository gets a Warning event
//! `WipeOutNotSupported` naming the provider, its data is left in place, and the finalizer is
//! removed so the deletion is never blocked. (Local backends cannot ask for `wipeOut`: the
//! admission webhook rejects it, like upstream.)
use std::{sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        Controller,
        finalizer::{Event as Finalizer, finalizer},
        watcher,
    },
};
use stash_crds::{Repository, consts};
use stash_runtime::{Action, Reconcile, events::Severity};

use super::{Ctx, Error};

/// Event reason when a wipe-out was asked for but cannot be done.
pub const WIPE_OUT_NOT_SUPPORTED: &str = "WipeOutNotSupported";

/// What deleting `repo` means for its data: `None` when nothing is to be wiped or the provider
/// is wiped for real (S3), else the message of the Warning event (not supported yet).
pub fn wipe_out_note(repo: &Repository) -> Option<String> {
    if !repo.spec.wipe_out || repo.spec.backend.s3.is_some() {
        return None;
    }
    let provider = repo
        .spec
        .backend
        .provider()
        .map_or("unknown", |p| p.as_str());
    Some(format!(
        "wipeOut is not supported for {provider} yet: the restic data of Repository {} was left in place",
        repo.name_any()
    ))
}

struct Repositories(Arc<Ctx>);

impl Reconcile<Repository> for Repositories {
    type Error = Error;
    const NAME: &'static str = "repository";

    async fn reconcile(&self, repo: Arc<Repository>) -> Result<Action, Error> {
        let ctx = self.0.clone();
        let api = Api::<Repository>::namespaced(
            ctx.client.clone(),
            &repo.namespace().unwrap_or_default(),
        );
        finalizer(
            &api,
            consts::REPOSITORY_FINALIZER,
            repo,
            |event| async move {
                match event {
                    Finalizer::Apply(_) => Ok(Action::requeue(Duration::from_secs(600))),
                    Finalizer::Cleanup(repo) => {
                        if repo.spec.wipe_out && repo.spec.backend.s3.is_some() {
                            let reference = repo.object_ref(&());
                            return match wipe_s3(&ctx, &repo).await {
                                Ok(n) => {
                                    let note = format!(
                                        "deleted {n} objects of Repository {}",
                                        repo.name_any()
                                    );
                                    ctx.events
                                        .publish(&reference, Severity::Normal, "WipedOut", note)
                                        .await;
                                    Ok(Action::await_change())
                                }
                                Err(e) => {
                                    ctx.events
                                        .publish(
                                            &reference,
                                            Severity::Warning,
                                            "WipeOutFailed",
                                            e.clone(),
                                        )
                                        .await;
                                    Err(Error::Config(e))
                                }
                            };
                        }
                        if let Some(note) = wipe_out_note(&repo) {
                            tracing::warn!(repository = %repo.name_any(), "{note}");
                            ctx.events
                                .publish(
                                    &repo.object_ref(&()),
                                    Severity::Warning,
                                    WIPE_OUT_NOT_SUPPORTED,
                                    note,
                                )
                                .await;
                        }
                        Ok(Action::await_change())
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

/// Delete the restic data of an S3 Repository.
async fn wipe_s3(ctx: &Ctx, repo: &Repository) -> Result<usize, String> {
    let s3 = repo.spec.backend.s3.clone().unwrap_or_default();
    let ns = repo.namespace().unwrap_or_default();
    let secret_name = repo
        .spec
        .backend
        .storage_secret_name
        .clone()
        .unwrap_or_default();
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .get(&secret_name)
        .await
        .map_err(|e| format!("storage Secret {secret_name}: {e}"))?;
    let data = secret.data.unwrap_or_default();
    let key = |k: &str| {
        data.get(k)
            .map(|v| String::from_utf8_lossy(&v.0).trim().to_string())
    };
    let endpoint = s3
        .endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "s3.amazonaws.com".into());
    let (scheme, authority) = match endpoint.split_once("://") {
        Some((scheme, rest)) => (scheme.to_string(), rest.trim_end_matches('/').to_string()),
        None => (
            "https".to_string(),
            endpoint.trim_end_matches('/').to_string(),
        ),
    };
    let target = super::wipe::S3 {
        scheme,
        authority,
        bucket: s3.bucket.clone().unwrap_or_default(),
        prefix: s3
            .prefix
            .clone()
            .unwrap_or_default()
            .trim_matches('/')
            .to_string(),
        access_key: key("AWS_ACCESS_KEY_ID").unwrap_or_default(),
        secret_key: key("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        region: key("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
    };
    target.wipe().await
}

/// Run the Repository controller.
pub async fn run(ctx: Arc<Ctx>) {
    let api = Api::<Repository>::all(ctx.client.clone());
    let controller = Controller::new(api, watcher::Config::default());
    stash_runtime::drive(controller, Repositories(ctx.clone()), ctx.metrics.clone()).await;
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
        let rest = serde_json::json!({"backend": {"rest": {"url": "http://x/"}}, "wipeOut": true});
        assert!(
            wipe_out_note(&repo(rest))
                .expect("note")
                .contains("for rest")
        );
    }
}
