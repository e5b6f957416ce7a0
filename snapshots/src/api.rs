//! The HTTP side of the Snapshot API: discovery, OpenAPI, health, and `get`/`list`/`delete`
//! of `snapshots` answered from the [`Catalog`], as JSON objects, `meta.k8s.io/v1` Tables
//! (what `kubectl get` asks for) or partial-object metadata; errors as `metav1.Status`.
use std::{
    collections::BTreeMap,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use axum::{
    Extension, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::ResourceExt;
use serde_json::{Value, json};
use stash_crds::{
    Repository, Snapshot, SnapshotStatus,
    consts::SNAPSHOT_GROUP,
    snapshot::{SNAPSHOT_API_VERSION, SNAPSHOT_KIND, SNAPSHOT_PLURAL, parse_snapshot_name},
};
use stash_machines::snapshots;
use stash_restic as restic;
use stash_runtime::aggregated::PeerCertificates;

use super::{
    auth::{Attributes, Authorizer, Decision, RequestHeaderConfig, UserInfo},
    catalog::Catalog,
    selector::{FieldSelector, Selector},
};

/// How long a Snapshot delete's request waits for its `restic forget --prune` (background work
/// of the Repository) before it is answered `202 Accepted`: well inside the API server's 60 s.
const DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

/// The API version served.
pub const VERSION: &str = "v1alpha1";
const GROUP_VERSION: &str = SNAPSHOT_API_VERSION;

/// What the handlers need.
pub struct ApiState {
    /// The snapshot catalog.
    pub catalog: Catalog,
    /// Front-proxy authentication.
    pub authn: RequestHeaderConfig,
    /// Delegated authorization.
    pub authz: Authorizer,
}

/// The router: one handler routes everything (so that unknown methods get a Status, not a bare
/// 405 from the router).
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

// ---------------------------------------------------------------------------------------------
// Responses

/// How long a list waits for restic per repository (well under the API server's proxy
/// timeout); a slower read goes on in the background for the next request.
const READ_BUDGET: Duration = Duration::from_secs(15);

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

/// A `metav1.Status` failure.
#[derive(Debug)]
pub struct Failure {
    /// HTTP code.
    pub code: StatusCode,
    /// `reason` (NotFound, BadRequest, Forbidden, ...).
    pub reason: &'static str,
    /// Human message.
    pub message: String,
    /// `details` (name, group, kind).
    pub details: Option<Value>,
}

impl Failure {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn details(mut self, name: &str, group: &str, kind: &str) -> Self {
        self.details = Some(json!({"name": name, "group": group, "kind": kind}));
        self
    }

    fn not_found_snapshot(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{SNAPSHOT_PLURAL}.{SNAPSHOT_GROUP} \"{name}\" not found"),
        )
        .details(name, SNAPSHOT_GROUP, SNAPSHOT_PLURAL)
    }

    fn not_found_repository(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("repositories.stash.appscode.com \"{name}\" not found"),
        )
        .details(name, "stash.appscode.com", "repositories")
    }

    fn method_not_allowed(what: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{what} is not supported on {SNAPSHOT_PLURAL}.{SNAPSHOT_GROUP}"),
        )
    }

    fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let mut body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        });
        if let Some(d) = self.details {
            body["details"] = d;
        }
        json_response(self.code, &body)
    }
}

// ---------------------------------------------------------------------------------------------
// Objects

/// The Snapshot object of restic snapshot `s` in `repo` (stash-api.md §8.1).
pub fn snapshot_object(repo: &Repository, s: &restic::Snapshot) -> Snapshot {
    let name = repo.name_any();
    let mut labels: BTreeMap<String, String> = repo.labels().clone();
    labels.insert("repository".into(), name.clone());
    Snapshot::new(
        ObjectMeta {
            name: Some(Snapshot::name_for(&name, &s.id)),
            namespace: repo.namespace(),
            uid: Some(s.id.clone()),
            creation_timestamp: Some(Time(s.time)),
            labels: Some(labels),
            ..Default::default()
        },
        SnapshotStatus {
            tree: s.tree.clone(),
            paths: s.paths.clone(),
            hostname: s.hostname.clone(),
            username: s.username.clone(),
            uid: i32::try_from(s.uid).unwrap_or(i32::MAX),
            gid: i32::try_from(s.gid).unwrap_or(i32::MAX),
            tags: s.tags.clone(),
        },
    )
}

