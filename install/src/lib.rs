//! Everything a cluster needs to run stash-rs, rendered as plain manifests.
//!
//! [`render`] returns one deterministic multi-document YAML stream (keys sorted, objects in a
//! fixed order): the Namespace, the CRDs, the operator's ServiceAccount and least-privilege
//! RBAC, the Services, the Deployments (the operator; one pushgateway), the
//! PodDisruptionBudget, both webhook configurations and the Snapshot API's APIService; a
//! NetworkPolicy for the webhook port only when told the API server's source range
//! (`--apiserver-cidr`, off by default: the committed manifest installs on any cluster).
//! `deploy/install/stash-rs.yaml` is [`render`] with the default [`InstallOptions`]; the Helm
//! chart `deploy/helm/stash-rs` renders the same objects (both are checked by this crate's
//! tests).
//!
//! What is taken from the operator itself rather than restated: the webhook configurations
//! ([`stash_admission::register`]), the names of the ClusterRoles the operator maintains
//! ([`stash_operator::rbac`], [`stash_operator::jobs::rbac`]) and the certificate Secret names, so the
//! manifests cannot drift from what the operator does at run time.
use serde_json::{Value, json};
use stash_admission::register::{self, Endpoint};

/// Name of the ServiceAccount, ClusterRole, Role, Service, Deployment and PDB.
pub const NAME: &str = "stash-operator";
/// Port of the admission webhooks (Service port 443).
pub const WEBHOOK_PORT: u16 = 8443;
/// The optional ConfigMap (in the operator's namespace) with the CA that signs the API
/// server's webhook client certificate (`ca.crt`) and the names allowed (`allowed-names`):
/// created by the cluster admin where kube-apiserver presents one (docs/security.md); absent,
/// the webhooks answer any TLS client.
pub const WEBHOOK_CLIENT_AUTH_CONFIGMAP: &str = "stash-webhook-client-auth";
/// Where the operator container sees it.
pub const WEBHOOK_CLIENT_AUTH_DIR: &str = "/etc/stash/webhook-client-auth";
/// Port of the Snapshot API (Service port of the same number).
pub const SNAPSHOT_API_PORT: u16 = 8444;
/// Port of `/metrics`, `/healthz`, `/readyz`.
pub const METRICS_PORT: u16 = 8080;
/// Name of the pushgateway's Deployment and Service (one replica: every agent pushes to, and
/// Prometheus scrapes, the same instance).
pub const PUSHGATEWAY_NAME: &str = "stash-pushgateway";
/// Port of the pushgateway.
pub const PUSHGATEWAY_PORT: u16 = 56789;
/// The APIService of the Snapshot API.
pub const SNAPSHOT_APISERVICE: &str = "v1alpha1.repositories.stash.appscode.com";

/// What can be chosen at install time.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct InstallOptions {
    /// Namespace of the operator.
    #[arg(long, default_value = "stash-system")]
    pub namespace: String,
    /// The operator image (also the image of every container the operator injects or creates).
    #[arg(long, default_value = concat!("stash-rs/stash:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// Pull policy of the operator image.
    #[arg(long, default_value = "IfNotPresent")]
    pub image_pull_policy: String,
    /// The pushgateway sidecar's image.
    #[arg(long, default_value = "prom/pushgateway:v1.11.3")]
    pub pushgateway_image: String,
    /// Operator replicas (one leads; the others wait for the Lease).
    #[arg(long, default_value_t = 2)]
    pub replicas: i32,
    /// `minAvailable` of the PodDisruptionBudget.
    #[arg(long, default_value_t = 1)]
    pub pdb_min_available: i32,
    /// Serve and register the admission webhooks.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub webhook: bool,
    /// Serve and register the Snapshot API (repositories.stash.appscode.com).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub snapshot_api: bool,
    /// Source range of the kube-apiserver's webhook calls (repeatable). Given at least once, a
    /// NetworkPolicy `stash-operator` admits only these ranges to the webhook port; not given
    /// (the default), no NetworkPolicy is rendered (docs/security.md).
    #[arg(long = "apiserver-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub apiserver_cidrs: Vec<String>,
}

