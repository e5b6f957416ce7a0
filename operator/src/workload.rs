//! Workload controllers (stash-api.md §5.3, controller path): keep each workload's pod
//! template in line with the BackupConfiguration that targets it — sidecar in, updated, or
//! out — using the same pure decision as the mutating webhook ([`stash_core::inject`]).
use std::{fmt::Debug, sync::Arc, time::Duration};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
    core::v1::{Pod, PodTemplateSpec, ReplicationController},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, PostParams},
    runtime::{Controller, reflector::ObjectRef, watcher},
};
use serde::{Serialize, de::DeserializeOwned};
use stash_crds::{BackupConfiguration, Repository, RestoreSession, consts};
use stash_runtime::{Action, Reconcile, events::Severity};

use super::{
    Ctx, Error, default_backup, rbac,
    stores::{self, Feeds},
};
use stash_core::{inject, names, target::WorkloadKind};

/// A workload kind the sidecar can be injected into.
pub trait Workload:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// Which kind.
    const KIND: WorkloadKind;
    /// The pod template.
    fn template(&self) -> Option<&PodTemplateSpec>;
    /// Replace the pod template.
    fn set_template(&mut self, template: PodTemplateSpec);
    /// Make template changes roll out (DaemonSet/StatefulSet: RollingUpdate).
    fn force_rolling_update(&mut self) {}
    /// Pods it owns are replaced by its controller on template change (false: we delete them).
    fn rolls_out_itself() -> bool {
        true
    }
}

impl Workload for Deployment {
    const KIND: WorkloadKind = WorkloadKind::Deployment;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn set_template(&mut self, template: PodTemplateSpec) {
        self.spec.get_or_insert_with(Default::default).template = template;
    }
}

impl Workload for StatefulSet {
    const KIND: WorkloadKind = WorkloadKind::StatefulSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn set_template(&mut self, template: PodTemplateSpec) {
        self.spec.get_or_insert_with(Default::default).template = template;
    }
    fn force_rolling_update(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.update_strategy = Some(k8s_openapi::api::apps::v1::StatefulSetUpdateStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: None,
        });
    }
}

impl Workload for DaemonSet {
    const KIND: WorkloadKind = WorkloadKind::DaemonSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn set_template(&mut self, template: PodTemplateSpec) {
        self.spec.get_or_insert_with(Default::default).template = template;
    }
    fn force_rolling_update(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        let strategy = spec.update_strategy.get_or_insert_with(Default::default);
        strategy.type_ = Some("RollingUpdate".into());
    }
}

impl Workload for ReplicaSet {
    const KIND: WorkloadKind = WorkloadKind::ReplicaSet;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn set_template(&mut self, template: PodTemplateSpec) {
        self.spec.get_or_insert_with(Default::default).template = Some(template);
    }
    fn rolls_out_itself() -> bool {
        false
    }
}

impl Workload for ReplicationController {
    const KIND: WorkloadKind = WorkloadKind::ReplicationController;
    fn template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().and_then(|s| s.template.as_ref())
    }
    fn set_template(&mut self, template: PodTemplateSpec) {
        self.spec.get_or_insert_with(Default::default).template = Some(template);
    }
    fn rolls_out_itself() -> bool {
        false
    }
}

/// The agents' hashes a pod template (or a pod) carries: the backup sidecar's and the restore
/// init-container's. A pod whose pair differs from its workload's template runs stale agents.
fn hashes_of(meta: Option<&kube::api::ObjectMeta>) -> [Option<String>; 2] {
    let get = |key: &str| {
        meta.and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(key).cloned())
    };
    [
        get(consts::LAST_APPLIED_BACKUP_CONFIGURATION_HASH_ANNOTATION),
        get(consts::LAST_APPLIED_RESTORE_SESSION_HASH_ANNOTATION),
    ]
}

