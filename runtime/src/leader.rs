//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Only the leader runs controllers and writes status. Client-go's semantics:
//! * a candidate takes the lease when it is free, its own, or when its record has not changed
//!   for a whole lease duration *as measured on the candidate's own monotonic clock* since it
//!   observed that record (no comparison of another replica's timestamps with the local clock);
//! * the holder renews every `renew_every`; when it has not renewed for `renew_deadline`
//!   (shorter than the lease duration) it reports the loss and must stop acting, so it stops
//!   before any candidate may take over; the operator then exits and starts over as a
//!   candidate;
//! * every lease request is bounded by a timeout; every write carries the resourceVersion it
//!   read (optimistic concurrency), so two candidates never both win one round.
use std::time::{Duration, Instant};

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
    /// How long a lease is valid without renewal (as others observe it).
    pub lease_duration: Duration,
    /// The holder stops acting when it has not renewed for this long (< `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate retries.
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

/// What a candidate has seen of the lease: the record, and when (on its own monotonic clock)
/// the record last changed. Expiry is judged from that moment, never by comparing another
/// replica's `renewTime` with the local wall clock (client-go's `observedTime`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Holder, renew time and transitions as last read.
    pub record: (Option<String>, Option<String>, Option<i32>),
    /// When the record last changed, on this process's monotonic clock.
    pub at: Instant,
}

/// Whether `me` may take (or keep) the lease, given what was observed and the local `now`.
/// Another holder's lease is free only once `lease_duration` has passed on *our* clock since its
/// record last changed; a holder stops acting after `renew_deadline` (< `lease_duration`)
/// without a successful renewal, so it has stopped before anyone may take over.
pub fn may_take(observed: &Observed, me: &str, now: Instant, lease_duration: Duration) -> bool {
    let holder = observed.record.0.as_deref().unwrap_or_default();
    holder.is_empty() || holder == me || now.duration_since(observed.at) > lease_duration
}

impl LeaderElection {
    /// Client-go's defaults relative to the lease duration: renew deadline ⅔ of it, retry ⅕.
    pub fn new(namespace: &str, name: &str, identity: &str, lease_duration: Duration) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration,
            renew_deadline: lease_duration * 2 / 3,
            renew_every: lease_duration / 5,
        }
    }

    /// Wait until this replica holds the lease, then keep renewing it in the background.
    /// Every attempt is bounded by what is left of the renew deadline; a holder that cannot
    /// renew within the renew deadline reports the loss (and must stop acting) before the lease can expire for
    /// the others.
    pub async fn acquire(&self, client: Client) -> Result<Leadership, kube::Error> {
        let api: Api<Lease> = Api::namespaced(client, &self.namespace);
        let mut observed: Option<Observed> = None;
        loop {
            match self
                .try_acquire(&api, &mut observed, self.renew_deadline)
                .await
            {
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
            let mut last_ok = Instant::now();
            loop {
                tokio::time::sleep(this.renew_every).await;
                // A slow API server may take a while to answer: the attempt may use what is left
                // of the renew deadline (client-go bounds the renewal by the deadline, not by the
                // retry period).
                let left = this.renew_deadline.saturating_sub(last_ok.elapsed());
                match this
                    .try_acquire(&renew_api, &mut observed, left.max(Duration::from_secs(1)))
                    .await
                {
                    Ok(true) => last_ok = Instant::now(),
                    Ok(false) => {
                        tracing::error!("leader election: the lease was taken by another replica");
                        let _ = tx.send(false);
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election: renewal failed, retrying")
                    }
                }
                if last_ok.elapsed() > this.renew_deadline {
                    tracing::error!("leader election: not renewed within the renew deadline");
                    let _ = tx.send(false);
                    return;
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

    /// One attempt, bounded by `bound`: true when we hold the lease afterwards.
    async fn try_acquire(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<Observed>,
        bound: Duration,
    ) -> Result<bool, kube::Error> {
        match tokio::time::timeout(bound, self.attempt(api, observed)).await {
            Ok(r) => r,
            Err(_) => Err(kube::Error::Service(
                format!("lease request timed out after {bound:?}").into(),
            )),
        }
    }

    async fn attempt(
        &self,
        api: &Api<Lease>,
        observed: &mut Option<Observed>,
    ) -> Result<bool, kube::Error> {
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
                Ok(created) => {
                    *observed = Some(observe(&created, Instant::now()));
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let seen = observe(&lease, Instant::now());
        if observed.as_ref().is_none_or(|o| o.record != seen.record) {
            *observed = Some(seen);
        }
        let o = observed.as_ref().expect("set above");
        if !may_take(o, &self.identity, Instant::now(), self.lease_duration) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
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
            Ok(written) => {
                *observed = Some(observe(&written, Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn observe(lease: &Lease, at: Instant) -> Observed {
    let spec = lease.spec.clone().unwrap_or_default();
    Observed {
        record: (
            spec.holder_identity,
            spec.renew_time.map(|t| t.0.to_string()),
            spec.lease_transitions,
        ),
        at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(holder: Option<&str>, at: Instant) -> Observed {
        Observed {
            record: (holder.map(Into::into), Some("t1".into()), Some(0)),
            at,
        }
    }

    #[test]
    fn another_holder_expires_only_on_the_observers_clock() {
        let t0 = Instant::now();
        let d = Duration::from_secs(15);
        let o = seen(Some("other"), t0);
        assert!(!may_take(&o, "me", t0, d));
        assert!(!may_take(&o, "me", t0 + Duration::from_secs(15), d));
        assert!(may_take(&o, "me", t0 + Duration::from_secs(16), d));
        // Our own lease and a released one are ours to take at once.
        assert!(may_take(&seen(Some("me"), t0), "me", t0, d));
        assert!(may_take(&seen(None, t0), "me", t0, d));
        assert!(may_take(&seen(Some(""), t0), "me", t0, d));
    }

    #[test]
    fn the_holder_gives_up_before_anyone_may_take_over() {
        let e = LeaderElection::new("ns", "lease", "me", Duration::from_secs(15));
        assert!(e.renew_deadline < e.lease_duration);
        assert!(e.renew_every < e.renew_deadline);
        assert_eq!(e.renew_deadline, Duration::from_secs(10));
        assert_eq!(e.renew_every, Duration::from_secs(3));
    }
}
