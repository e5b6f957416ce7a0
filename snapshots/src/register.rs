//! Registration with the kube-aggregator: the `Service` the APIService points at and the
//! `APIService v1alpha1.repositories.stash.appscode.com` itself.
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::{
    ByteString, api::core::v1::Service, kube_aggregator::pkg::apis::apiregistration::v1::APIService,
};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams},
};
use serde_json::json;
use stash_crds::consts::SNAPSHOT_GROUP;

use super::api::VERSION;

/// `v1alpha1.repositories.stash.appscode.com`.
pub fn apiservice_name() -> String {
    format!("{VERSION}.{SNAPSHOT_GROUP}")
}

const MANAGER: &str = "stash-snapshot-api";

/// Create or update the ExternalName Service `namespace/name` pointing at `external_name:port`.
pub async fn apply_external_service(
    client: &Client,
    namespace: &str,
    name: &str,
    external_name: &str,
    port: u16,
) -> anyhow::Result<()> {
    let svc: Service = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/name": "stash", "app.kubernetes.io/component": "snapshot-api"}},
        "spec": {"type": "ExternalName", "externalName": external_name,
                 "ports": [{"name": "https", "port": port, "protocol": "TCP", "targetPort": port}]}
    }))?;
    Api::<Service>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&svc),
        )
        .await
        .with_context(|| format!("apply Service {namespace}/{name}"))?;
    Ok(())
}

/// Create or update the APIService pointing at Service `namespace/name:port`, trusting
/// `ca_bundle_pem` for the serving certificate.
pub async fn apply_apiservice(
    client: &Client,
    namespace: &str,
    name: &str,
    port: u16,
    ca_bundle_pem: &str,
) -> anyhow::Result<()> {
    let mut apis: APIService = serde_json::from_value(json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": apiservice_name(),
                     "labels": {"app.kubernetes.io/name": "stash", "app.kubernetes.io/component": "snapshot-api"}},
        "spec": {"group": SNAPSHOT_GROUP, "version": VERSION, "groupPriorityMinimum": 1000, "versionPriority": 15,
                 "service": {"namespace": namespace, "name": name, "port": port}}
    }))?;
    if let Some(spec) = apis.spec.as_mut() {
        spec.ca_bundle = Some(ByteString(ca_bundle_pem.as_bytes().to_vec()));
    }
    Api::<APIService>::all(client.clone())
        .patch(
            &apiservice_name(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&apis),
        )
        .await
        .with_context(|| format!("apply APIService {}", apiservice_name()))?;
    Ok(())
}

/// Wait until the APIService reports `Available=True`; the error carries its last message.
pub async fn wait_available(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let api = Api::<APIService>::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no status yet");
    loop {
        if let Some(a) = api.get_opt(&apiservice_name()).await? {
            let cond = a
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "Available");
            if let Some(c) = cond {
                if c.status == "True" {
                    return Ok(());
                }
                last = format!(
                    "{}: {}",
                    c.reason.unwrap_or_default(),
                    c.message.unwrap_or_default()
                );
            }
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "APIService {} is not Available after {timeout:?}: {last}",
                apiservice_name()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Delete the APIService (ignoring NotFound) and, if given, the Service.
pub async fn unregister(client: &Client, service: Option<(&str, &str)>) -> anyhow::Result<()> {
    match Api::<APIService>::all(client.clone())
        .delete(&apiservice_name(), &DeleteParams::default())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(e).context("delete APIService"),
    }
    if let Some((ns, name)) = service {
        match Api::<Service>::namespaced(client.clone(), ns)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).context("delete Service"),
        }
    }
    Ok(())
}