/// `--apiserver-cidr`: an IPv4 or IPv6 address with a prefix length (`10.0.0.0/24`,
/// `fd00::/64`, `192.0.2.10/32`), as a NetworkPolicy `ipBlock.cidr` takes it.
pub fn parse_cidr(s: &str) -> Result<String, String> {
    let (addr, len) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not a CIDR (address/prefix-length, e.g. 10.0.0.0/24)"))?;
    let addr: std::net::IpAddr = addr
        .parse()
        .map_err(|e| format!("{s:?}: address {addr:?}: {e}"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(n) if n <= max && len == n.to_string() => Ok(s.to_string()),
        _ => Err(format!("{s:?}: prefix length {len:?} is not 0..={max}")),
    }
}

impl Default for InstallOptions {
    fn default() -> Self {
        Self {
            namespace: "stash-system".into(),
            image: concat!("stash-rs/stash:", env!("CARGO_PKG_VERSION")).into(),
            image_pull_policy: "IfNotPresent".into(),
            pushgateway_image: "prom/pushgateway:v1.11.3".into(),
            replicas: 2,
            pdb_min_available: 1,
            webhook: true,
            snapshot_api: true,
            apiserver_cidrs: Vec::new(),
        }
    }
}

/// The labels every rendered object carries (the Helm chart adds `helm.sh/chart` and
/// `app.kubernetes.io/managed-by: Helm`).
pub fn labels() -> Value {
    json!({"app.kubernetes.io/name": "stash", "app.kubernetes.io/part-of": "stash-rs"})
}

fn labels_with(component: &str) -> Value {
    let mut l = labels();
    l["app.kubernetes.io/component"] = json!(component);
    l
}

fn selector() -> Value {
    json!({"app.kubernetes.io/name": "stash", "app.kubernetes.io/component": "operator"})
}

fn meta(name: &str, namespace: Option<&str>) -> Value {
    let mut m = json!({"name": name, "labels": labels()});
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn named_rule(groups: &[&str], resources: &[&str], names: &[String], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "resourceNames": names, "verbs": verbs})
}

/// The operator's allocator settings (glibc): large buffers (a watch's event, a list page) are
/// mapped and unmapped on their own instead of growing the heap, and the heap is returned to
/// the system above 128 KiB free, on at most two arenas. At 1,000 configurations and 10,000
/// sessions this keeps the operator's peak RSS ~2.3 MiB lower (the scale benchmark, issue 12).
pub const MALLOC_TUNABLES: &str = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=131072:glibc.malloc.arena_max=2";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE_WORKLOAD: &[&str] = &["get", "list", "watch", "update", "patch"];
const ALL_OWN: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const STATUS: &[&str] = &["get", "update", "patch"];
const EVENTS: &[&str] = &["create", "update", "patch"];

/// Every rule the operator grants to the pods it runs (sample names): the narrow Roles of
/// [`stash_operator::rbac`]. The operator holds each of them itself, so it needs neither
/// `escalate` nor `bind` ([`operator_holds`] checks it).
pub fn granted_rules() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    stash_operator::rbac::sample_rules()
}

/// The operator's cluster-wide permissions: explicit verbs on explicit resources, no
/// wildcards; the webhook configurations and the APIService by name.
pub fn cluster_role() -> Value {
    let stash_kinds = [
        "backupconfigurations",
        "backupsessions",
        "restoresessions",
        "repositories",
        "functions",
        "tasks",
        "backupconfigurationtemplates",
        "backupblueprints",
    ];
    let rules = vec![
        rule(&["stash.appscode.com"], &stash_kinds, ALL_OWN),
        rule(
            &["stash.appscode.com"],
            &[
                "backupconfigurations/status",
                "backupsessions/status",
                "restoresessions/status",
                "repositories/status",
            ],
            STATUS,
        ),
        // blockOwnerDeletion on objects owned by these (OwnerReferencesPermissionEnforcement).
        rule(
            &["stash.appscode.com"],
            &[
                "backupconfigurations/finalizers",
                "backupsessions/finalizers",
                "restoresessions/finalizers",
            ],
            &["update"],
        ),
        rule(&["appcatalog.appscode.com"], &["appbindings"], READ),
        rule(
            &["apps"],
            &["deployments", "statefulsets", "daemonsets", "replicasets"],
            WRITE_WORKLOAD,
        ),
        rule(&[""], &["replicationcontrollers"], WRITE_WORKLOAD),
        rule(
            &["apps.openshift.io"],
            &["deploymentconfigs"],
            WRITE_WORKLOAD,
        ),
        // Pods: replaced for ReplicaSets/ReplicationControllers; the Snapshot API's reader Pods
        // for local backends (created, read through their log, deleted).
        rule(
            &[""],
            &["pods"],
            &["get", "list", "watch", "create", "delete"],
        ),
        rule(&[""], &["pods/log"], &["get"]),
        rule(
            &[""],
            &["persistentvolumeclaims"],
            &["get", "list", "watch", "create"],
        ),
        rule(&[""], &["namespaces"], READ),
        // Storage Secrets of Repositories (Snapshot API) and of AppBindings: read only.
        rule(&[""], &["secrets"], &["get"]),
        rule(&[""], &["serviceaccounts"], &["get", "create", "patch"]),
        rule(&["", "events.k8s.io"], &["events"], EVENTS),
        rule(
            &["batch"],
            &["jobs"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(&["batch"], &["cronjobs"], ALL_OWN),
        // The agents' narrow Roles and their RoleBindings. No `escalate`, no `bind`: the
        // operator holds every permission it grants (`operator_holds`).
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles"],
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        rule(
            &["rbac.authorization.k8s.io"],
            &["rolebindings"],
            &["get", "create", "patch", "delete"],
        ),
        // The agents' Leases, created empty so their Roles grant get/update by name only.
        rule(
            &["coordination.k8s.io"],
            &["leases"],
            &["get", "create", "update"],
        ),
        named_rule(
            &["admissionregistration.k8s.io"],
            &[
                "mutatingwebhookconfigurations",
                "validatingwebhookconfigurations",
            ],
            &[register::CONFIGURATION_NAME.to_string()],
            &["get", "create", "update", "patch", "delete"],
        ),
        named_rule(
            &["apiregistration.k8s.io"],
            &["apiservices"],
            &[SNAPSHOT_APISERVICE.to_string()],
            &["get", "create", "update", "patch", "delete"],
        ),
    ];
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": meta(NAME, None),
        "rules": rules,
    })
}

