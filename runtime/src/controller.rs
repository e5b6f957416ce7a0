//! Driving a reconciler through a kube-runtime `Controller`, with metrics.
use std::{fmt::Debug, future::Future, hash::Hash, sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Resource,
    runtime::{
        Controller,
        controller::{Action, Config},
    },
};
use serde::de::DeserializeOwned;

use crate::metrics::{ErrorLabels, Metrics};

/// A short, stable class of an error, used as a metric label.
pub trait MetricLabel {
    /// e.g. `kube`, `missing_repository`.
    fn metric_label(&self) -> &'static str;
}

/// What a controller does with one object.
pub trait Reconcile<K>: Send + Sync + 'static {
    /// The reconcile error.
    type Error: std::error::Error + MetricLabel + Send + Sync + 'static;

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
}

/// At most this many reconciles of one controller run at a time (kube's default is no limit:
/// a burst of thousands of objects then holds thousands of reconciles, each with its requests
/// and connections, in memory at once). Objects beyond it wait in the controller's queue,
/// deduplicated.
pub const CONCURRENCY: u16 = 32;

/// Run `controller` with `reconciler` until the stream ends (or the task is dropped).
pub async fn drive<K, R>(controller: Controller<K>, reconciler: R, metrics: Metrics)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Debug + Unpin,
    R: Reconcile<K>,
{
    let ctx = Arc::new(Ctx {
        reconciler,
        metrics,
    });
    controller
        .with_config(Config::default().concurrency(CONCURRENCY))
        .run(
            |obj: Arc<K>, ctx: Arc<Ctx<R>>| async move {
                let labels = Metrics::controller(R::NAME);
                ctx.metrics.reconciles.get_or_create(&labels).inc();
                let start = std::time::Instant::now();
                let result = ctx.reconciler.reconcile(obj).await;
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