/// The labels a list's selector is evaluated against: `{repository: name} ∪ repo labels`.
fn repo_labels(repo: &Repository) -> BTreeMap<String, String> {
    let mut labels = repo.labels().clone();
    labels.insert("repository".into(), repo.name_any());
    labels
}

/// kubectl's `HumanDuration` (k8s.io/apimachinery/pkg/util/duration).
pub fn human_duration(d: jiff::SignedDuration) -> String {
    let secs = d.as_secs();
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    let (m, h) = (secs / 60, secs / 3600);
    if secs < 60 * 2 {
        return format!("{secs}s");
    }
    if m < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{s}s")
        };
    }
    if m < 60 * 3 {
        return format!("{m}m");
    }
    if h < 8 {
        let mm = m % 60;
        return if mm == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{mm}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let hh = h % 24;
        return if hh == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{hh}h", h / 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    if h < 24 * 365 * 8 {
        let dy = (h / 24) % 365;
        return if dy == 0 {
            format!("{}y", h / 24 / 365)
        } else {
            format!("{}y{dy}d", h / 24 / 365)
        };
    }
    format!("{}y", h / 24 / 365)
}

fn columns() -> Value {
    let col = |name: &str, ty: &str, format: &str, priority: i32, description: &str| json!({"name": name, "type": ty, "format": format, "priority": priority, "description": description});
    json!([
        col(
            "Name",
            "string",
            "name",
            0,
            "Name is <repository>-<first 8 hex of the restic snapshot id>."
        ),
        col(
            "Repository",
            "string",
            "",
            0,
            "The Repository the snapshot belongs to."
        ),
        col(
            "Hostname",
            "string",
            "",
            0,
            "The restic host of the backup."
        ),
        col("Paths", "string", "", 0, "The backed-up paths."),
        col("ID", "string", "", 0, "The short restic snapshot id."),
        col("Age", "string", "", 0, "Time since the snapshot was taken."),
        col(
            "Time",
            "string",
            "date-time",
            1,
            "When the snapshot was taken."
        ),
        col("Tags", "string", "", 1, "restic tags."),
        col("Username", "string", "", 1, "The user that ran the backup."),
        col("Tree", "string", "", 1, "The short id of the root tree."),
    ])
}

fn row(s: &Snapshot, now: jiff::Timestamp, include: Include) -> Value {
    let created = s.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let short = |v: &str| v.get(..8).unwrap_or(v).to_owned();
    let cells = json!([
        s.metadata.name.clone().unwrap_or_default(),
        s.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("repository"))
            .cloned()
            .unwrap_or_default(),
        s.status.hostname,
        s.status.paths.join(","),
        short(s.metadata.uid.as_deref().unwrap_or_default()),
        created
            .map(|c| human_duration(now.duration_since(c)))
            .unwrap_or_else(|| "<unknown>".into()),
        created
            .map(|c| c.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default(),
        s.status.tags.join(","),
        s.status.username,
        short(&s.status.tree),
    ]);
    let mut r = json!({"cells": cells});
    match include {
        Include::None => {}
        Include::Metadata => r["object"] = partial(s),
        Include::Object => r["object"] = serde_json::to_value(s).unwrap_or(Value::Null),
    }
    r
}

fn partial(s: &Snapshot) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": s.metadata})
}

