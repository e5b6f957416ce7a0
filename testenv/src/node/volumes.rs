//! Pod volumes as host directories, and the mount points the agent creates on the host.
use std::{
    collections::{BTreeMap, HashMap},
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    sync::Mutex,
};

use k8s_openapi::api::core::v1::{
    ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccountTokenProjection,
};
use kube::{Api, api::PostParams};

use super::{Ctx, env};

/// Where service-account credentials appear in a container.
pub(crate) const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A projected service-account token file, refreshed before it expires.
#[derive(Debug, Clone)]
pub(crate) struct TokenFile {
    pub file: PathBuf,
    pub audience: Option<String>,
    pub expiration: i64,
}

/// The host side of a pod's volumes.
#[derive(Debug, Default)]
pub(crate) struct PodVolumes {
    /// Volume name → host path (a directory, or for hostPath possibly a file).
    pub paths: HashMap<String, PathBuf>,
    /// Volumes the kubelet always mounts read-only (secret, configMap, downwardAPI, projected).
    pub read_only: Vec<String>,
    pub tokens: Vec<TokenFile>,
}

/// A pod's own directory: `<root>/pods/<uid>`.
pub(crate) fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

/// The directory backing PVC `claim` in `namespace`: `<root>/pvc/<namespace>/<claim>`.
pub(crate) fn pvc_dir(root: &Path, namespace: &str, claim: &str) -> PathBuf {
    root.join("pvc").join(namespace).join(claim)
}

fn io(what: impl std::fmt::Display, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

fn mkdir(p: &Path) -> Result<(), String> {
    std::fs::create_dir_all(p).map_err(|e| io(format!("mkdir {}", p.display()), e))
}

/// A relative path that stays inside its directory.
fn safe_rel(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if p.is_empty() || path.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("invalid relative path {p:?}"));
    }
    Ok(path.to_path_buf())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: Option<i32>) -> Result<(), String> {
    let path = dir.join(safe_rel(rel)?);
    if let Some(parent) = path.parent() {
        mkdir(parent)?;
    }
    let tmp = path.with_extension("testenv-tmp");
    std::fs::write(&tmp, data).map_err(|e| io(format!("write {}", tmp.display()), e))?;
    let mode = mode.unwrap_or(0o644) as u32 & 0o7777;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io(format!("chmod {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io(format!("rename {}", path.display()), e))
}

/// Write `data` (key → bytes) into `dir`, honouring `items` (key → relative path).
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
    optional: bool,
) -> Result<(), String> {
    match items {
        Some(items) if !items.is_empty() => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => write_file(dir, &it.path, v, it.mode.or(default_mode))?,
                    None if optional => {}
                    None => return Err(format!("{what} has no key {:?}", it.key)),
                }
            }
        }
        _ => {
            for (k, v) in data {
                write_file(dir, k, v, default_mode)?;
            }
        }
    }
    Ok(())
}

async fn secret_data(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    match Api::<Secret>::namespaced(ctx.client(), ns).get_opt(name).await {
        Ok(Some(s)) => Ok(Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())),
        Ok(None) => Ok(None),
        Err(e) => Err(format!("get Secret {ns}/{name}: {e}")),
    }
}

async fn config_map_data(ctx: &Ctx, ns: &str, name: &str) -> Result<Option<BTreeMap<String, Vec<u8>>>, String> {
    match Api::<ConfigMap>::namespaced(ctx.client(), ns).get_opt(name).await {
        Ok(Some(c)) => {
            let mut out: BTreeMap<String, Vec<u8>> =
                c.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
            out.extend(c.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
            Ok(Some(out))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(format!("get ConfigMap {ns}/{name}: {e}")),
    }
}

async fn secret_into(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    dir: &Path,
    items: Option<&Vec<KeyToPath>>,
    mode: Option<i32>,
    optional: bool,
) -> Result<(), String> {
    match secret_data(ctx, ns, name).await? {
        Some(data) => write_keys(dir, &data, items, mode, &format!("Secret {ns}/{name}"), optional),
        None if optional => Ok(()),
        None => Err(format!("Secret {ns}/{name} not found")),
    }
}

async fn config_map_into(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    dir: &Path,
    items: Option<&Vec<KeyToPath>>,
    mode: Option<i32>,
    optional: bool,
) -> Result<(), String> {
    match config_map_data(ctx, ns, name).await? {
        Some(data) => write_keys(dir, &data, items, mode, &format!("ConfigMap {ns}/{name}"), optional),
        None if optional => Ok(()),
        None => Err(format!("ConfigMap {ns}/{name} not found")),
    }
}

fn downward_into(
    ctx: &Ctx,
    pod: &Pod,
    dir: &Path,
    items: &[DownwardAPIVolumeFile],
    mode: Option<i32>,
) -> Result<(), String> {
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => format_map(pod.metadata.labels.as_ref()),
                "metadata.annotations" => format_map(pod.metadata.annotations.as_ref()),
                path => env::field_value(ctx, pod, path)?,
            }
        } else if let Some(r) = &it.resource_field_ref {
            let container = r.container_name.as_deref().unwrap_or_default();
            env::resource_value(pod, container, r)?
        } else {
            continue;
        };
        write_file(dir, &it.path, value.as_bytes(), it.mode.or(mode))?;
    }
    Ok(())
}