/// Does the pod template `current` (as the API server stores it) already say everything
/// `desired` says? The API server fills defaults into what was written
/// (`terminationMessagePath`, a Secret volume's `defaultMode`, …), so the desired template
/// computed from the stored one never equals it: comparing for equality wrote every workload
/// on every reconcile (a no-op update, and a call of the mutating webhook). Every field
/// `desired` sets must be in `current` with the same value (lists: the same length, element by
/// element); fields only `current` has are the server's.
fn covers(current: &PodTemplateSpec, desired: &PodTemplateSpec) -> bool {
    fn within(current: &serde_json::Value, desired: &serde_json::Value) -> bool {
        use serde_json::Value;
        match (current, desired) {
            (Value::Object(c), Value::Object(d)) => d.iter().all(|(k, dv)| match c.get(k) {
                Some(cv) => within(cv, dv),
                None => dv.is_null(),
            }),
            (Value::Array(c), Value::Array(d)) => {
                c.len() == d.len() && c.iter().zip(d).all(|(cv, dv)| within(cv, dv))
            }
            (c, d) => c == d,
        }
    }
    match (serde_json::to_value(current), serde_json::to_value(desired)) {
        (Ok(c), Ok(d)) => within(&c, &d),
        _ => current == desired,
    }
}

pub(crate) use stash_core::inject::last_applied;

pub(crate) struct Workloads<W>(pub(crate) Arc<Ctx>, pub(crate) std::marker::PhantomData<W>);

impl<W: Workload> Reconcile<W> for Workloads<W> {
    type Error = Error;
    const NAME: &'static str = "workload";

