//! Running a short-lived Pod to its end and reading its log: the Snapshot API's reader Pods,
//! the lock janitor's unlock Pods.
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{DeleteParams, LogParams},
};

/// What [`wait_and_read`] says of a Pod that is gone before it was read.
pub const VANISHED: &str = "vanished before it was read";

/// Deletes its Pod when dropped (from a task of its own: a drop cannot wait).
pub struct DeleteOnDrop {
    pods: Api<Pod>,
    name: String,
}

impl DeleteOnDrop {
    /// Delete Pod `name` of `pods` when this is dropped.
    pub fn new(pods: Api<Pod>, name: String) -> Self {
        Self { pods, name }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (pods, name) = (self.pods.clone(), std::mem::take(&mut self.name));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                if let Err(e) = pods.delete(&name, &dp).await
                    && !matches!(&e, kube::Error::Api(s) if s.code == 404)
                {
                    tracing::warn!(pod = %name, error = %e, "could not delete a Pod");
                }
            });
        }
    }
}

/// Wait (bounded) for Pod `name` to end and read `container`'s log: `(phase, log)`. A Pod
/// that cannot start (a missing Secret or key, a bad image) is an error at once.
pub async fn wait_and_read(
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    timeout: Duration,
) -> Result<(String, String), String> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    let phase = loop {
        let p = pods.get(name).await.map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                format!("the Pod {name} {VANISHED}")
            }
            e => format!("reading the Pod {name}: {e}"),
        })?;
        let phase = p
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        // What will not get better by waiting: a missing Secret or key, a bad image.
        if let Some(w) = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.waiting.as_ref())
            .filter(|w| {
                matches!(
                    w.reason.as_deref(),
                    Some(
                        "CreateContainerConfigError"
                            | "ErrImagePull"
                            | "ImagePullBackOff"
                            | "InvalidImageName"
                    )
                )
            })
        {
            return Err(format!(
                "the Pod {name} cannot start: {}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            ));
        }
        if Instant::now() > deadline {
            let waiting = p
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().next())
                .and_then(|c| c.state)
                .and_then(|s| s.waiting)
                .map(|w| {
                    format!(
                        "{}: {}",
                        w.reason.unwrap_or_default(),
                        w.message.unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| format!("phase {phase:?}"));
            return Err(format!(
                "the Pod {name} did not finish in {timeout:?} ({waiting})"
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
    };
    let log = pods
        .logs(
            name,
            &LogParams {
                container: Some(container.into()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("reading the Pod's log: {e}"))?;
    Ok((phase, log))
}