/// The operator's permissions in its own namespace: the leader-election Lease, its
/// certificate Secrets and Services.
pub fn role(ns: &str) -> Value {
    let secrets = [
        stash_admission::CERT_SECRET.to_string(),
        stash_snapshots::CERT_SECRET.to_string(),
    ];
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": meta(NAME, Some(ns)),
        "rules": [
            rule(&["coordination.k8s.io"], &["leases"], &["get", "list", "watch", "create", "update", "patch"]),
            // A POST cannot be limited by name: create is namespace-wide, the rest by name.
            rule(&[""], &["secrets"], &["create"]),
            named_rule(&[""], &["secrets"], &secrets, &["get", "update", "patch"]),
            rule(&[""], &["services"], &["get", "create", "update", "patch"]),
        ],
    })
}

fn sa_subject(ns: &str) -> Value {
    json!([{"kind": "ServiceAccount", "name": NAME, "namespace": ns}])
}

fn binding(
    kind: &str,
    name: &str,
    ns: Option<&str>,
    role_kind: &str,
    role: &str,
    sa_ns: &str,
) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
        "metadata": meta(name, ns),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": sa_subject(sa_ns),
    })
}

/// The operator container's arguments.
pub fn operator_args(o: &InstallOptions) -> Vec<String> {
    let ns = &o.namespace;
    let mut a = vec![
        "run".to_string(),
        "--namespace=$(POD_NAMESPACE)".into(),
        format!("--image={}", o.image),
        format!("--metrics-addr=0.0.0.0:{METRICS_PORT}"),
        format!("--pushgateway-url=http://{PUSHGATEWAY_NAME}.{ns}.svc:{PUSHGATEWAY_PORT}"),
    ];
    if o.webhook {
        a.push(format!("--webhook-addr=0.0.0.0:{WEBHOOK_PORT}"));
        a.push(format!("--webhook-service={ns}/{NAME}:443"));
        a.push("--enable-validating-webhook=true".into());
        a.push("--enable-mutating-webhook=true".into());
        a.push(format!(
            "--webhook-client-ca-file={WEBHOOK_CLIENT_AUTH_DIR}/ca.crt"
        ));
        a.push(format!(
            "--webhook-client-allowed-names-file={WEBHOOK_CLIENT_AUTH_DIR}/allowed-names"
        ));
    }
    if o.snapshot_api {
        a.push(format!("--snapshot-api-addr=0.0.0.0:{SNAPSHOT_API_PORT}"));
        a.push(format!("--snapshot-api-service={NAME}"));
    }
    a
}

