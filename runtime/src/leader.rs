//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader runs controllers and writes status. A replica acquires the lease when it
//! is free, expired or already its own; it renews it every `renew_every`; if it cannot renew
//! for a whole lease duration it reports the loss and the operator exits (a restarted
//! process starts over as a candidate — the simplest correct behaviour).
//!
//! Guarantees: at most one holder at a time, because every write carries the
//! resourceVersion it read (optimistic concurrency); a holder that died is replaced after at
//! most one lease duration.
use std::time::Duration;

use k8s_openapi::{api::coordination::v1::Lease, apimachinery::pkg::apis::meta::v1::MicroTime};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::sync::watch;

/// Lease-based leader election settings.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name, or host name + pid).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
}

/// Held while this replica is the leader; `lost()` resolves when the lease is lost.
#[derive(Debug)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Leadership {
    /// Resolves when leadership is lost.
    pub async fn lost(&mut self) {
        while *self.rx.borrow() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Give the lease up (on graceful shutdown) so a successor need not wait for expiry.
    pub async fn release(self) {
        self.task.abort();
        if let Ok(mut lease) = self.api.get(&self.name).await {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() == Some(&self.identity) {
                spec.holder_identity = None;
                spec.renew_time = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

impl LeaderElection {
    /// Wait until this replica holds the lease, then keep renewing it in the background.
    pub async fn acquire(&self, client: Client) -> Result<Leadership, kube::Error> {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        loop {
            match self.try_acquire(&api).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or write the lease")
                }
            }
            tokio::time::sleep(self.renew_every).await;
        }
        tracing::info!(lease = %self.name, identity = %self.identity, "became the leader");
        let (tx, rx) = watch::channel(true);
        let this = self.clone();
        let renew_api = api.clone();
        let task = tokio::spawn(async move {
            let mut last_ok = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(this.renew_every).await;
                match this.try_acquire(&renew_api).await {
                    Ok(true) => last_ok = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::error!("leader election: the lease was taken by another replica");
                        let _ = tx.send(false);
                        return;
                    }
                    Err(e) if last_ok.elapsed() > this.lease_duration => {
                        tracing::error!(error = %e, "leader election: could not renew within the lease duration");
                        let _ = tx.send(false);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewal failed, retrying")
                    }
                }
            }
        });
        Ok(Leadership {
            rx,
            task,
            api,
            name: self.name.clone(),
            identity: self.identity.clone(),
        })
    }

    /// One attempt: true when we hold the lease afterwards.
    async fn try_acquire(&self, api: &Api<Lease>) -> Result<bool, kube::Error> {
        let secs = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(mut lease) = api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(k8s_openapi::api::coordination::v1::LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now()),
                    renew_time: Some(now()),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        let mine = spec.holder_identity.as_deref() == Some(&self.identity);
        let free = spec.holder_identity.as_deref().is_none_or(str::is_empty);
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let valid = i64::from(spec.lease_duration_seconds.unwrap_or(secs));
            jiff::Timestamp::now().as_second() > t.0.as_second() + valid
        });
        if !(mine || free || expired) {
            return Ok(false);
        }
        if !mine {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(secs);
        // `replace` carries the resourceVersion we read: a concurrent writer makes this 409.
        match api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
