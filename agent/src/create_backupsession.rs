//! `stash create-backupsession`: what the trigger CronJob runs (stash-api.md §5.2).
use k8s_openapi::{
    api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ObjectMeta, PostParams},
};
use stash_crds::{BackupConfiguration, BackupSession, backup_session::BackupSessionSpec, consts};
use stash_runtime::events::{Events, Severity};

use stash_core::names::offshoot_labels;

/// The reporting controller of the trigger's events (a valid qualified name).
pub const REPORTING_CONTROLLER: &str = "stash-backup-trigger-cronjob";

/// Flags of `create-backupsession`.
#[derive(Clone, Debug, clap::Args)]
pub struct Options {
    /// The BackupConfiguration (the session is named `<name>-<unix seconds>`).
    #[arg(long = "backupsession.name")]
    pub name: String,
    /// Its namespace.
    #[arg(long = "backupsession.namespace", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Where to push `stash_backupsession_create_failure` (empty: no metric).
    #[arg(long, default_value = "")]
    pub pushgateway_url: String,
}

/// Reason of the Warning event when the session cannot be created (e.g. no admission webhook
/// answers): the missed backup is visible on the BackupConfiguration.
pub const CREATE_FAILED: &str = "BackupSessionCreateFailed";

/// The trigger's metric: 1 while the last attempt to create a session failed, else 0. One
/// pushgateway group per BackupConfiguration **and namespace** (job `<namespace>.<name>-trigger`;
/// a namespace name has no dot), so configurations of the same name in two namespaces do not
/// overwrite each other's value; the samples carry both as labels.
pub fn create_failure_group(namespace: &str, bc: &str, failed: bool) -> crate::metrics::Group {
    crate::metrics::Group {
        job: format!("{namespace}.{bc}-trigger"),
        host: "cronjob".into(),
        labels: vec![
            ("BackupConfiguration".into(), bc.into()),
            ("namespace".into(), namespace.into()),
        ],
        samples: vec![crate::metrics::Sample {
            name: "stash_backupsession_create_failure",
            help: "1 if the trigger CronJob's last attempt to create a BackupSession failed",
            value: if failed { 1.0 } else { 0.0 },
        }],
    }
}

/// The longest note an Event takes (events.k8s.io/v1 refuses more than 1024 bytes).
const MAX_NOTE: usize = 1024;

/// The note of the `BackupSessionCreateFailed` event: the API server's message (not the whole
/// `Status` twice, as `kube::Error`'s `Display` gives it, which overflows the Event's limit
/// when a webhook's error names a long Service URL), cut to fit.
pub fn failure_note(e: &kube::Error) -> String {
    let why = match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    };
    let mut note = format!("could not create a BackupSession: {why}");
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE - "…".len();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

/// The session to create for `bc` at `unix` seconds.
pub fn session_for(bc: &BackupConfiguration, unix: i64) -> BackupSession {
    let mut labels = offshoot_labels(bc, consts::COMPONENT_BACKUP);
    labels.insert(consts::BACKUP_CONFIGURATION_LABEL.into(), bc.name_any());
    let owner: Option<OwnerReference> = bc.controller_owner_ref(&());
    BackupSession {
        metadata: ObjectMeta {
            name: Some(format!("{}-{unix}", bc.name_any())),
            namespace: bc.namespace(),
            labels: Some(labels),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: BackupSessionSpec {
            backup_configuration: Some(k8s_openapi::api::core::v1::LocalObjectReference {
                name: bc.name_any(),
            }),
            invoker: None,
            // As later Stash: the configuration's retries, counted down by the operator.
            retry_left: bc
                .spec
                .retry_config
                .as_ref()
                .map(stash_crds::common::RetryConfig::max_retry),
        },
        status: None,
    }
}

/// Create the BackupSession, unless the configuration is paused (an event says why).
pub async fn run(opts: Options) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    // Upstream's event source was "Backup Triggering CronJob"; events.k8s.io/v1 requires the
    // reporting controller to be a qualified name, so the API server refused every event
    // written under that name.
    let events = Events::new(client.clone(), REPORTING_CONTROLLER);
    let bcs = Api::<BackupConfiguration>::namespaced(client.clone(), &opts.namespace);
    let bc = bcs.get(&opts.name).await?;
    let reference: ObjectReference = bc.object_ref(&());
    if bc.spec.paused {
        let note = format!(
            "BackupConfiguration {} is paused: no BackupSession created",
            opts.name
        );
        tracing::info!("{note}");
        events
            .publish(&reference, Severity::Normal, "BackupSkipped", note)
            .await;
        return Ok(());
    }
    let session = session_for(&bc, jiff::Timestamp::now().as_second());
    let api = Api::<BackupSession>::namespaced(client, &opts.namespace);
    let result = match api.create(&PostParams::default(), &session).await {
        Ok(s) => {
            tracing::info!(session = %s.name_any(), "created BackupSession");
            Ok(())
        }
        // The same second twice (a retried pod): the session exists already.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            tracing::info!("BackupSession exists already");
            Ok(())
        }
        Err(e) => Err(e),
    };
    if !opts.pushgateway_url.is_empty() {
        let group = create_failure_group(&opts.namespace, &opts.name, result.is_err());
        crate::metrics::push_logged(&opts.pushgateway_url, &group).await;
    }
    if let Err(e) = result {
        let note = failure_note(&e);
        events
            .publish(&reference, Severity::Warning, CREATE_FAILED, note)
            .await;
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_note_fits_an_event() {
        let message = format!(
            "Internal error occurred: failed calling webhook \"outage.stash-rs.test\": failed to call webhook: Post \"https://no-replica-serving.{}.svc:443/?timeout=5s\": service not found",
            "n".repeat(63)
        );
        let status = kube::core::Status::failure(&message, "InternalError").with_code(500);
        let note = failure_note(&kube::Error::Api(Box::new(status)));
        assert!(note.len() <= MAX_NOTE, "{} bytes", note.len());
        assert!(
            note.starts_with(
                "could not create a BackupSession: Internal error occurred: failed calling webhook"
            ),
            "{note}"
        );
        assert!(note.ends_with("service not found (500)"), "{note}");
        let long = kube::core::Status::failure(&"é".repeat(2000), "InternalError").with_code(500);
        let note = failure_note(&kube::Error::Api(Box::new(long)));
        assert!(
            note.len() <= MAX_NOTE && note.ends_with('…'),
            "{} bytes",
            note.len()
        );
    }

    #[test]
    fn one_failure_metric_per_namespace_and_configuration() {
        let a = create_failure_group("team-a", "app-backup", true);
        let b = create_failure_group("team-b", "app-backup", false);
        assert_ne!(
            a.path(),
            b.path(),
            "the same name in two namespaces: two groups"
        );
        assert_eq!(
            a.path(),
            "/metrics/job/team-a.app-backup-trigger/Host/cronjob"
        );
        assert!(
            a.render().contains(
                "stash_backupsession_create_failure{BackupConfiguration=\"app-backup\",namespace=\"team-a\"} 1\n"
            ),
            "{}",
            a.render()
        );
        assert!(
            b.render().contains("namespace=\"team-b\"} 0\n"),
            "{}",
            b.render()
        );
    }
}
