//! Applying `runtimeSettings` to the containers and pods Stash creates (stash-api.md §2.6).
//!
//! Deliberate difference from upstream (decision 4): resource *requests* apply whenever they
//! are set, not only when limits are set too.
use k8s_openapi::api::core::v1::{Container, EnvVar, ResourceRequirements};
use stash_crds::runtime::ContainerRuntimeSettings;

fn upsert_env(env: &mut Vec<EnvVar>, var: EnvVar) {
    match env.iter_mut().find(|e| e.name == var.name) {
        Some(e) => *e = var,
        None => env.push(var),
    }
}

/// Apply container-level settings to `c`.
pub fn apply_container(c: &mut Container, s: &ContainerRuntimeSettings) {
    if let Some(r) = &s.resources {
        let res = c
            .resources
            .get_or_insert_with(ResourceRequirements::default);
        if r.limits.as_ref().is_some_and(|l| !l.is_empty()) {
            res.limits = r.limits.clone();
        }
        if r.requests.as_ref().is_some_and(|l| !l.is_empty()) {
            res.requests = r.requests.clone();
        }
    }
    if s.liveness_probe.is_some() {
        c.liveness_probe = s.liveness_probe.clone();
    }
    if s.readiness_probe.is_some() {
        c.readiness_probe = s.readiness_probe.clone();
    }
    if s.lifecycle.is_some() {
        c.lifecycle = s.lifecycle.clone();
    }
    if let Some(user) = &s.security_context {
        c.security_context = Some(match c.security_context.take() {
            Some(ours) => crate::identity::merge(ours, user),
            None => user.clone(),
        });
    }
    if !s.env_from.is_empty() {
        c.env_from
            .get_or_insert_with(Vec::new)
            .extend(s.env_from.iter().cloned());
    }
    let env = c.env.get_or_insert_with(Vec::new);
    for v in &s.env {
        upsert_env(env, v.clone());
    }
    let plain = |name: &str, v: i32| EnvVar {
        name: name.into(),
        value: Some(v.to_string()),
        ..Default::default()
    };
    if let Some(adj) = s.nice.as_ref().and_then(|n| n.adjustment) {
        upsert_env(env, plain("NICE_ADJUSTMENT", adj));
    }
    if let Some(io) = &s.ionice {
        if let Some(class) = io.class {
            upsert_env(env, plain("IONICE_CLASS", class));
        }
        if let Some(data) = io.class_data {
            upsert_env(env, plain("IONICE_CLASS_DATA", data));
        }
    }
    if env.is_empty() {
        c.env = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn requests_apply_without_limits_and_env_is_upserted() {
        let s: ContainerRuntimeSettings = serde_json::from_value(serde_json::json!({
            "resources": {"requests": {"cpu": "100m"}},
            "env": [{"name": "A", "value": "2"}],
            "nice": {"adjustment": 5},
            "ionice": {"class": 2, "classData": 4}
        }))
        .expect("settings");
        let mut c = Container {
            env: Some(vec![EnvVar {
                name: "A".into(),
                value: Some("1".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        apply_container(&mut c, &s);
        let req = c
            .resources
            .and_then(|r| r.requests)
            .expect("requests applied");
        assert_eq!(req["cpu"], Quantity("100m".into()));
        let env: Vec<_> = c
            .env
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value.unwrap_or_default()))
            .collect();
        assert_eq!(
            env,
            [
                ("A", "2"),
                ("NICE_ADJUSTMENT", "5"),
                ("IONICE_CLASS", "2"),
                ("IONICE_CLASS_DATA", "4")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }
}