fn deployment(o: &InstallOptions) -> Value {
    let ns = &o.namespace;
    let mut ports =
        vec![json!({"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"})];
    if o.webhook {
        ports.push(json!({"name": "webhook", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}));
    }
    if o.snapshot_api {
        ports.push(
            json!({"name": "snapshot-api", "containerPort": SNAPSHOT_API_PORT, "protocol": "TCP"}),
        );
    }
    let field_env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}});
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let probe = |path: &str, initial: u32| {
        json!({"httpGet": {"path": path, "port": "metrics", "scheme": "HTTP"},
               "initialDelaySeconds": initial, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3})
    };
    let mut mounts = vec![json!({"name": "tmp", "mountPath": "/tmp"})];
    let mut volumes = vec![json!({"name": "tmp", "emptyDir": {}})];
    if o.webhook {
        mounts.push(json!({"name": "webhook-client-auth", "mountPath": WEBHOOK_CLIENT_AUTH_DIR, "readOnly": true}));
        volumes.push(json!({"name": "webhook-client-auth",
                            "configMap": {"name": WEBHOOK_CLIENT_AUTH_CONFIGMAP, "optional": true}}));
    }
    let operator = json!({
        "name": "operator",
        "image": o.image,
        "imagePullPolicy": o.image_pull_policy,
        "args": operator_args(o),
        "env": [field_env("POD_NAME", "metadata.name"), field_env("POD_NAMESPACE", "metadata.namespace"),
                {"name": "RUST_LOG", "value": "info"},
                {"name": "GLIBC_TUNABLES", "value": MALLOC_TUNABLES}],
        "ports": ports,
        "readinessProbe": probe("/readyz", 5),
        "livenessProbe": probe("/healthz", 15),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": restricted,
        "volumeMounts": mounts,
    });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels_with("operator")},
        "spec": {
            "replicas": o.replicas,
            "selector": {"matchLabels": selector()},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels_with("operator")},
                "spec": {
                    "serviceAccountName": NAME,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [operator],
                    "volumes": volumes,
                    "terminationGracePeriodSeconds": 30,
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
                        "weight": 100,
                        "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": selector()}},
                    }]}},
                },
            },
        },
    })
}

fn pushgateway_selector() -> Value {
    json!({"app.kubernetes.io/name": "stash", "app.kubernetes.io/component": "pushgateway"})
}

/// The Prometheus pushgateway the agents push to: one replica (a Service over several would
/// spread one session's hosts over instances), its metrics persisted in an emptyDir.
fn pushgateway_deployment(o: &InstallOptions) -> Value {
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": {"drop": ["ALL"]},
    });
    let pushgateway = json!({
        "name": "pushgateway",
        "image": o.pushgateway_image,
        "imagePullPolicy": "IfNotPresent",
        "args": [format!("--web.listen-address=:{PUSHGATEWAY_PORT}"),
                 "--persistence.file=/var/pushgateway/metrics", "--persistence.interval=1m"],
        "ports": [{"name": "pushgateway", "containerPort": PUSHGATEWAY_PORT, "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "pushgateway", "scheme": "HTTP"},
                           "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": restricted,
        "volumeMounts": [{"name": "pushgateway-data", "mountPath": "/var/pushgateway"}],
    });
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": PUSHGATEWAY_NAME, "namespace": o.namespace, "labels": labels_with("pushgateway")},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": pushgateway_selector()},
            "strategy": {"type": "Recreate"},
            "template": {
                "metadata": {"labels": labels_with("pushgateway")},
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534, "fsGroup": 65534,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [pushgateway],
                    "volumes": [{"name": "pushgateway-data", "emptyDir": {}}],
                },
            },
        },
    })
}

fn pushgateway_service(o: &InstallOptions) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": PUSHGATEWAY_NAME, "namespace": o.namespace, "labels": labels_with("pushgateway")},
        "spec": {"type": "ClusterIP", "selector": pushgateway_selector(),
                 "ports": [{"name": "pushgateway", "port": PUSHGATEWAY_PORT, "targetPort": "pushgateway", "protocol": "TCP"}]},
    })
}