/// Labels and annotations as the kubelet writes them: sorted `key="value"` lines.
fn format_map(m: Option<&BTreeMap<String, String>>) -> String {
    m.map(|m| m.iter().map(|(k, v)| format!("{k}={}", go_quote(v))).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

/// Go's `%q` for the strings labels and annotations hold.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Mint a bound service-account token for `pod` (TokenRequest, bound to the Pod).
pub(crate) async fn request_token(
    ctx: &Ctx,
    pod: &Pod,
    audience: Option<&str>,
    expiration: i64,
) -> Result<String, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let sa = service_account(pod);
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            "expirationSeconds": expiration.max(600),
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": pod.metadata.name.clone().unwrap_or_default(),
                "uid": pod.metadata.uid.clone().unwrap_or_default(),
            }
        }
    });
    let api = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(ctx.client(), ns);
    let tr: k8s_openapi::api::authentication::v1::TokenRequest = api
        .create_subresource("token", &sa, &PostParams::default(), &body)
        .await
        .map_err(|e| format!("TokenRequest for ServiceAccount {ns}/{sa}: {e}"))?;
    tr.status.and_then(|s| s.token).ok_or_else(|| format!("TokenRequest for {ns}/{sa} returned no token"))
}

/// The pod's service account name.
pub(crate) fn service_account(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// (Re)write a token file.
pub(crate) async fn write_token(ctx: &Ctx, pod: &Pod, t: &TokenFile) -> Result<(), String> {
    let token = request_token(ctx, pod, t.audience.as_deref(), t.expiration).await?;
    let dir = t.file.parent().unwrap_or(Path::new("/"));
    let name = t.file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    write_file(dir, &name, token.as_bytes(), Some(0o644))
}

/// Materialise every volume of `pod` on the host.
pub(crate) async fn prepare(ctx: &Ctx, pod: &Pod) -> Result<PodVolumes, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let base = pod_dir(&ctx.root, uid).join("volumes");
    let mut out = PodVolumes::default();
    let Some(spec) = pod.spec.as_ref() else { return Ok(out) };
    for v in spec.volumes.iter().flatten() {
        let own = base.join(&v.name);
        let path = if v.empty_dir.is_some() {
            mkdir(&own)?;
            own
        } else if let Some(pvc) = &v.persistent_volume_claim {
            let dir = pvc_dir(&ctx.root, ns, &pvc.claim_name);
            mkdir(&dir)?;
            dir
        } else if let Some(hp) = &v.host_path {
            let p = PathBuf::from(&hp.path);
            match hp.type_.as_deref().unwrap_or_default() {
                "" | "DirectoryOrCreate" if !p.exists() => mkdir(&p)?,
                "FileOrCreate" if !p.exists() => {
                    if let Some(parent) = p.parent() {
                        mkdir(parent)?;
                    }
                    std::fs::write(&p, b"").map_err(|e| io(format!("create {}", p.display()), e))?;
                }
                "Directory" if !p.is_dir() => return Err(format!("hostPath {} is not a directory", p.display())),
                "File" if !p.is_file() => return Err(format!("hostPath {} is not a file", p.display())),
                _ => {}
            }
            p
        } else if let Some(s) = &v.secret {
            mkdir(&own)?;
            let name = s.secret_name.clone().unwrap_or_default();
            let optional = s.optional.unwrap_or(false);
            secret_into(ctx, ns, &name, &own, s.items.as_ref(), s.default_mode, optional).await?;
            out.read_only.push(v.name.clone());
            own
        } else if let Some(c) = &v.config_map {
            mkdir(&own)?;
            let optional = c.optional.unwrap_or(false);
            config_map_into(ctx, ns, &c.name, &own, c.items.as_ref(), c.default_mode, optional).await?;
            out.read_only.push(v.name.clone());
            own
        } else if let Some(d) = &v.downward_api {
            mkdir(&own)?;
            downward_into(ctx, pod, &own, d.items.as_deref().unwrap_or_default(), d.default_mode)?;
            out.read_only.push(v.name.clone());
            own
        } else if let Some(p) = &v.projected {
            mkdir(&own)?;
            for src in p.sources.iter().flatten() {
                if let Some(s) = &src.secret {
                    let optional = s.optional.unwrap_or(false);
                    secret_into(ctx, ns, &s.name, &own, s.items.as_ref(), p.default_mode, optional).await?;
                }
                if let Some(c) = &src.config_map {
                    let optional = c.optional.unwrap_or(false);
                    config_map_into(ctx, ns, &c.name, &own, c.items.as_ref(), p.default_mode, optional).await?;
                }
                if let Some(d) = &src.downward_api {
                    downward_into(ctx, pod, &own, d.items.as_deref().unwrap_or_default(), p.default_mode)?;
                }
                if let Some(ServiceAccountTokenProjection { audience, expiration_seconds, path }) =
                    &src.service_account_token
                {
                    let t = TokenFile {
                        file: own.join(safe_rel(path)?),
                        audience: audience.clone().filter(|a| !a.is_empty()),
                        expiration: expiration_seconds.unwrap_or(3600),
                    };
                    write_token(ctx, pod, &t).await?;
                    out.tokens.push(t);
                }
            }
            out.read_only.push(v.name.clone());
            own
        } else {
            // Volume types a laptop cannot provide (ephemeral, csi, nfs, …): an empty directory.
            mkdir(&own)?;
            own
        };
        out.paths.insert(v.name.clone(), path);
    }
    Ok(out)
}