/// What representation the client asked for (`Accept`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// The object or `SnapshotList`.
    Plain,
    /// A `meta.k8s.io` Table (version v1 or v1beta1).
    Table(&'static str),
    /// `PartialObjectMetadata` / `PartialObjectMetadataList` (version v1 or v1beta1).
    Metadata(&'static str),
}

/// Pick the first JSON media type of `Accept` we can produce.
pub fn representation(accept: &str) -> Representation {
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let ty = parts.next().unwrap_or_default();
        if !matches!(ty, "application/json" | "*/*" | "application/*") {
            continue;
        }
        let params: BTreeMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        let version = match params.get("v").copied() {
            Some("v1beta1") => "v1beta1",
            _ => "v1",
        };
        let group_ok = params.get("g").is_none_or(|g| *g == "meta.k8s.io");
        return match params.get("as").copied() {
            None => Representation::Plain,
            Some("Table") if group_ok => Representation::Table(version),
            Some("PartialObjectMetadata" | "PartialObjectMetadataList") if group_ok => {
                Representation::Metadata(version)
            }
            Some(_) => continue,
        };
    }
    Representation::Plain
}

/// `includeObject` of a Table request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    /// No object.
    None,
    /// `PartialObjectMetadata` (the default).
    Metadata,
    /// The whole object.
    Object,
}

fn render_one(s: &Snapshot, rep: Representation, include: Include) -> Value {
    match rep {
        Representation::Plain => serde_json::to_value(s).unwrap_or(Value::Null),
        Representation::Table(v) => json!({
            "kind": "Table", "apiVersion": format!("meta.k8s.io/{v}"), "metadata": {},
            "columnDefinitions": columns(), "rows": [row(s, jiff::Timestamp::now(), include)],
        }),
        Representation::Metadata(v) => {
            let mut p = partial(s);
            p["apiVersion"] = json!(format!("meta.k8s.io/{v}"));
            p
        }
    }
}

fn render_list(
    items: &[Snapshot],
    rep: Representation,
    include: Include,
    resource_version: &str,
) -> Value {
    match rep {
        Representation::Plain => json!({
            "apiVersion": GROUP_VERSION, "kind": "SnapshotList",
            "metadata": {"resourceVersion": resource_version}, "items": items,
        }),
        Representation::Table(v) => {
            let now = jiff::Timestamp::now();
            json!({
                "kind": "Table", "apiVersion": format!("meta.k8s.io/{v}"),
                "metadata": {"resourceVersion": resource_version},
                "columnDefinitions": columns(),
                "rows": items.iter().map(|s| row(s, now, include)).collect::<Vec<_>>(),
            })
        }
        Representation::Metadata(v) => json!({
            "kind": "PartialObjectMetadataList", "apiVersion": format!("meta.k8s.io/{v}"),
            "metadata": {"resourceVersion": resource_version},
            "items": items.iter().map(|s| {
                let mut p = partial(s);
                p["apiVersion"] = json!(format!("meta.k8s.io/{v}"));
                p
            }).collect::<Vec<_>>(),
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// Discovery and OpenAPI

fn api_group() -> Value {
    json!({
        "name": SNAPSHOT_GROUP,
        "versions": [{"groupVersion": GROUP_VERSION, "version": VERSION}],
        "preferredVersion": {"groupVersion": GROUP_VERSION, "version": VERSION},
    })
}

fn api_resource_list() -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": SNAPSHOT_PLURAL, "singularName": "snapshot", "namespaced": true,
            "kind": SNAPSHOT_KIND, "verbs": ["delete", "get", "list"], "categories": ["stash", "appscode"],
        }],
    })
}

const SCHEMA_NAME: &str = "com.github.appscode.stash.apis.repositories.v1alpha1.Snapshot";
const LIST_SCHEMA_NAME: &str = "com.github.appscode.stash.apis.repositories.v1alpha1.SnapshotList";

