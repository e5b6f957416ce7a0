//! The webhook configurations the operator registers with the API server (both named
//! `admission.stash.appscode.com`, as upstream), and the paths they call.
//!
//! Paths follow upstream's scheme (stash-api.md §8):
//! `/apis/admission.stash.appscode.com/v1alpha1/<kind>mutators` for workloads,
//! `/apis/admission.stash.appscode.com/<version>/<kind>validators` for our kinds, and
//! `/apis/admission.stash.appscode.com/v1beta1/<kind>mutators` for the defaulting of our kinds.
use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference,
        ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta},
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};

/// Name of both webhook configurations.
pub const CONFIGURATION_NAME: &str = "admission.stash.appscode.com";
const PREFIX: &str = "/apis/admission.stash.appscode.com";
use stash_core::names::FIELD_MANAGER;

/// Which decision a path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Validate one of our kinds.
    Validate(&'static str),
    /// Inject the sidecar into a workload kind.
    Workload(stash_core::target::WorkloadKind),
    /// Default one of our kinds.
    Default(&'static str),
}

/// One webhook: its name, what it matches and the path it calls.
#[derive(Clone, Debug)]
pub struct Hook {
    /// Webhook name (`<kind>.admission.stash.appscode.com`).
    pub name: String,
    /// API group of the matched resource.
    pub group: &'static str,
    /// Matched resource (plural).
    pub resource: &'static str,
    /// Matched operations.
    pub operations: &'static [&'static str],
    /// URL path on the webhook server.
    pub path: String,
    /// The decision behind the path.
    pub decision: Decision,
}

const CU: &[&str] = &["CREATE", "UPDATE"];
const C: &[&str] = &["CREATE"];
const STASH: &str = "stash.appscode.com";

fn hook(
    short: &str,
    group: &'static str,
    resource: &'static str,
    operations: &'static [&'static str],
    path: String,
    decision: Decision,
) -> Hook {
    Hook {
        name: format!("{short}.{CONFIGURATION_NAME}"),
        group,
        resource,
        operations,
        path,
        decision,
    }
}

/// The validating webhooks: every kind we own, CREATE and UPDATE.
pub fn validating_hooks() -> Vec<Hook> {
    let v = |short: &'static str, resource: &'static str, version: &str| {
        hook(
            short,
            STASH,
            resource,
            CU,
            format!("{PREFIX}/{version}/{short}validators"),
            Decision::Validate(short),
        )
    };
    vec![
        v("repository", "repositories", "v1alpha1"),
        v("backupconfiguration", "backupconfigurations", "v1beta1"),
        v("backupsession", "backupsessions", "v1beta1"),
        v("restoresession", "restoresessions", "v1beta1"),
        v("function", "functions", "v1beta1"),
        v("task", "tasks", "v1beta1"),
        v(
            "backupconfigurationtemplate",
            "backupconfigurationtemplates",
            "v1beta1",
        ),
        v("backupblueprint", "backupblueprints", "v1beta1"),
    ]
}

/// The mutating webhooks: workload sidecar injection (StatefulSets at CREATE only, as
/// upstream) and the defaulting of our kinds at CREATE.
pub fn mutating_hooks() -> Vec<Hook> {
    use stash_core::target::WorkloadKind as W;
    let w = |kind: W, group: &'static str, resource: &'static str, ops: &'static [&'static str]| {
        let short = kind.kind().to_lowercase();
        let path = format!("{PREFIX}/v1alpha1/{short}mutators");
        hook(&short, group, resource, ops, path, Decision::Workload(kind))
    };
    let d = |short: &'static str, resource: &'static str| {
        hook(
            short,
            STASH,
            resource,
            C,
            format!("{PREFIX}/v1beta1/{short}mutators"),
            Decision::Default(short),
        )
    };
    vec![
        w(W::Deployment, "apps", "deployments", CU),
        w(W::DaemonSet, "apps", "daemonsets", CU),
        w(W::StatefulSet, "apps", "statefulsets", C),
        w(W::ReplicaSet, "apps", "replicasets", CU),
        w(W::ReplicationController, "", "replicationcontrollers", CU),
        w(
            W::DeploymentConfig,
            "apps.openshift.io",
            "deploymentconfigs",
            CU,
        ),
        d("backupconfiguration", "backupconfigurations"),
        d("backupsession", "backupsessions"),
        d("restoresession", "restoresessions"),
    ]
}

/// How the API server reaches the webhook server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `https://host:port`, the path appended (local runs and tests: the API server calls the
    /// loopback address directly).
    Url(String),
    /// An in-cluster Service.
    Service {
        /// Namespace of the Service.
        namespace: String,
        /// Name of the Service.
        name: String,
        /// Port of the Service.
        port: i32,
    },
}

fn client_config(endpoint: &Endpoint, path: &str, ca_bundle: &str) -> WebhookClientConfig {
    let ca = Some(ByteString(ca_bundle.as_bytes().to_vec()));
    match endpoint {
        Endpoint::Url(base) => WebhookClientConfig {
            url: Some(format!("{}{path}", base.trim_end_matches('/'))),
            ca_bundle: ca,
            service: None,
        },
        Endpoint::Service {
            namespace,
            name,
            port,
        } => WebhookClientConfig {
            url: None,
            ca_bundle: ca,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                port: Some(*port),
                path: Some(path.to_string()),
            }),
        },
    }
}