    async fn reconcile(&self, w: Arc<W>) -> Result<Action, Error> {
        let ctx = &self.0;
        if w.meta().deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        // What targets this workload is read from the shared stores: only once they listed.
        ctx.stores.ready().await?;
        // A ReplicaSet owned by a Deployment follows its Deployment.
        if W::KIND == WorkloadKind::ReplicaSet
            && w.owner_references()
                .iter()
                .any(|o| o.kind == "Deployment" && o.controller == Some(true))
        {
            return Ok(Action::await_change());
        }
        let ns = w.namespace().unwrap_or_default();
        let name = w.name_any();
        let reference = w.object_ref(&());
        // Default backups first (§5.3 step 2): the annotations may create the configuration.
        if let Some(owner) = w.controller_owner_ref(&()) {
            let target = default_backup::Target {
                api_version: W::KIND.api_version().into(),
                kind: W::KIND.kind().into(),
                resource: Some(format!("{}s", W::KIND.kind().to_lowercase())),
                name: name.clone(),
                namespace: ns.clone(),
                app_version: None,
                annotations: w.annotations().clone(),
                owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    controller: None,
                    block_owner_deletion: None,
                    ..owner
                },
            };
            if let Err(e) = default_backup::reconcile(ctx, &target).await {
                ctx.events
                    .publish(
                        &reference,
                        Severity::Warning,
                        "DefaultBackupFailed",
                        e.to_string(),
                    )
                    .await;
            }
        }
        // Everything this reconcile reads of the Stash kinds comes from the shared stores.
        let stores = &ctx.stores;
        let matching =
            stores::configurations_targeting(&stores.configurations, W::KIND, &ns, &name);
        if matching.len() > 1 {
            let names: Vec<_> = matching.iter().map(|b| b.name_any()).collect();
            let msg = format!(
                "more than one BackupConfiguration targets {} {name}: {names:?}",
                W::KIND.kind()
            );
            ctx.events
                .publish(
                    &reference,
                    Severity::Warning,
                    "MultipleBackupConfigurations",
                    msg.clone(),
                )
                .await;
            return Err(Error::Config(msg));
        }
        let target = match matching.into_iter().next() {
            None => None,
            Some(bc) => {
                let repo_name = bc.spec.repository_name();
                match stores::get_or_fetch(&stores.repositories, &ctx.client, &ns, &repo_name)
                    .await?
                {
                    Some(repo) => Some((bc, repo)),
                    None => {
                        let msg = format!(
                            "Repository {repo_name:?} of BackupConfiguration {} not found",
                            bc.name_any()
                        );
                        ctx.events
                            .publish(&reference, Severity::Warning, "RepositoryNotFound", msg)
                            .await;
                        return Ok(Action::requeue(Duration::from_secs(15)));
                    }
                }
            }
        };
        let restore = applicable_restore::<W>(ctx, &ns, &name).await?;
        let current = w.template().cloned().unwrap_or_default();
        // Agents the namespace's PodSecurity level would refuse are never injected: the
        // workload is left as it is (docs/identity.md). Admission refuses such
        // configurations; this holds when the namespace's label came later.
        if target.is_some() || restore.is_some() {
            let level = stores::pod_security_level(&stores.namespaces, &ns);
            let repos = target
                .iter()
                .map(|(_, r)| &**r)
                .chain(restore.iter().map(|(_, r)| &**r));
            if let Some(why) = repos
                .filter_map(|r| stash_core::identity::refusal(&ns, level, r, current.spec.as_ref()))
                .next()
            {
                ctx.events
                    .publish(&reference, Severity::Warning, "PodSecurityRefused", why)
                    .await;
                return Ok(Action::requeue(Duration::from_secs(300)));
            }
        }
        let desired = inject::apply_backup(
            &current,
            target.as_ref().map(|(b, r)| (&**b, &**r)),
            &ctx.inject,
        )
        .and_then(|t| {
            inject::apply_restore(&t, restore.as_ref().map(|(rs, r)| (rs, &**r)), &ctx.inject)
        });
        let injected = target.is_some() || restore.is_some();
        let desired = desired.map(|d| inject::with_service_account(&d, W::KIND, &name, injected));
        let desired = match desired {
            Ok(d) => d,
            Err(e) => {
                ctx.events
                    .publish(
                        &reference,
                        Severity::Warning,
                        "InjectionFailed",
                        e.to_string(),
                    )
                    .await;
                return Err(e.into());
            }
        };
        let restore_annotation = restore
            .as_ref()
            .map(|(rs, _)| inject::last_applied_restore(rs));
        let current_restore_annotation = w
            .annotations()
            .get(consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION)
            .cloned();
        let desired_annotation = target.as_ref().map(|(bc, _)| last_applied(bc));
        let current_annotation = w
            .annotations()
            .get(consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION)
            .cloned();
        // The agents' own ServiceAccount exists before any pod runs as it.
        let sa = inject::service_account(&desired);
        let dedicated = inject::dedicated_service_account(W::KIND, &name);
        if injected && sa == dedicated {
            crate::jobs::ensure_service_account(
                &ctx.client,
                &ns,
                &dedicated,
                &Default::default(),
                w.controller_owner_ref(&()),
            )
            .await?;
        }
        // RBAC: the agents' narrow Roles, bound to the dedicated ServiceAccount, or to the one
        // the workload runs as when the BackupConfiguration (RestoreSession) names it in
        // runtimeSettings.pod.serviceAccountName; never to `default` or another account.
        // Grants come before the workload is replaced, so the pods it starts find their Roles
        // bound (an agent that starts first gets 403s and restarts with the kubelet's back-off);
        // refusals and revocations come after, once no new pod starts with the agent.
        let named_by = |rt: Option<&stash_crds::runtime::RuntimeSettings>| {
            rt.and_then(|r| r.pod.as_ref())
                .and_then(|p| p.service_account_name.clone())
                .is_some_and(|n| n == sa)
        };
        let kind = Some(W::KIND);
        let sidecar = names::agent_role(kind, &name, rbac::SIDECAR_ROLE);
        let sidecar_grant = match &target {
            Some((bc, repo)) if sa == dedicated || named_by(bc.spec.runtime_settings.as_ref()) => {
                let lease = names::backup_lease(kind, &name);
                let sessions = stores::sidecar_sessions(stores, &ns, &bc.name_any());
                let sessions: Vec<&str> = sessions.iter().map(String::as_str).collect();
                let rules =
                    rbac::sidecar_rules(&bc.name_any(), &repo.name_any(), &lease, &sessions);
                AgentGrant::Bind { lease, rules }
            }
            Some((bc, _)) => AgentGrant::Refuse(format!(
                "the pods run as ServiceAccount {sa}, which BackupConfiguration {} does not name in runtimeSettings.pod.serviceAccountName: the sidecar is granted nothing",
                bc.name_any()
            )),
            None => AgentGrant::Revoke,
        };
        let init = names::agent_role(kind, &name, rbac::RESTORE_INIT_ROLE);
        let init_grant = match &restore {
            Some((rs, repo)) if sa == dedicated || named_by(rs.spec.runtime_settings.as_ref()) => {
                let lease = names::restore_lease(kind, &name);
                let rules =
                    rbac::restore_init_rules(&rs.name_any(), &repo.name_any(), Some(&lease));
                AgentGrant::Bind { lease, rules }
            }
            Some((rs, _)) => AgentGrant::Refuse(format!(
                "the pods run as ServiceAccount {sa}, which RestoreSession {} does not name in runtimeSettings.pod.serviceAccountName: the init-container is granted nothing",
                rs.name_any()
            )),
            None => AgentGrant::Revoke,
        };
        let grants = [(&sidecar, sidecar_grant), (&init, init_grant)];
        for (binding, grant) in &grants {
            if let AgentGrant::Bind { lease, rules } = grant {
                ensure_lease(ctx, &ns, lease, w.controller_owner_ref(&())).await?;
                rbac::grant(
                    &ctx.client,
                    &ns,
                    binding,
                    &sa,
                    rules.clone(),
                    w.controller_owner_ref(&()),
                )
                .await?;
            }
        }