fn schemas(prefix: &str) -> Value {
    let gvk = |kind: &str| json!([{"group": SNAPSHOT_GROUP, "version": VERSION, "kind": kind}]);
    let s = |d: &str| json!({"type": "string", "description": d});
    json!({
        SCHEMA_NAME: {
            "type": "object",
            "description": "One restic snapshot of a Repository. Read-only: get, list, delete (restic forget --prune).",
            "properties": {
                "apiVersion": s("repositories.stash.appscode.com/v1alpha1"),
                "kind": s("Snapshot"),
                "metadata": {"type": "object", "description": "name <repository>-<first 8 hex of the restic id>, uid = full restic id, creationTimestamp = snapshot time, labels {repository: <repo>} and the Repository's labels."},
                "status": {
                    "type": "object",
                    "description": "The restic snapshot.",
                    "properties": {
                        "tree": s("Root tree id."),
                        "paths": {"type": "array", "items": {"type": "string"}, "description": "Backed-up paths."},
                        "hostname": s("restic host of the backup."),
                        "username": s("User that ran the backup."),
                        "uid": {"type": "integer", "format": "int32", "description": "Uid of that user."},
                        "gid": {"type": "integer", "format": "int32", "description": "Gid of that user."},
                        "Tags": {"type": "array", "items": {"type": "string"}, "description": "restic tags (key capitalised as upstream)."},
                    },
                },
            },
            "x-kubernetes-group-version-kind": gvk("Snapshot"),
        },
        LIST_SCHEMA_NAME: {
            "type": "object",
            "description": "A list of Snapshots.",
            "required": ["items"],
            "properties": {
                "apiVersion": s("repositories.stash.appscode.com/v1alpha1"),
                "kind": s("SnapshotList"),
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": {"$ref": format!("{prefix}{SCHEMA_NAME}")}},
            },
            "x-kubernetes-group-version-kind": gvk("SnapshotList"),
        },
    })
}

fn operations(v3: bool) -> Value {
    let prefix = if v3 {
        "#/components/schemas/"
    } else {
        "#/definitions/"
    };
    let ok = |schema: &str| {
        if v3 {
            json!({"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("{prefix}{schema}")}}}}})
        } else {
            json!({"200": {"description": "OK", "schema": {"$ref": format!("{prefix}{schema}")}}})
        }
    };
    let param = |name: &str, place: &str, required: bool| {
        if v3 {
            json!({"name": name, "in": place, "required": required, "schema": {"type": "string"}})
        } else {
            json!({"name": name, "in": place, "required": required, "type": "string"})
        }
    };
    let op = |id: &str, action: &str, schema: &str| {
        json!({"operationId": id, "tags": ["repositoriesStashAppscodeCom_v1alpha1"], "responses": ok(schema),
               "x-kubernetes-action": action,
               "x-kubernetes-group-version-kind": {"group": SNAPSHOT_GROUP, "version": VERSION, "kind": "Snapshot"}})
    };
    let base = format!("/apis/{GROUP_VERSION}");
    json!({
        format!("{base}/snapshots"): {
            "get": op("listRepositoriesStashAppscodeComV1alpha1SnapshotForAllNamespaces", "list", LIST_SCHEMA_NAME),
            "parameters": [param("labelSelector", "query", false)],
        },
        format!("{base}/namespaces/{{namespace}}/snapshots"): {
            "get": op("listRepositoriesStashAppscodeComV1alpha1NamespacedSnapshot", "list", LIST_SCHEMA_NAME),
            "parameters": [param("namespace", "path", true), param("labelSelector", "query", false)],
        },
        format!("{base}/namespaces/{{namespace}}/snapshots/{{name}}"): {
            "get": op("readRepositoriesStashAppscodeComV1alpha1NamespacedSnapshot", "get", SCHEMA_NAME),
            "delete": op("deleteRepositoriesStashAppscodeComV1alpha1NamespacedSnapshot", "delete", SCHEMA_NAME),
            "parameters": [param("namespace", "path", true), param("name", "path", true)],
        },
    })
}

static OPENAPI_V2: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "swagger": "2.0",
        "info": {"title": "stash-rs Snapshot API", "version": VERSION},
        "paths": operations(false),
        "definitions": schemas("#/definitions/"),
    })
});

static OPENAPI_V3: LazyLock<Value> = LazyLock::new(|| {
    json!({
        "openapi": "3.0.0",
        "info": {"title": "stash-rs Snapshot API", "version": VERSION},
        "paths": operations(true),
        "components": {"schemas": schemas("#/components/schemas/")},
    })
});

fn openapi_v3_hash() -> String {
    // A stable fingerprint of the document (it never changes within a build).
    let text = OPENAPI_V3.to_string();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

// ---------------------------------------------------------------------------------------------
// Requests

fn query_decode(s: &str) -> String {
    let s = s.replace('+', " ");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(uri: &axum::http::Uri) -> BTreeMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (query_decode(k), query_decode(v))
        })
        .collect()
}

