//! Driving a reconciler through a kube-runtime `Controller`, with metrics.
use std::{
    fmt::Debug, future::Future, hash::Hash, panic::AssertUnwindSafe, sync::Arc, time::Duration,
};

use futures::{FutureExt, StreamExt};
use kube::{
    Resource,
    runtime::{
        Controller,
        controller::{Action, Config},
    },
};
use serde::de::DeserializeOwned;

use crate::{
    events::{Events, Severity},
    metrics::{ErrorLabels, Metrics},
};

/// Event reason of a reconcile that panicked (a bug, or input nothing bounded yet): the object
/// gets a Warning with the panic's message, the reconcile fails and is retried with back-off,
/// and the process — every other object's controller — goes on.
pub const RECONCILE_PANICKED: &str = "ReconcilePanicked";

/// A reconcile that panicked, with the panic's message.
#[derive(Clone, Debug, thiserror::Error)]
#[error("reconcile panicked: {0}")]
pub struct Panicked(pub String);

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// A short, stable class of an error, used as a metric label.
pub trait MetricLabel {
    /// e.g. `kube`, `missing_repository`.
    fn metric_label(&self) -> &'static str;
}

/// What a controller does with one object.
pub trait Reconcile<K>: Send + Sync + 'static {
    /// The reconcile error (a panic becomes one, through [`Panicked`]).
    type Error: std::error::Error + MetricLabel + From<Panicked> + Send + Sync + 'static;

    /// The controller's name (metrics, logs).
    const NAME: &'static str;

    /// Bring the world in line with `obj`. Must be idempotent.
    fn reconcile(&self, obj: Arc<K>) -> impl Future<Output = Result<Action, Self::Error>> + Send;

    /// What to do after an error: requeue with a delay by default.
    fn error_policy(&self, _obj: Arc<K>, _error: &Self::Error) -> Action {
        Action::requeue(Duration::from_secs(5))
    }
}

struct Ctx<R> {
    reconciler: R,
    metrics: Metrics,
    events: Events,
}

/// At most this many reconciles of one controller run at a time (kube's default is no limit:
/// a burst of thousands of objects then holds thousands of reconciles, each with its requests
/// and connections, in memory at once). Objects beyond it wait in the controller's queue,
/// deduplicated.
pub const CONCURRENCY: u16 = 32;

/// Run `controller` with `reconciler` until the stream ends (or the task is dropped). A
/// reconcile that panics is caught: a Warning Event ([`RECONCILE_PANICKED`]) on its object, a
/// failed reconcile (metric label `panic`, the error policy's retry), never a process exit —
/// the next replica would reconcile the same object and die too.
pub async fn drive<K, R>(controller: Controller<K>, reconciler: R, metrics: Metrics, events: Events)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Default + Unpin,
    R: Reconcile<K>,
{
    let ctx = Arc::new(Ctx {
        reconciler,
        metrics,
        events,
    });
    controller
        .with_config(Config::default().concurrency(CONCURRENCY))
        .run(
            |obj: Arc<K>, ctx: Arc<Ctx<R>>| async move {
                let labels = Metrics::controller(R::NAME);
                ctx.metrics.reconciles.get_or_create(&labels).inc();
                let start = std::time::Instant::now();
                let reconcile = AssertUnwindSafe(ctx.reconciler.reconcile(obj.clone()));
                let result = match reconcile.catch_unwind().await {
                    Ok(result) => result,
                    Err(payload) => {
                        let message = panic_message(payload.as_ref());
                        tracing::error!(controller = R::NAME, %message, "reconcile panicked");
                        ctx.events
                            .publish(
                                &obj.object_ref(&K::DynamicType::default()),
                                Severity::Warning,
                                RECONCILE_PANICKED,
                                format!("{}: reconcile panicked: {message}", R::NAME),
                            )
                            .await;
                        Err(Panicked(message).into())
                    }
                };
                ctx.metrics
                    .durations
                    .get_or_create(&labels)
                    .observe(start.elapsed().as_secs_f64());
                result
            },
            |obj: Arc<K>, error: &R::Error, ctx: Arc<Ctx<R>>| {
                ctx.metrics
                    .failures
                    .get_or_create(&ErrorLabels {
                        controller: R::NAME.into(),
                        error: error.metric_label().into(),
                    })
                    .inc();
                tracing::warn!(controller = R::NAME, error = %error, "reconcile failed");
                ctx.reconciler.error_policy(obj, error)
            },
            ctx,
        )
        .for_each(|_| async {})
        .await;
}