fn service(o: &InstallOptions) -> Value {
    let mut ports = vec![
        json!({"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}),
    ];
    if o.webhook {
        ports.insert(
            0,
            json!({"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"}),
        );
    }
    if o.snapshot_api {
        ports.push(json!({"name": "snapshot-api", "port": SNAPSHOT_API_PORT, "targetPort": "snapshot-api", "protocol": "TCP"}));
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": NAME, "namespace": o.namespace, "labels": labels_with("operator")},
        "spec": {"type": "ClusterIP", "selector": selector(), "ports": ports},
    })
}

/// Only the API server may reach the webhook port (defence in depth: the server also
/// requires the API server's client certificate where the cluster provides one); metrics and
/// the Snapshot API (which authenticates its callers itself) stay open. Rendered only when the
/// install is told the API server's source range ([`InstallOptions::apiserver_cidrs`]): a
/// guessed range would, under an enforcing CNI, cut the API server off from the webhooks
/// (every create of a stash kind refused, sidecar injection skipped).
fn network_policy(o: &InstallOptions) -> Value {
    let from: Vec<Value> = o
        .apiserver_cidrs
        .iter()
        .map(|c| json!({"ipBlock": {"cidr": c}}))
        .collect();
    let mut open = vec![json!({"port": "metrics", "protocol": "TCP"})];
    if o.snapshot_api {
        open.push(json!({"port": "snapshot-api", "protocol": "TCP"}));
    }
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": NAME, "namespace": o.namespace, "labels": labels_with("operator")},
        "spec": {
            "podSelector": {"matchLabels": selector()},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"ports": [{"port": "webhook", "protocol": "TCP"}], "from": from},
                {"ports": open},
            ],
        },
    })
}

fn pdb(o: &InstallOptions) -> Value {
    json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": NAME, "namespace": o.namespace, "labels": labels_with("operator")},
        "spec": {"minAvailable": o.pdb_min_available, "selector": {"matchLabels": selector()},
                 "unhealthyPodEvictionPolicy": "AlwaysAllow"},
    })
}

/// The webhook configurations as the operator applies them, without a `caBundle` (the
/// operator writes it when its certificate is issued).
fn webhook_configurations(o: &InstallOptions) -> Vec<Value> {
    let endpoint = Endpoint::Service {
        namespace: o.namespace.clone(),
        name: NAME.into(),
        port: 443,
    };
    let name = register::CONFIGURATION_NAME;
    let strip = |mut v: Value, kind: &str, api: &str| {
        v["apiVersion"] = json!(api);
        v["kind"] = json!(kind);
        v["metadata"]["labels"] = labels();
        for h in v["webhooks"].as_array_mut().into_iter().flatten() {
            if let Some(cc) = h["clientConfig"].as_object_mut() {
                cc.remove("caBundle");
            }
        }
        v
    };
    let api = "admissionregistration.k8s.io/v1";
    vec![
        strip(
            serde_json::to_value(register::mutating_configuration(name, &endpoint, ""))
                .expect("serializes"),
            "MutatingWebhookConfiguration",
            api,
        ),
        strip(
            serde_json::to_value(register::validating_configuration(name, &endpoint, ""))
                .expect("serializes"),
            "ValidatingWebhookConfiguration",
            api,
        ),
    ]
}

fn apiservice(o: &InstallOptions) -> Value {
    json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": SNAPSHOT_APISERVICE, "labels": labels_with("snapshot-api")},
        "spec": {
            "group": stash_crds::consts::SNAPSHOT_GROUP, "version": "v1alpha1",
            "groupPriorityMinimum": 1000, "versionPriority": 15,
            "service": {"namespace": o.namespace, "name": NAME, "port": SNAPSHOT_API_PORT},
        },
    })
}

/// Every object, in apply order (CRDs after the Namespace, webhooks and APIService last).
pub fn objects(o: &InstallOptions) -> Vec<Value> {
    let ns = o.namespace.as_str();
    let mut v = vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None)})];
    v.extend(
        stash_crds::crds()
            .into_iter()
            .map(|c| serde_json::to_value(c).expect("CRD serializes")),
    );
    v.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME, Some(ns))}));
    v.push(cluster_role());
    v.push(binding(
        "ClusterRoleBinding",
        NAME,
        None,
        "ClusterRole",
        NAME,
        ns,
    ));
    // SubjectAccessReviews and TokenReviews for the aggregated API (a built-in, minimal role).
    v.push(binding(
        "ClusterRoleBinding",
        &format!("{NAME}:auth-delegator"),
        None,
        "ClusterRole",
        "system:auth-delegator",
        ns,
    ));
    v.push(role(ns));
    v.push(binding("RoleBinding", NAME, Some(ns), "Role", NAME, ns));
    // The request-header CA of the front proxy (kube-system/extension-apiserver-authentication).
    v.push(binding(
        "RoleBinding",
        &format!("{NAME}:extension-apiserver-authentication-reader"),
        Some("kube-system"),
        "Role",
        "extension-apiserver-authentication-reader",
        ns,
    ));
    v.push(service(o));
    v.push(deployment(o));
    v.push(pushgateway_service(o));
    v.push(pushgateway_deployment(o));
    v.push(pdb(o));
    if o.webhook {
        if !o.apiserver_cidrs.is_empty() {
            v.push(network_policy(o));
        }
        v.extend(webhook_configurations(o));
    }
    if o.snapshot_api {
        v.push(apiservice(o));
    }
    v.into_iter().map(sorted).collect()
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// [`objects`] as one multi-document YAML stream, deterministic.
pub fn render(o: &InstallOptions) -> String {
    let mut out = String::from(
        "# stash-rs: everything a cluster needs. Generated by `cargo run -p stash-install`; do not edit.\n",
    );
    for obj in objects(o) {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&obj).expect("renders as YAML"));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