const HEALTH: [&str; 3] = ["/healthz", "/readyz", "/livez"];

async fn handle(
    State(st): State<Arc<ApiState>>,
    peer: Option<Extension<PeerCertificates>>,
    req: Request<Body>,
) -> Response {
    let started = Instant::now();
    let (method, path) = (
        req.method().clone(),
        req.uri().path().trim_end_matches('/').to_owned(),
    );
    if HEALTH
        .iter()
        .any(|h| path == *h || path.starts_with(&format!("{h}/")))
    {
        return (StatusCode::OK, "ok").into_response();
    }
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    let user = match st.authn.authenticate(&peer, req.headers()) {
        Ok(u) => u,
        Err(why) => {
            tracing::debug!(%path, reason = %why, "snapshots: unauthenticated request");
            return Failure::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized")
                .into_response();
        }
    };
    let q = query(req.uri());
    let response = match route(&st, &method, &path, &q, req.headers(), &user).await {
        Ok(r) => r,
        Err(f) => f.into_response(),
    };
    tracing::debug!(%method, %path, user = %user.name, status = %response.status(), took = ?started.elapsed(), "snapshots: request");
    response
}

async fn route(
    st: &ApiState,
    method: &Method,
    path: &str,
    q: &BTreeMap<String, String>,
    headers: &HeaderMap,
    user: &UserInfo,
) -> Result<Response, Failure> {
    let get_only = |body: Value| {
        if *method == Method::GET || *method == Method::HEAD {
            Ok(json_response(StatusCode::OK, &body))
        } else {
            Err(Failure::method_not_allowed(method.as_str()))
        }
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["apis"] => {
            let mut g = api_group();
            g.as_object_mut().map(|o| o.remove("kind"));
            return get_only(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [g]}));
        }
        ["apis", g] if *g == SNAPSHOT_GROUP => {
            let mut body = api_group();
            body["kind"] = json!("APIGroup");
            body["apiVersion"] = json!("v1");
            return get_only(body);
        }
        ["apis", g, v] if *g == SNAPSHOT_GROUP && *v == VERSION => {
            return get_only(api_resource_list());
        }
        ["openapi", "v2"] => return get_only(OPENAPI_V2.clone()),
        ["openapi", "v3"] => {
            return get_only(json!({"paths": {
                format!("apis/{GROUP_VERSION}"): {"serverRelativeURL": format!("/openapi/v3/apis/{GROUP_VERSION}?hash={}", openapi_v3_hash())}
            }}));
        }
        ["openapi", "v3", "apis", g, v] if *g == SNAPSHOT_GROUP && *v == VERSION => {
            return get_only(OPENAPI_V3.clone());
        }
        _ => {}
    }
    if q.get("watch").is_some_and(|w| w == "true" || w == "1") || segs.get(3) == Some(&"watch") {
        return Err(Failure::method_not_allowed("watch"));
    }
    let rep = representation(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json"),
    );
    let include = match q.get("includeObject").map(String::as_str) {
        Some("None") => Include::None,
        Some("Object") => Include::Object,
        _ => Include::Metadata,
    };
    let (namespace, name) = match segs.as_slice() {
        ["apis", g, v, r] if *g == SNAPSHOT_GROUP && *v == VERSION && *r == SNAPSHOT_PLURAL => {
            (None, None)
        }
        ["apis", g, v, "namespaces", ns, r]
            if *g == SNAPSHOT_GROUP && *v == VERSION && *r == SNAPSHOT_PLURAL =>
        {
            (Some(*ns), None)
        }
        ["apis", g, v, "namespaces", ns, r, n]
            if *g == SNAPSHOT_GROUP && *v == VERSION && *r == SNAPSHOT_PLURAL =>
        {
            (Some(*ns), Some(*n))
        }
        _ => {
            return Err(Failure::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource",
            ));
        }
    };
    let verb = match (method.clone(), name) {
        (Method::GET | Method::HEAD, None) => "list",
        (Method::GET | Method::HEAD, Some(_)) => "get",
        (Method::DELETE, Some(_)) => "delete",
        (Method::DELETE, None) => return Err(Failure::method_not_allowed("deletecollection")),
        (m, _) => return Err(Failure::method_not_allowed(m.as_str())),
    };
    let attrs = Attributes {
        verb,
        namespace: namespace.unwrap_or_default().to_owned(),
        name: name.unwrap_or_default().to_owned(),
    };
    match st.authz.authorize(user, &attrs).await {
        Ok(Decision::Allow) => {}
        Ok(Decision::Deny(reason)) => {
            let scope = namespace
                .map(|ns| format!("in the namespace \"{ns}\""))
                .unwrap_or_else(|| "at the cluster scope".into());
            let mut msg = format!("{SNAPSHOT_PLURAL}.{SNAPSHOT_GROUP}");
            if let Some(n) = name {
                msg = format!("{msg} \"{n}\"");
            }
            let mut f = Failure::new(
                StatusCode::FORBIDDEN,
                "Forbidden",
                format!(
                    "{msg} is forbidden: User \"{}\" cannot {verb} resource \"{SNAPSHOT_PLURAL}\" in API group \"{SNAPSHOT_GROUP}\" {scope}{}",
                    user.name,
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": {reason}")
                    }
                ),
            );
            f = f.details(name.unwrap_or_default(), SNAPSHOT_GROUP, SNAPSHOT_PLURAL);
            return Err(f);
        }
        Err(e) => return Err(Failure::internal(format!("authorization: {e}"))),
    }
    let catalog = &st.catalog;
    match (verb, namespace, name) {
        ("list", ns, None) => {
            let selector = Selector::parse(
                q.get("labelSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            )
            .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()))?;
            let fields = FieldSelector::parse(
                q.get("fieldSelector")
                    .map(String::as_str)
                    .unwrap_or_default(),
            );
            let repos: Vec<_> = catalog
                .repositories(ns)
                .into_iter()
                .filter(|r| !catalog.terminating(&r.namespace().unwrap_or_default()))
                .filter(|r| {
                    selector
                        .pinned("repository")
                        .is_none_or(|p| p == r.name_any())
                })
                .filter(|r| selector.matches(&repo_labels(r)))
                .collect();
            // A list across every namespace answers from what was last read and reads only
            // what this replica never read; a namespaced list reads what is stale. The catalog
            // bounds the restic runs.
            let lists = futures::future::join_all(repos.iter().map(|r| async move {
                match ns {
                    None => match catalog.cached(r) {
                        Some(list) => list,
                        None => catalog.snapshots_within(r.clone(), READ_BUDGET).await,
                    },
                    Some(_) => catalog.snapshots_within(r.clone(), READ_BUDGET).await,
                }
            }))
            .await;
            // A repository that cannot be read is an error, never an empty list: a namespaced
            // list fails naming it; a list across every namespace (an overview) lists the
            // others and names it in a `Warning` header, which kubectl prints.
            let mut items = Vec::new();
            let mut unreadable = Vec::new();
            for (repo, snaps) in repos.iter().zip(lists) {
                let snaps = match snaps {
                    Ok(s) => s,
                    Err(e) => {
                        unreadable.push(format!(
                            "repository {}/{} cannot be read: {e}",
                            repo.namespace().unwrap_or_default(),
                            repo.name_any()
                        ));
                        continue;
                    }
                };
                for s in snaps.iter() {
                    let obj = snapshot_object(repo, s);
                    if fields.matches(
                        obj.metadata.name.as_deref().unwrap_or_default(),
                        obj.metadata.namespace.as_deref().unwrap_or_default(),
                    ) {
                        items.push(obj);
                    }
                }
            }
            if ns.is_some() && !unreadable.is_empty() {
                return Err(Failure::internal(unreadable.join("; ")));
            }
            let rv = catalog.refreshes().to_string();
            let mut response =
                json_response(StatusCode::OK, &render_list(&items, rep, include, &rv));
            for w in unreadable {
                let text = format!("299 - {:?}", w.replace('"', "'"));
                if let Ok(v) = header::HeaderValue::from_str(&text) {
                    response.headers_mut().append(header::WARNING, v);
                }
            }
            Ok(response)
        }
        (verb, Some(ns), Some(name)) => {
            let (repo_name, short) = parse_snapshot_name(name).map_err(|e| {
                Failure::new(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()).details(
                    name,
                    SNAPSHOT_GROUP,
                    SNAPSHOT_PLURAL,
                )
            })?;
            let repo = catalog
                .repository(ns, repo_name)
                .await
                .map_err(|e| Failure::internal(format!("reading Repository {repo_name}: {e}")))?
                .ok_or_else(|| Failure::not_found_repository(repo_name))?;
            // The name's 8 hex must name exactly one snapshot: with two, neither is meant
            // (a delete must never forget the other one).
            let find = |snaps: &[restic::Snapshot]| -> Result<Option<restic::Snapshot>, Failure> {
                match snapshots::lookup(snaps.iter().map(|s| s.id.as_str()), short) {
                    snapshots::Lookup::Found(i) => Ok(Some(snaps[i].clone())),
                    snapshots::Lookup::Missing => Ok(None),
                    snapshots::Lookup::Ambiguous(a, b) => Err(Failure::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "snapshot name {name} is ambiguous: snapshots {} and {} both start with {short}; use restic with the full id",
                            snaps[a].id, snaps[b].id
                        ),
                    )
                    .details(name, SNAPSHOT_GROUP, SNAPSHOT_PLURAL)),
                }
            };
            let unreadable = |e: super::catalog::FetchError| {
                Failure::internal(format!("repository {repo_name} cannot be read: {e}"))
            };
            let mut found = find(&catalog.snapshots(&repo).await.map_err(unreadable)?)?;
            if found.is_none() {
                // A miss may be a snapshot taken since the last refresh: read once more.
                catalog
                    .refresh(&repo, Instant::now())
                    .await
                    .map_err(unreadable)?;
                found = find(&catalog.snapshots(&repo).await.map_err(unreadable)?)?;
            }
            let snap = found.ok_or_else(|| Failure::not_found_snapshot(name))?;
            let obj = snapshot_object(&repo, &snap);
            if verb == "delete" {
                let dry_run = q.get("dryRun").is_some_and(|d| d == "All");
                if catalog.terminating_now(ns).await {
                    // The namespace controller deletes what it lists; a namespace's deletion
                    // must never forget backups (the backend outlives the namespace).
                    return Err(Failure::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!(
                            "namespace {ns} is being deleted: snapshot {name} is kept in the backend"
                        ),
                    ));
                }
                if !dry_run {
                    // Background work of the Repository, which this request waits for only
                    // well inside the API server's 60 s: done by then, it is answered as
                    // before (200, or restic's error); else 202 Accepted, and the snapshot
                    // leaves the list once forgotten (the Repository's `SnapshotDeletion`
                    // condition says how it went). A request the API server gives up on never
                    // stops a restic that holds the lock.
                    tracing::info!(namespace = %ns, repository = %repo_name, snapshot = %name, user = %user.name, "snapshots: delete (restic forget --prune in the background)");
                    let mut work = catalog.delete_in_background((*repo).clone(), snap.id.clone());
                    match tokio::time::timeout(DELETE_WAIT, &mut work).await {
                        Ok(Ok(result)) => result.map_err(|e| match e {
                            super::catalog::FetchError::Failed(m)
                                if m.contains("no matching ID") || m.contains("not found") =>
                            {
                                Failure::not_found_snapshot(name)
                            }
                            e => Failure::internal(format!("restic forget: {e}")),
                        })?,
                        Ok(Err(e)) => {
                            return Err(Failure::internal(format!("the delete stopped: {e}")));
                        }
                        Err(_) => {
                            return Ok(json_response(
                                StatusCode::ACCEPTED,
                                &render_one(&obj, rep, include),
                            ));
                        }
                    }
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &render_one(&obj, rep, include),
            ))
        }
        _ => Err(Failure::method_not_allowed(method.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        assert_eq!(
            representation(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            ),
            Representation::Table("v1")
        );
        assert_eq!(
            representation(
                "application/vnd.kubernetes.protobuf;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
            ),
            Representation::Metadata("v1")
        );
        assert_eq!(representation("application/json"), Representation::Plain);
        assert_eq!(
            representation("application/json;as=Foo;g=x;v=v1,application/json"),
            Representation::Plain
        );
        assert_eq!(representation("*/*"), Representation::Plain);
    }

    #[test]
    fn durations_like_kubectl() {
        let d = |s: i64| human_duration(jiff::SignedDuration::from_secs(s));
        assert_eq!(d(5), "5s");
        assert_eq!(d(119), "119s");
        assert_eq!(d(150), "2m30s");
        assert_eq!(d(600), "10m");
        assert_eq!(d(3 * 3600 + 120), "3h2m");
        assert_eq!(d(10 * 3600), "10h");
        assert_eq!(d(3 * 86400 + 3600), "3d1h");
        assert_eq!(d(30 * 86400), "30d");
        assert_eq!(d(-5), "<invalid>");
    }

    #[test]
    fn object_shape() {
        let repo: Repository = serde_json::from_value(json!({
            "apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository",
            "metadata": {"name": "repo", "namespace": "demo", "labels": {"app": "web"}},
            "spec": {"backend": {"storageSecretName": "s", "local": {"mountPath": "/m", "hostPath": {"path": "/x"}}}}
        }))
        .unwrap();
        let snap: restic::Snapshot = serde_json::from_value(json!({
            "id": "d421fe22de0905f0000000000000000000000000000000000000000000000001", "short_id": "d421fe22",
            "time": "2019-07-01T10:00:00Z", "tree": "abcdef0123456789", "paths": ["/source/data"],
            "hostname": "host-0", "username": "root", "tags": ["t1"]
        }))
        .unwrap();
        let obj = serde_json::to_value(snapshot_object(&repo, &snap)).unwrap();
        assert_eq!(obj["kind"], "Snapshot");
        assert_eq!(obj["metadata"]["name"], "repo-d421fe22");
        assert_eq!(obj["metadata"]["namespace"], "demo");
        assert_eq!(obj["metadata"]["uid"], snap.id.as_str());
        assert_eq!(obj["metadata"]["creationTimestamp"], "2019-07-01T10:00:00Z");
        assert_eq!(
            obj["metadata"]["labels"],
            json!({"app": "web", "repository": "repo"})
        );
        assert_eq!(
            obj["status"],
            json!({"tree": "abcdef0123456789", "paths": ["/source/data"], "hostname": "host-0",
                                         "username": "root", "uid": 0, "gid": 0, "Tags": ["t1"]})
        );
        let s = snapshot_object(&repo, &snap);
        let table = render_list(
            std::slice::from_ref(&s),
            Representation::Table("v1"),
            Include::Metadata,
            "1",
        );
        assert_eq!(table["rows"][0]["cells"][0], "repo-d421fe22");
        assert_eq!(table["rows"][0]["cells"][4], "d421fe22");
        assert_eq!(table["rows"][0]["object"]["metadata"]["namespace"], "demo");
        assert_eq!(
            table["columnDefinitions"].as_array().unwrap().len(),
            table["rows"][0]["cells"].as_array().unwrap().len()
        );
    }

    #[test]
    fn openapi_documents_are_well_formed() {
        assert_eq!(OPENAPI_V2["swagger"], "2.0");
        assert!(OPENAPI_V2["definitions"][SCHEMA_NAME].is_object());
        assert_eq!(OPENAPI_V3["openapi"], "3.0.0");
        assert!(OPENAPI_V3["components"]["schemas"][LIST_SCHEMA_NAME]["properties"]["items"]["items"]["$ref"]
            .as_str()
            .unwrap()
            .starts_with("#/components/schemas/"));
        assert_eq!(openapi_v3_hash(), openapi_v3_hash());
        assert_eq!(query_decode("repository%3Drepo+a"), "repository=repo a");
    }
}
