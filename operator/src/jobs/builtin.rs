//! The built-in Functions and Tasks ([`stash_core::jobs::builtin`]) written at start-up.
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
pub use stash_core::jobs::builtin::*;
use stash_core::names::FIELD_MANAGER;
use stash_crds::{Function, Task};

/// Create or update (server-side apply, forced) Functions and Tasks.
pub async fn apply(
    client: &Client,
    functions: &[Function],
    tasks: &[Task],
) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let fapi: Api<Function> = Api::all(client.clone());
    for f in functions {
        let mut f = f.clone();
        f.metadata.managed_fields = None;
        let name = f.metadata.name.clone().unwrap_or_default();
        let obj = serde_json::json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Function", "metadata": f.metadata, "spec": f.spec});
        fapi.patch(&name, &pp, &Patch::Apply(&obj)).await?;
    }
    let tapi: Api<Task> = Api::all(client.clone());
    for t in tasks {
        let name = t.metadata.name.clone().unwrap_or_default();
        let obj = serde_json::json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "Task", "metadata": t.metadata, "spec": t.spec});
        tapi.patch(&name, &pp, &Patch::Apply(&obj)).await?;
    }
    Ok(())
}

/// What the operator calls at start-up: the built-in Functions and Tasks with its image.
///
/// The writes pass through the operator's own validating webhook, which on a fresh install
/// has no Ready endpoint yet (`no endpoints available for service "stash-operator"`, 500) —
/// and a leader that exited then restarted every replica. A transient failure (5xx, 429, a
/// connection error) is retried with back-off until it goes through; only a refusal for good
/// (an invalid object, forbidden) ends it.
pub async fn ensure(client: &Client, image: &str) -> Result<(), kube::Error> {
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match apply(client, &functions(image), &tasks()).await {
            Ok(()) => return Ok(()),
            Err(kube::Error::Api(e)) if stash_machines::api_error_is_permanent(e.code) => {
                return Err(kube::Error::Api(e));
            }
            Err(e) => {
                tracing::info!(error = %e, retry_in = ?wait, "built-in Functions and Tasks not written yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}
