//! A scripted API server for reconcile tests (the controller-rs `fixtures.rs` style, written
//! for our controllers): between the pure tests and the e2e tests.
//!
//! [`test_ctx`] returns a [`Ctx`] whose client talks to the scripted server of
//! [`stash_testenv::scripted`] (shared with the agents' tests), and the [`ApiServerVerifier`]
//! on the other end. A test lists the requests it expects, in order ([`Exchange`]: method,
//! path with query, optional assertions on the JSON body) with the response each gets, runs
//! the reconcile, then calls [`ApiServer::verify`]. Nothing is answered unless scripted: a LIST
//! the controller should not issue (it reads a store) fails the test by itself, and so does an
//! Event nobody scripted ([`event`]). Requests that may come at any point, such as the watch a
//! whole controller runs beside its reconciles (`tests_sessions.rs`), are listed apart
//! ([`ApiServerVerifier::run_with_anytime`]).
//!
//! What reconciles read from the shared stores ([`stash_index::stores`]) is not asked of the server:
//! a test puts it in the stores ([`test_ctx_with`] and a [`Seed`]).
use std::sync::Arc;

use serde_json::{Value, json};
use stash_machines::{Policy, backup_session::OverlapPolicy};
use stash_runtime::{Metrics, events::Events};
use stash_testenv::scripted;

use super::{
    Ctx,
    stores::{self, Feeds},
};
use stash_core::inject::InjectConfig;

mod backup_configuration;
mod default_backup;
mod history;
mod repository;
#[path = "tests_sessions.rs"]
mod tests_sessions;
mod workload;

/// The image the test context injects.
pub(crate) const IMAGE: &str = "stash-rs/stash:test";

/// The scripted server (shared with the agents' tests).
pub(crate) use stash_testenv::scripted::{
    ApiServer, ApiServerVerifier, Exchange, expect, failure, get_not_found,
};

/// Server-side apply of `name` at `collection` (a namespaced collection path) by the
/// operator's field manager, forced; the object is echoed back.
pub(crate) fn apply(collection: &str, name: &str) -> Exchange {
    scripted::apply_at(&format!("{collection}/{name}"), "stash-operator")
}

/// The Event `reason` (type `Normal` or `Warning`) about an object of namespace `ns`, POSTed
/// by the operator's recorder; `note` gets the event's note. Answered `201` with the event.
pub(crate) fn event(
    ns: &str,
    type_: &'static str,
    reason: &'static str,
    note: impl Fn(&str) + Send + 'static,
) -> Exchange {
    scripted::event_by("stash-operator", ns, type_, reason, note)
}

/// What the test context's shared stores hold, as if their watches had listed it (JSON
/// objects of each kind).
#[derive(Default)]
pub(crate) struct Seed {
    /// BackupConfigurations.
    pub(crate) configurations: Vec<Value>,
    /// BackupSessions.
    pub(crate) sessions: Vec<Value>,
    /// RestoreSessions.
    pub(crate) restores: Vec<Value>,
    /// Repositories.
    pub(crate) repositories: Vec<Value>,
    /// stash-rs's Jobs.
    pub(crate) jobs: Vec<Value>,
    /// Namespaces.
    pub(crate) namespaces: Vec<Value>,
    /// stash-rs's Roles.
    pub(crate) roles: Vec<Value>,
}

/// A context for the controllers whose client talks to a scripted API server; image
/// [`IMAGE`], no pushgateway, default policy, history limit 5, every shared store empty (and
/// ready).
pub(crate) fn test_ctx() -> (Arc<Ctx>, ApiServerVerifier) {
    test_ctx_with(Seed::default())
}

/// [`test_ctx`] with its shared stores holding `seed`.
pub(crate) fn test_ctx_with(seed: Seed) -> (Arc<Ctx>, ApiServerVerifier) {
    let (ctx, server, _) = test_ctx_fed(seed);
    (ctx, server)
}

/// [`test_ctx_with`], and the stores' feeds, to subscribe to and run a watch of (against the
/// scripted server).
pub(crate) fn test_ctx_fed(seed: Seed) -> (Arc<Ctx>, ApiServerVerifier, Feeds) {
    fn objects<K: serde::de::DeserializeOwned>(values: Vec<Value>) -> Vec<K> {
        values
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("a seeded object"))
            .collect()
    }
    let (client, server) = scripted::client();
    let (stores, mut feeds) = stores::new();
    feeds.configurations.seed(objects(seed.configurations));
    feeds.sessions.seed(objects(seed.sessions));
    feeds.restores.seed(objects(seed.restores));
    feeds.repositories.seed(objects(seed.repositories));
    feeds.jobs.seed(objects(seed.jobs));
    feeds.namespaces.seed(objects(seed.namespaces));
    feeds.roles.seed(objects(seed.roles));
    let ctx = Ctx {
        client: client.clone(),
        inject: InjectConfig {
            image: IMAGE.into(),
            pushgateway_url: String::new(),
        },
        metrics: Metrics::default(),
        events: Events::new(client, "stash-operator"),
        policy: Policy::default(),
        overlap: OverlapPolicy::Skip,
        backup_history_limit: 5,
        stores,
    };
    (Arc::new(ctx), server, feeds)
}

/// BackupConfiguration `bc` of namespace `n` (uid `uid-bc`, finalizer `stash.appscode.com`), every 5
/// minutes, Repository `repo`, targeting Deployment `app`; `spec` is merged over that.
pub(crate) fn backup_configuration(spec: Value) -> stash_crds::BackupConfiguration {
    let mut base = json!({
        "schedule": "*/5 * * * *",
        "repository": {"name": "repo"},
        "target": {
            "ref": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "app"},
            "directories": ["/data"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        },
        "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true},
    });
    if let (Some(b), Value::Object(s)) = (base.as_object_mut(), spec) {
        b.extend(s);
    }
    serde_json::from_value(json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration",
        "metadata": {
            "name": "bc", "namespace": "n", "uid": "uid-bc", "resourceVersion": "3", "generation": 2,
            "finalizers": ["stash.appscode.com"], "labels": {"team": "a"},
        },
        "spec": base,
    }))
    .expect("backup configuration")
}