fn rules(h: &Hook) -> Option<Vec<RuleWithOperations>> {
    Some(vec![RuleWithOperations {
        api_groups: Some(vec![h.group.to_string()]),
        api_versions: Some(vec!["*".into()]),
        operations: Some(h.operations.iter().map(|s| s.to_string()).collect()),
        resources: Some(vec![h.resource.to_string()]),
        scope: Some("*".into()),
    }])
}

/// Workload mutators never touch kube-system, so a broken webhook cannot get in the way of
/// the control plane's own workloads (they are `Ignore` anyway).
fn not_kube_system() -> Option<LabelSelector> {
    Some(LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: "kubernetes.io/metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec!["kube-system".into()]),
        }]),
        match_labels: None,
    })
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some([("app.kubernetes.io/name".to_string(), "stash".to_string())].into()),
        ..Default::default()
    }
}

/// The ValidatingWebhookConfiguration: failurePolicy `Fail` (upstream).
pub fn validating_configuration(
    name: &str,
    endpoint: &Endpoint,
    ca_bundle: &str,
) -> ValidatingWebhookConfiguration {
    ValidatingWebhookConfiguration {
        metadata: meta(name),
        webhooks: Some(
            validating_hooks()
                .iter()
                .map(|h| ValidatingWebhook {
                    name: h.name.clone(),
                    client_config: client_config(endpoint, &h.path, ca_bundle),
                    rules: rules(h),
                    failure_policy: Some("Fail".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    match_policy: Some("Equivalent".into()),
                    timeout_seconds: Some(10),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// The MutatingWebhookConfiguration: failurePolicy `Ignore` (upstream).
pub fn mutating_configuration(
    name: &str,
    endpoint: &Endpoint,
    ca_bundle: &str,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: meta(name),
        webhooks: Some(
            mutating_hooks()
                .iter()
                .map(|h| MutatingWebhook {
                    name: h.name.clone(),
                    client_config: client_config(endpoint, &h.path, ca_bundle),
                    rules: rules(h),
                    failure_policy: Some("Ignore".into()),
                    side_effects: "None".into(),
                    admission_review_versions: vec!["v1".into()],
                    match_policy: Some("Equivalent".into()),
                    timeout_seconds: Some(5),
                    reinvocation_policy: Some("Never".into()),
                    namespace_selector: matches!(h.decision, Decision::Workload(_))
                        .then(not_kube_system)
                        .flatten(),
                    ..Default::default()
                })
                .collect(),
        ),
    }
}

/// Server-side apply the enabled configurations with `ca_bundle`.
pub async fn apply(
    client: &Client,
    name: &str,
    endpoint: &Endpoint,
    ca_bundle: &str,
    validating: bool,
    mutating: bool,
) -> kube::Result<()> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    if validating {
        let c = validating_configuration(name, endpoint, ca_bundle);
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(&c))
            .await?;
    }
    if mutating {
        let c = mutating_configuration(name, endpoint, ca_bundle);
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .patch(name, &pp, &Patch::Apply(&c))
            .await?;
    }
    Ok(())
}

/// Delete both configurations (missing ones are fine).
pub async fn delete(client: &Client, name: &str) -> kube::Result<()> {
    let ignore_missing = |r: kube::Result<_>| match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
        Ok(_) => Ok(()),
    };
    ignore_missing(
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )?;
    ignore_missing(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configurations_follow_upstream() {
        let ep = Endpoint::Url("https://127.0.0.1:8443/".into());
        let v = validating_configuration(CONFIGURATION_NAME, &ep, "CA");
        let hooks = v.webhooks.expect("webhooks");
        assert_eq!(hooks.len(), 8, "seven kinds of 2019 and BackupBlueprint");
        assert!(
            hooks
                .iter()
                .all(|h| h.failure_policy.as_deref() == Some("Fail") && h.side_effects == "None")
        );
        let repo = hooks
            .iter()
            .find(|h| h.name == "repository.admission.stash.appscode.com")
            .expect("repository hook");
        assert_eq!(
            repo.client_config.url.as_deref(),
            Some(
                "https://127.0.0.1:8443/apis/admission.stash.appscode.com/v1alpha1/repositoryvalidators"
            )
        );
        let m = mutating_configuration(CONFIGURATION_NAME, &ep, "CA")
            .webhooks
            .expect("webhooks");
        assert!(
            m.iter()
                .all(|h| h.failure_policy.as_deref() == Some("Ignore"))
        );
        let sts = m
            .iter()
            .find(|h| h.name == "statefulset.admission.stash.appscode.com")
            .expect("sts");
        assert_eq!(
            sts.rules.as_ref().expect("rules")[0].operations,
            Some(vec!["CREATE".to_string()])
        );
        assert!(sts.namespace_selector.is_some());
        let svc = Endpoint::Service {
            namespace: "kube-system".into(),
            name: "stash-operator".into(),
            port: 443,
        };
        let m = mutating_configuration(CONFIGURATION_NAME, &svc, "CA")
            .webhooks
            .expect("webhooks");
        let s = m[0].client_config.service.as_ref().expect("service");
        assert_eq!(
            s.path.as_deref(),
            Some("/apis/admission.stash.appscode.com/v1alpha1/deploymentmutators")
        );
        assert_eq!(
            m[0].client_config.ca_bundle,
            Some(ByteString(b"CA".to_vec()))
        );
    }
}
