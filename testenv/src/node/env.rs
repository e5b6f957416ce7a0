//! Container environment as the kubelet resolves it: `envFrom`, then `env` in order with
//! `$(VAR)` expansion, Secrets, ConfigMaps, `fieldRef` and `resourceFieldRef`.
use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, ResourceFieldSelector, Secret};
use kube::Api;

use super::Ctx;

/// Looks Secrets and ConfigMaps up once per resolution.
struct Lookup<'a> {
    ctx: &'a Ctx,
    ns: String,
    secrets: HashMap<String, Option<BTreeMap<String, String>>>,
    config_maps: HashMap<String, Option<BTreeMap<String, String>>>,
}

impl Lookup<'_> {
    async fn secret(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.secrets.contains_key(name) {
            let got = Api::<Secret>::namespaced(self.ctx.client(), &self.ns)
                .get_opt(name)
                .await
                .map_err(|e| format!("get Secret {}/{name}: {e}", self.ns))?;
            let data = got.map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                    .collect()
            });
            self.secrets.insert(name.to_string(), data);
        }
        Ok(self.secrets.get(name).and_then(|d| d.as_ref()))
    }

    async fn config_map(&mut self, name: &str) -> Result<Option<&BTreeMap<String, String>>, String> {
        if !self.config_maps.contains_key(name) {
            let got = Api::<ConfigMap>::namespaced(self.ctx.client(), &self.ns)
                .get_opt(name)
                .await
                .map_err(|e| format!("get ConfigMap {}/{name}: {e}", self.ns))?;
            self.config_maps.insert(name.to_string(), got.map(|c| c.data.unwrap_or_default()));
        }
        Ok(self.config_maps.get(name).and_then(|d| d.as_ref()))
    }
}

/// The environment of container `c`: `base` (PATH, HOME, …), then `envFrom`, then `env`.
pub(crate) async fn resolve(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    base: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut lk = Lookup { ctx, ns: ns.clone(), secrets: HashMap::new(), config_maps: HashMap::new() };
    let mut vars: Vec<(String, String)> = base;
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        if let Some(e) = vars.iter_mut().find(|(n, _)| *n == k) {
            e.1 = v;
        } else {
            vars.push((k, v));
        }
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (data, what, optional) = if let Some(s) = &from.secret_ref {
            (lk.secret(&s.name).await?.cloned(), format!("Secret {ns}/{}", s.name), s.optional.unwrap_or(false))
        } else if let Some(m) = &from.config_map_ref {
            (lk.config_map(&m.name).await?.cloned(), format!("ConfigMap {ns}/{}", m.name), m.optional.unwrap_or(false))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    let name = format!("{prefix}{k}");
                    if !name.is_empty() && !name.contains('=') {
                        set(&mut vars, name, v);
                    }
                }
            }
            None if optional => {}
            None => return Err(format!("{what} not found")),
        }
    }
    // Only what the pod defines is visible to `$(VAR)`, not the base variables; kubelet also
    // expands service variables, which we do not have.
    let mut defined: HashMap<String, String> = HashMap::new();
    for e in c.env.iter().flatten() {
        let value = if let Some(src) = &e.value_from {
            if let Some(s) = &src.secret_key_ref {
                let optional = s.optional.unwrap_or(false);
                match lk.secret(&s.name).await?.map(|d| d.get(&s.key)) {
                    Some(Some(v)) => v.clone(),
                    _ if optional => continue,
                    Some(None) => return Err(format!("Secret {ns}/{} has no key {:?}", s.name, s.key)),
                    None => return Err(format!("Secret {ns}/{} not found", s.name)),
                }
            } else if let Some(m) = &src.config_map_key_ref {
                let optional = m.optional.unwrap_or(false);
                match lk.config_map(&m.name).await?.map(|d| d.get(&m.key)) {
                    Some(Some(v)) => v.clone(),
                    _ if optional => continue,
                    Some(None) => return Err(format!("ConfigMap {ns}/{} has no key {:?}", m.name, m.key)),
                    None => return Err(format!("ConfigMap {ns}/{} not found", m.name)),
                }
            } else if let Some(f) = &src.field_ref {
                field_value(ctx, pod, &f.field_path)?
            } else if let Some(r) = &src.resource_field_ref {
                resource_value(pod, &c.name, r)?
            } else {
                return Err(format!("env {}: unsupported valueFrom", e.name));
            }
        } else {
            let mut env_so_far: HashMap<String, String> = vars.iter().cloned().collect();
            env_so_far.extend(defined.clone());
            expand(e.value.as_deref().unwrap_or_default(), &env_so_far)
        };
        defined.insert(e.name.clone(), value.clone());
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

/// Kubelet's `$(VAR)` expansion: defined variables are substituted, `$$` is a literal `$`,
/// undefined references stay as they are.
pub(crate) fn expand(input: &str, env: &HashMap<String, String>) -> String {
    let b = input.as_bytes();
    let mut out = String::new();
    let mut checkpoint = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            out.push_str(&input[checkpoint..i]);
            let rest = &input[i + 1..];
            let advance = match b[i + 1] {
                b'$' => {
                    out.push('$');
                    1
                }
                b'(' => match rest.find(')') {
                    Some(close) => {
                        let name = &rest[1..close];
                        match env.get(name) {
                            Some(v) => out.push_str(v),
                            None => out.push_str(&format!("$({name})")),
                        }
                        close + 1
                    }
                    None => {
                        out.push_str("$(");
                        1
                    }
                },
                _ => {
                    // "$" followed by anything else: both kept.
                    let ch = rest.chars().next().unwrap_or_default();
                    out.push('$');
                    out.push(ch);
                    ch.len_utf8()
                }
            };
            i += advance;
            checkpoint = i + 1;
        }
        i += 1;
    }
    if checkpoint < input.len() {
        out.push_str(&input[checkpoint..]);
    }
    out
}