/// The fallback service-account volume for pods the ServiceAccount admission plugin did not
/// give one (`token`, `ca.crt`, `namespace`), in `<root>/pods/<uid>/volumes/.sa`.
pub(crate) async fn fallback_sa_dir(ctx: &Ctx, pod: &Pod, vols: &mut PodVolumes) -> Result<PathBuf, String> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let dir = pod_dir(&ctx.root, uid).join("volumes").join(".sa");
    mkdir(&dir)?;
    let t = TokenFile { file: dir.join("token"), audience: None, expiration: 3600 };
    write_token(ctx, pod, &t).await?;
    vols.tokens.push(t);
    write_file(&dir, "ca.crt", ctx.ca_pem.as_bytes(), None)?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    write_file(&dir, "namespace", ns.as_bytes(), None)?;
    Ok(dir)
}

/// Mount-point files and directories the agent created on the host, with how many pods use
/// each; removed again when the last user releases them.
static CREATED: Mutex<BTreeMap<PathBuf, (usize, bool)>> = Mutex::new(BTreeMap::new());

/// Paths one pod holds in [`CREATED`], in the order acquired.
#[derive(Debug, Default)]
pub(crate) struct MountPoints(Vec<PathBuf>);

impl MountPoints {
    /// Make sure `path` exists on the host (as a file if `file`, else a directory), creating
    /// missing components and remembering them.
    pub(crate) fn ensure(&mut self, path: &Path, file: bool) -> Result<(), String> {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        let mut cur = PathBuf::from("/");
        let comps: Vec<_> = path.components().filter(|c| matches!(c, Component::Normal(_))).collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let last = i + 1 == comps.len();
            if let Some(entry) = created.get_mut(&cur) {
                entry.0 += 1;
                self.0.push(cur.clone());
            } else if std::fs::symlink_metadata(&cur).is_err() {
                let is_file = last && file;
                let r = if is_file { std::fs::write(&cur, b"") } else { std::fs::create_dir(&cur) };
                r.map_err(|e| io(format!("create mount point {}", cur.display()), e))?;
                created.insert(cur.clone(), (1, is_file));
                self.0.push(cur.clone());
            }
        }
        Ok(())
    }

    /// Give back every path; remove those nobody else uses.
    pub(crate) fn release(&mut self) {
        let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(p) = self.0.pop() {
            let Some(entry) = created.get_mut(&p) else { continue };
            entry.0 -= 1;
            if entry.0 == 0 {
                let is_file = entry.1;
                created.remove(&p);
                let _ = if is_file { std::fs::remove_file(&p) } else { std::fs::remove_dir(&p) };
            }
        }
    }
}

/// Remove every mount point this process created on the host, deepest first (at shutdown,
/// once no pod process is left).
pub(crate) fn remove_created_mount_points() {
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    let mut paths: Vec<(PathBuf, bool)> = std::mem::take(&mut *created).into_iter().map(|(p, (_, is_file))| (p, is_file)).collect();
    paths.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (p, is_file) in paths {
        let _ = if is_file { std::fs::remove_file(&p) } else { std::fs::remove_dir(&p) };
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        self.release();
    }
}