        let api = Api::<W>::namespaced(ctx.client.clone(), &ns);
        let template_changes = !covers(&current, &desired);
        if template_changes
            || desired_annotation != current_annotation
            || restore_annotation != current_restore_annotation
        {
            let mut updated = (*w).clone();
            updated.set_template(desired.clone());
            match &desired_annotation {
                Some(a) => {
                    updated.annotations_mut().insert(
                        consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION.into(),
                        a.clone(),
                    );
                }
                None => {
                    updated
                        .annotations_mut()
                        .remove(consts::LAST_APPLIED_BACKUP_CONFIGURATION_ANNOTATION);
                }
            }
            match &restore_annotation {
                Some(a) => {
                    updated.annotations_mut().insert(
                        consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION.into(),
                        a.clone(),
                    );
                }
                None => {
                    updated
                        .annotations_mut()
                        .remove(consts::LAST_APPLIED_RESTORE_SESSION_ANNOTATION);
                }
            }
            if template_changes {
                updated.force_rolling_update();
            }
            // `replace` carries the resourceVersion we read: a concurrent change is a 409 and
            // the next reconcile starts from fresh data.
            api.replace(&name, &PostParams::default(), &updated).await?;
            if desired_annotation != current_annotation {
                let (reason, note) = match &target {
                    Some((bc, _)) => (
                        "SidecarInjected",
                        format!("backup sidecar for BackupConfiguration {}", bc.name_any()),
                    ),
                    None => (
                        "SidecarRemoved",
                        "no BackupConfiguration targets this workload any more".to_string(),
                    ),
                };
                ctx.events
                    .publish(&reference, Severity::Normal, reason, note)
                    .await;
            }
            if restore_annotation != current_restore_annotation {
                let (reason, note) = match &restore {
                    Some((rs, _)) => (
                        "InitContainerInjected",
                        format!(
                            "restore init-container for RestoreSession {}",
                            rs.name_any()
                        ),
                    ),
                    None => (
                        "InitContainerRemoved",
                        "no RestoreSession targets this workload any more".to_string(),
                    ),
                };
                ctx.events
                    .publish(&reference, Severity::Normal, reason, note)
                    .await;
            }
        }

        for (binding, grant) in grants {
            match grant {
                AgentGrant::Bind { .. } => {}
                AgentGrant::Refuse(msg) => {
                    ctx.events
                        .publish(
                            &reference,
                            Severity::Warning,
                            "ServiceAccountNotGranted",
                            msg,
                        )
                        .await;
                    rbac::revoke(&ctx.client, &ns, binding).await?;
                }
                AgentGrant::Revoke => rbac::revoke(&ctx.client, &ns, binding).await?,
            }
        }

        // ReplicaSets and ReplicationControllers do not replace pods on template change.
        if !W::rolls_out_itself() {
            self.replace_stale_pods(&w, &desired).await?;
        }
        Ok(Action::requeue(Duration::from_secs(600)))
    }
}

/// What one agent (the backup sidecar, the restore init-container) is granted.
enum AgentGrant {
    /// Its Role with `rules` bound to the pods' ServiceAccount, and the Lease it locks on.
    Bind {
        lease: String,
        rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule>,
    },
    /// The pods run as a ServiceAccount the object does not name: nothing (a Warning event).
    Refuse(String),
    /// No agent: its Role and binding removed.
    Revoke,
}