/// A `fieldRef` value.
pub(crate) fn field_value(ctx: &Ctx, pod: &Pod, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let spec = pod.spec.as_ref();
    let key = |prefix: &str| {
        path.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix("']"))
            .and_then(|r| r.strip_prefix('\''))
            .map(str::to_string)
    };
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_else(|| ctx.node.clone()),
        "spec.serviceAccountName" => super::volumes::service_account(pod),
        "status.hostIP" | "status.hostIPs" | "status.podIP" | "status.podIPs" => super::POD_IP.to_string(),
        _ => {
            if let Some(k) = key("metadata.labels[") {
                m.labels.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else if let Some(k) = key("metadata.annotations[") {
                m.annotations.as_ref().and_then(|l| l.get(&k).cloned()).unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldRef {path:?}"));
            }
        }
    })
}

/// A quantity in base units (cores, bytes), best effort.
pub(crate) fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(n * mult)
}

/// A `resourceFieldRef` value: the container's request or limit divided by the divisor,
/// rounded up; an unset limit is the node's allocatable amount, as with the kubelet.
pub(crate) fn resource_value(pod: &Pod, container: &str, r: &ResourceFieldSelector) -> Result<String, String> {
    let spec = pod.spec.as_ref().ok_or("pod without spec")?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == container)
        .ok_or_else(|| format!("resourceFieldRef: no container {container:?}"))?;
    let (kind, res) = r.resource.split_once('.').ok_or_else(|| format!("bad resource {:?}", r.resource))?;
    let res_spec = c.resources.as_ref();
    let list = match kind {
        "limits" => res_spec.and_then(|x| x.limits.as_ref()),
        "requests" => res_spec.and_then(|x| x.requests.as_ref()),
        _ => return Err(format!("bad resource {:?}", r.resource)),
    };
    let value = list.and_then(|l| l.get(res)).and_then(|q| parse_quantity(&q.0)).unwrap_or(match (kind, res) {
        ("limits", "cpu") => super::NODE_CPU as f64,
        ("limits", "memory") => super::NODE_MEMORY as f64,
        ("limits", _) => super::NODE_STORAGE as f64,
        _ => 0.0,
    });
    let divisor = r.divisor.as_ref().and_then(|d| parse_quantity(&d.0)).filter(|d| *d > 0.0).unwrap_or(1.0);
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubelet() {
        let env: HashMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$A-$", &env), "x-$(B)-$(A)-$A-$");
        assert_eq!(expand("pre$(A", &env), "pre$(A");
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("2"), Some(2.0));
    }
}