/// `kind/namespace/name` of an object (for messages and comparisons).
pub fn key(obj: &Value) -> String {
    format!(
        "{}/{}/{}",
        obj["kind"].as_str().unwrap_or("?"),
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Every ClusterRole/Role: no `*` verb, resource or group; nothing bound to cluster-admin
/// (or any other role but our own and the two built-in minimal ones).
pub fn rbac_problems(objs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in objs {
        let k = key(o);
        match o["kind"].as_str() {
            Some("ClusterRole" | "Role") => {
                for r in o["rules"].as_array().into_iter().flatten() {
                    let strs = |f: &str| -> Vec<String> {
                        r[f].as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(String::from))
                            .collect()
                    };
                    let (groups, resources, verbs) =
                        (strs("apiGroups"), strs("resources"), strs("verbs"));
                    if verbs.iter().any(|v| v == "*") {
                        problems.push(format!("{k}: wildcard verb on {groups:?} {resources:?}"));
                    }
                    if resources.iter().any(|x| x.contains('*')) || groups.iter().any(|g| g == "*")
                    {
                        problems.push(format!(
                            "{k}: wildcard resource or group {groups:?} {resources:?}"
                        ));
                    }
                    if r.get("nonResourceURLs").is_some() {
                        problems.push(format!("{k}: nonResourceURLs"));
                    }
                    for v in ["escalate", "bind", "impersonate"] {
                        if verbs.iter().any(|x| x == v) {
                            problems.push(format!("{k}: {v} on {groups:?} {resources:?}"));
                        }
                    }
                    for (group, res) in [("", "secrets")] {
                        if groups.iter().any(|g| g == group)
                            && resources.iter().any(|x| x == res)
                            && verbs.iter().any(|v| v == "list" || v == "watch")
                            && o["kind"] == "ClusterRole"
                        {
                            problems.push(format!("{k}: lists {res} cluster-wide"));
                        }
                    }
                }
            }
            Some("ClusterRoleBinding" | "RoleBinding") => {
                let role = o["roleRef"]["name"].as_str().unwrap_or("");
                let allowed = [
                    "stash-operator",
                    "system:auth-delegator",
                    "extension-apiserver-authentication-reader",
                ];
                if !allowed.contains(&role) {
                    problems.push(format!("{k}: binds {role}"));
                }
            }
            _ => {}
        }
    }
    if let Some(cr) = objs
        .iter()
        .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == NAME)
    {
        problems.extend(operator_holds(cr));
    }
    problems
}

/// What the operator grants but does not hold (it would need `escalate` or `bind`): every
/// group × resource × verb × name of [`granted_rules`] must be covered by a rule of the
/// operator's ClusterRole `cr`.
pub fn operator_holds(cr: &Value) -> Vec<String> {
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let held: Vec<[Vec<String>; 4]> = cr["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            [
                strs(&r["apiGroups"]),
                strs(&r["resources"]),
                strs(&r["verbs"]),
                strs(&r["resourceNames"]),
            ]
        })
        .collect();
    let mut missing = Vec::new();
    for g in granted_rules() {
        let names = g.resource_names.clone().unwrap_or_default();
        for group in g.api_groups.iter().flatten() {
            for res in g.resources.iter().flatten() {
                for verb in &g.verbs {
                    let covered = held.iter().any(|[hg, hr, hv, hn]| {
                        hg.contains(group)
                            && hr.contains(res)
                            && hv.contains(verb)
                            && (hn.is_empty()
                                || (!names.is_empty() && names.iter().all(|n| hn.contains(n))))
                    });
                    if !covered {
                        missing.push(format!(
                            "the operator grants but does not hold {verb} {group}/{res}"
                        ));
                    }
                }
            }
        }
    }
    missing
}