/// The RestoreSession for workload `name` of kind `W` and its Repository
/// ([`inject::applicable_restore`]), from the shared stores (the Repository fetched if its
/// store does not have it yet).
async fn applicable_restore<W: Workload>(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<Option<(RestoreSession, Arc<Repository>)>, Error> {
    let Some(rs) = stores::restore_for(&ctx.stores.restores, W::KIND, ns, name) else {
        return Ok(None);
    };
    let repo = rs.spec.repository.as_ref().map_or("", |r| r.name.as_str());
    let repo = stores::get_or_fetch(&ctx.stores.repositories, &ctx.client, ns, repo).await?;
    Ok(repo.map(|repo| (rs, repo)))
}

impl<W: Workload> Workloads<W> {
    /// Delete the pods of a ReplicaSet or ReplicationController that do not run the desired
    /// template's agents: a backup sidecar or a restore init-container added, changed or
    /// removed (a restore into a standalone ReplicaSet never ran when only the backup's hash
    /// counted). A LIST of the namespace's Pods, on purpose: the operator keeps no Pod store
    /// (every Pod of the cluster would be cached for the few standalone ReplicaSets and
    /// ReplicationControllers, which are the only kinds that get here).
    async fn replace_stale_pods(&self, w: &W, desired: &PodTemplateSpec) -> Result<(), Error> {
        let ns = w.namespace().unwrap_or_default();
        let pods = Api::<Pod>::namespaced(self.0.client.clone(), &ns);
        let want = hashes_of(desired.metadata.as_ref());
        let uid = w.uid();
        for pod in pods.list(&ListParams::default()).await? {
            let owned = pod
                .owner_references()
                .iter()
                .any(|o| Some(&o.uid) == uid.as_ref());
            if owned
                && pod.meta().deletion_timestamp.is_none()
                && hashes_of(Some(pod.meta())) != want
            {
                pods.delete(&pod.name_any(), &Default::default()).await?;
            }
        }
        Ok(())
    }
}

/// The workload controller of kind `W`: its own watch of `W`, and the shared
/// BackupConfiguration and RestoreSession watches as triggers (a configuration or restore that
/// targets a workload, changed, being deleted or deleted, reconciles that workload).
fn run<W: Workload>(
    ctx: Arc<Ctx>,
    feeds: &mut Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<W> {
    let configurations = feeds.configurations.triggers();
    let restores = feeds.restores.triggers();
    let sessions = feeds.sessions.triggers();
    let configurations_store = ctx.stores.configurations.clone();
    async move {
        let controller = Controller::new(
            Api::<W>::all(ctx.client.clone()),
            watcher::Config::default(),
        )
        .watches_shared_stream(configurations, |bc| {
            let t = bc.spec.target.as_ref()?;
            if WorkloadKind::of(&t.target_ref) != Some(W::KIND) {
                return None;
            }
            Some(ObjectRef::<W>::new(t.target_ref.name.as_deref()?).within(&bc.namespace()?))
        })
        .watches_shared_stream(restores, |rs| {
            let t = rs.spec.target.as_ref()?;
            if WorkloadKind::of(&t.target_ref) != Some(W::KIND) {
                return None;
            }
            Some(ObjectRef::<W>::new(t.target_ref.name.as_deref()?).within(&rs.namespace()?))
        })
        // A session created, started or finished changes which sessions the sidecar's Role
        // names: this controller is the Role's only writer.
        .watches_shared_stream(sessions, move |bs| {
            let ns = bs.namespace()?;
            let bc = stores::get(&configurations_store, &ns, &bs.spec.configuration_name())?;
            let t = bc.spec.target.as_ref()?;
            if WorkloadKind::of(&t.target_ref) != Some(W::KIND) {
                return None;
            }
            Some(ObjectRef::<W>::new(t.target_ref.name.as_deref()?).within(&ns))
        });
        stash_runtime::drive(
            controller,
            Workloads::<W>(ctx.clone(), std::marker::PhantomData),
            ctx.metrics.clone(),
            ctx.events.clone(),
        )
        .await;
    }
}

/// Run the controllers of every workload kind (DeploymentConfig only exists on OpenShift and
/// is not watched here); subscribed to the shared watches now, driven when the returned future
/// runs.
pub fn run_all(
    ctx: Arc<Ctx>,
    feeds: &mut Feeds,
) -> impl std::future::Future<Output = ()> + Send + use<> {
    let deployments = run::<Deployment>(ctx.clone(), feeds);
    let statefulsets = run::<StatefulSet>(ctx.clone(), feeds);
    let daemonsets = run::<DaemonSet>(ctx.clone(), feeds);
    let replicasets = run::<ReplicaSet>(ctx.clone(), feeds);
    let replicationcontrollers = run::<ReplicationController>(ctx, feeds);
    async move {
        tokio::join!(
            deployments,
            statefulsets,
            daemonsets,
            replicasets,
            replicationcontrollers,
        );
    }
}

/// Create the empty Lease `name` the agents serialise on, so their Role need not grant
/// `create` (which cannot be limited by name).
async fn ensure_lease(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<(), Error> {
    let lease = k8s_openapi::api::coordination::v1::Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: None,
    };
    crate::jobs::create_if_absent(
        &Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(ctx.client.clone(), ns),
        &lease,
    )
    .await?;
    Ok(())
}

/// What [`stash_core::target::hosts`] needs of target workload `kind`/`name`: a GET of the
/// StatefulSet or DaemonSet (the workload controllers' caches are their own); nothing for
/// other kinds.
pub(crate) async fn scale_of(
    ctx: &Ctx,
    kind: Option<WorkloadKind>,
    ns: &str,
    name: &str,
) -> Result<stash_core::target::WorkloadScale, Error> {
    let mut scale = stash_core::target::WorkloadScale::default();
    match kind {
        Some(WorkloadKind::StatefulSet) => {
            let sts = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await?;
            scale.replicas = sts.and_then(|s| s.spec).and_then(|s| s.replicas);
        }
        Some(WorkloadKind::DaemonSet) => {
            let ds = Api::<DaemonSet>::namespaced(ctx.client.clone(), ns)
                .get_opt(name)
                .await?;
            scale.scheduled = ds
                .and_then(|d| d.status)
                .map(|s| s.desired_number_scheduled);
        }
        _ => {}
    }
    Ok(scale)
}

/// Whether the sidecar's Role lets it report to BackupSession `session` of `bc`, as the shared
/// store holds the Role: `true` when it names the session or when the workload has no sidecar
/// Role (nothing was granted: the workload controller said why in an Event). The Role has one
/// writer, the workload controller, which a new session triggers ([`run`]); the BackupSession
/// controller only waits for it ([`stash_machines::backup_session::Action::GrantSidecars`]).
pub(crate) fn sidecar_may_report(ctx: &Ctx, bc: &BackupConfiguration, session: &str) -> bool {
    let Some(t) = bc.spec.target.as_ref() else {
        return true;
    };
    let Some(kind) = WorkloadKind::of(&t.target_ref) else {
        return true;
    };
    let workload = t.target_ref.name.clone().unwrap_or_default();
    let role = names::agent_role(Some(kind), &workload, rbac::SIDECAR_ROLE);
    let ns = bc.namespace().unwrap_or_default();
    stores::role_names_session(&ctx.stores, &ns, &role, session).unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn template(v: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(v).expect("template")
    }

    #[test]
    fn a_stored_template_with_the_servers_defaults_covers_what_was_written() {
        let written = template(json!({"spec": {
            "containers": [{"name": "stash", "image": "s", "args": ["run-backup"]}],
            "volumes": [{"name": "secret", "secret": {"secretName": "x"}}],
        }}));
        let stored = template(json!({"spec": {
            "containers": [{"name": "stash", "image": "s", "args": ["run-backup"],
                            "terminationMessagePath": "/dev/termination-log",
                            "imagePullPolicy": "IfNotPresent", "resources": {}}],
            "volumes": [{"name": "secret", "secret": {"secretName": "x", "defaultMode": 420}}],
            "restartPolicy": "Always",
        }}));
        assert!(covers(&stored, &written));
        assert!(
            !covers(&written, &stored),
            "the other way round it does not"
        );
        let changed = template(json!({"spec": {
            "containers": [{"name": "stash", "image": "s", "args": ["run-backup", "--new"]}],
            "volumes": [{"name": "secret", "secret": {"secretName": "x"}}],
        }}));
        assert!(!covers(&stored, &changed), "a changed list is a change");
        let removed = template(json!({"spec": {
            "containers": [],
            "volumes": [{"name": "secret", "secret": {"secretName": "x"}}],
        }}));
        assert!(
            !covers(&stored, &removed),
            "a removed container is a change"
        );
    }
}
