//! Repository controller (stash-api.md §3.1): finalizer `stash` on every live Repository; on
//! deletion with `wipeOut: true` the restic data under the bucket/prefix should be deleted.
//!
//! Wiping is not implemented yet for any provider: deleting objects needs a client of each
//! object store (upstream used the stow library), and restic has no command that deletes a
//! repository. Until it is, a Repository deleted with `wipeOut: true` gets a Warning event
//! `WipeOutNotSupported` naming the provider, its data is left in place, and the finalizer is
//! removed so the deletion is never blocked.
use std::{sync::Arc, time::Duration};

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

/// What deleting `repo` means for its data: `None` when nothing is to be wiped, else the
/// message of the Warning event (wipe-out is not supported for the provider yet).
pub fn wipe_out_note(repo: &Repository) -> Option<String> {
    if !repo.spec.wipe_out {
        return None;
    }
    let provider = repo.spec.backend.provider().map_or("unknown", |p| p.as_str());
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
        let api = Api::<Repository>::namespaced(ctx.client.clone(), &repo.namespace().unwrap_or_default());
        finalizer(&api, consts::REPOSITORY_FINALIZER, repo, |event| async move {
            match event {
                Finalizer::Apply(_) => Ok(Action::requeue(Duration::from_secs(600))),
                Finalizer::Cleanup(repo) => {
                    if let Some(note) = wipe_out_note(&repo) {
                        tracing::warn!(repository = %repo.name_any(), "{note}");
                        ctx.events.publish(&repo.object_ref(&()), Severity::Warning, WIPE_OUT_NOT_SUPPORTED, note).await;
                    }
                    Ok(Action::await_change())
                }
            }
        })
        .await
        .map_err(|e| match e {
            kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
            other => Error::Finalizer(other.to_string()),
        })
    }
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
        assert_eq!(wipe_out_note(&repo(serde_json::json!({"backend": s3.clone()}))), None);
        let note = wipe_out_note(&repo(serde_json::json!({"backend": s3, "wipeOut": true}))).expect("note");
        assert!(note.contains("wipeOut is not supported for s3 yet"), "{note}");
        let rest = serde_json::json!({"backend": {"rest": {"url": "http://x/"}}, "wipeOut": true});
        assert!(wipe_out_note(&repo(rest)).expect("note").contains("for rest"));
    }
}
