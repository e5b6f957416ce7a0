//! The node agent against the real control plane: volumes, env, service-account tokens,
//! private mount namespaces, Jobs, Deployments, restarts and deletion.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::Job,
    core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret},
};
use kube::{Api, Resource, api::PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use stash_testenv::ControlPlane;

/// An image the agent runs as `/bin/sh`, so `command: [/bin/sh, -c, …]` is a real process.
const SH_IMAGE: &str = "testenv/busybox-like:1";

async fn setup(prefix: &str) -> (&'static ControlPlane, stash_testenv::TestNamespace) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cp = stash_testenv::shared().await.unwrap_or_else(|e| panic!("control plane: {e}"));
    let t = Instant::now();
    cp.start_node_agent(&[(SH_IMAGE, Path::new("/bin/sh"))], &[]).await.unwrap_or_else(|e| panic!("node agent: {e}"));
    eprintln!("node agent ready in {:.1}s", t.elapsed().as_secs_f64());
    let ns = cp.namespace(prefix).await.expect("namespace");
    (cp, ns)
}

fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

async fn create<T>(api: &Api<T>, v: Value) -> T
where
    T: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &obj(v)).await.expect("create")
}

/// Everything that helps when a wait fails: the pods of the namespace, their logs, the agent log.
async fn diagnostics(cp: &ControlPlane, ns: &str) -> String {
    let mut out = String::new();
    let pods = Api::<Pod>::namespaced(cp.client(), ns).list(&Default::default()).await;
    for p in pods.map(|l| l.items).unwrap_or_default() {
        let name = p.metadata.name.clone().unwrap_or_default();
        out.push_str(&format!(
            "=== pod {name}: status {}\n{}",
            serde_json::to_string_pretty(&p.status).unwrap_or_default(),
            cp.pod_logs(ns, &name)
        ));
    }
    let log = std::fs::read_to_string(cp.dir().join("node-agent.log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    out.push_str("=== node-agent.log (tail)\n");
    out.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    out
}

/// Poll `probe` (up to 60 s) until it returns `Some`.
async fn wait<T, F, Fut>(cp: &ControlPlane, ns: &str, what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}\n{}", diagnostics(cp, ns).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_phase(cp: &ControlPlane, ns: &str, name: &str, phase: &str) -> Pod {
    let api = Api::<Pod>::namespaced(cp.client(), ns);
    wait(cp, ns, &format!("pod {name} phase {phase}"), || {
        let api = api.clone();
        async move {
            let p = api.get_opt(name).await.ok()??;
            (p.status.as_ref()?.phase.as_deref()? == phase).then_some(p)
        }
    })
    .await
}

/// Whether `pid` is still a live process (zombies waiting for their reaper count as dead),
/// allowing a few seconds for orphans to be reaped.
async fn alive(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?')));
        match state {
            None | Some('Z') | Some('X') => return false,
            Some(_) if Instant::now() > deadline => return true,
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn terminated_exit_code(p: &Pod, container: &str) -> Option<i32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_with_volumes_env_and_service_account_runs_as_a_process() {
    let (cp, ns) = setup("node-pod").await;
    let ns = ns.name.clone();
    let client = cp.client();
    let probe = format!("/stash-testenv-probe-{ns}");
    create(
        &Api::<Secret>::namespaced(client.clone(), &ns),
        json!({"metadata": {"name": "creds"}, "stringData": {"password": "s3cret", "user": "u"}}),
    )
    .await;
    create(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns),
        json!({"metadata": {"name": "settings"}, "data": {"mode": "fast"}}),
    )
    .await;
    create(
        &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns),
        json!({"metadata": {"name": "data"}, "spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}),
    )
    .await;
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    let script = format!(
        r#"set -e
d={probe}/data
cp {probe}/secret/password $d/password-copy
echo "$POD_NAME" > $d/pod-name
echo "$PASSWORD $MODE $GREETING $LABEL" > $d/env
echo scratch > {probe}/scratch/x && cat {probe}/scratch/x > $d/scratch
echo "KUBECONFIG=${{KUBECONFIG:-unset}} HOSTNAME=$HOSTNAME PWD=$PWD" > $d/process
cat {sa}/namespace > $d/sa-namespace
test -s {sa}/token && test -s {sa}/ca.crt
# The bound token is accepted by the API server (the default SA may not list secrets: 403, not 401).
curl -sS --cacert {sa}/ca.crt -H "Authorization: Bearer $(cat {sa}/token)" \
  https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces/$POD_NAMESPACE/secrets > $d/api-answer
echo in-sub > {probe}/sub/file
cat {probe}/mode-file > $d/mode-file
if touch {probe}/secret/nope 2>/dev/null; then echo writable > $d/secret-ro; else echo read-only > $d/secret-ro; fi
"#
    );
    create(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        json!({
            "metadata": {"name": "probe", "labels": {"app": "probe"}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{
                    "name": "main",
                    "image": SH_IMAGE,
                    "command": ["/bin/sh", "-c", script],
                    "workingDir": format!("{probe}/scratch"),
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "GREETING", "value": "hello-$(POD_NAME)-$$(POD_NAME)"},
                    ],
                    "volumeMounts": [
                        {"name": "data", "mountPath": format!("{probe}/data")},
                        {"name": "secret", "mountPath": format!("{probe}/secret")},
                        {"name": "scratch", "mountPath": format!("{probe}/scratch")},
                        {"name": "data", "mountPath": format!("{probe}/sub"), "subPath": "sub"},
                        {"name": "settings", "mountPath": format!("{probe}/mode-file"), "subPath": "mode"},
                    ],
                }],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "secret", "secret": {"secretName": "creds"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "settings", "configMap": {"name": "settings"}},
                ],
            }
        }),
    )
    .await;
    let t = Instant::now();
    let pod = wait_phase(cp, &ns, "probe", "Succeeded").await;
    eprintln!("pod Succeeded in {:.1}s", t.elapsed().as_secs_f64());
    let logs = || cp.pod_logs(&ns, "probe");
    assert_eq!(terminated_exit_code(&pod, "main"), Some(0), "{}", logs());
    let st = pod.status.as_ref().expect("status");
    assert_eq!(st.pod_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.start_time.is_some());
    let cs = &st.container_statuses.as_ref().expect("container statuses")[0];
    assert!(cs.container_id.as_deref().is_some_and(|id| id.starts_with("testenv://")));
    assert!(!cs.ready);

    let dir = cp.pvc_dir(&ns, "data");
    assert_eq!(dir, cp.node_root().join("pvc").join(&ns).join("data"));
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}\n{}", logs()));
    assert_eq!(read("password-copy"), "s3cret");
    assert_eq!(read("pod-name"), "probe\n");
    assert_eq!(read("env"), "s3cret fast hello-probe-$(POD_NAME) probe\n");
    assert_eq!(read("scratch"), "scratch\n");
    assert_eq!(read("process"), format!("KUBECONFIG=unset HOSTNAME=probe PWD={probe}/scratch\n"));
    assert_eq!(read("sa-namespace"), ns);
    assert_eq!(read("secret-ro"), "read-only\n");
    assert_eq!(read("sub/file"), "in-sub\n");
    assert_eq!(read("mode-file"), "fast");
    let answer = read("api-answer");
    assert!(
        answer.contains("\"code\": 403") && answer.contains(&format!("system:serviceaccount:{ns}:default")),
        "the pod's token must authenticate as its service account: {answer}"
    );
    // The mount namespace was private: nothing of it on the host, not even the mount points.
    assert!(!Path::new(&probe).exists(), "{probe} leaked onto the host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_succeed_and_fail_through_the_job_controller() {
    let (cp, ns) = setup("node-job").await;
    let ns = ns.name.clone();
    let jobs = Api::<Job>::namespaced(cp.client(), &ns);
    let job = |name: &str, script: &str| {
        json!({
            "metadata": {"name": name},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {
                    "restartPolicy": "Never",
                    "initContainers": [{"name": "simulated-init", "image": "busybox:1.36"}],
                    "containers": [{"name": "main", "image": SH_IMAGE, "command": ["/bin/sh", "-c", script]}],
                }},
            }
        })
    };
    let t = Instant::now();
    create(&jobs, job("ok", "echo working; exit 0")).await;
    create(&jobs, job("broken", "echo failing >&2; exit 3")).await;
    let cond = |name: &'static str, ty: &'static str| {
        let jobs = jobs.clone();
        move || {
            let jobs = jobs.clone();
            async move {
                let j = jobs.get(name).await.ok()?;
                let s = j.status?;
                s.conditions?.iter().any(|c| c.type_ == ty && c.status == "True").then_some(s.succeeded.unwrap_or(0))
            }
        }
    };
    let succeeded = wait(cp, &ns, "Job ok Complete", cond("ok", "Complete")).await;
    assert_eq!(succeeded, 1);
    eprintln!("job ok Complete in {:.1}s", t.elapsed().as_secs_f64());
    wait(cp, &ns, "Job broken Failed", cond("broken", "Failed")).await;
    let j = jobs.get("broken").await.expect("job");
    assert_eq!(j.status.and_then(|s| s.failed), Some(1));
    eprintln!("job broken Failed in {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_of_a_simulated_image_becomes_ready() {
    let (cp, ns) = setup("node-deploy").await;
    let ns = ns.name.clone();
    let deps = Api::<Deployment>::namespaced(cp.client(), &ns);
    let t = Instant::now();
    create(
        &deps,
        json!({
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27"}]},
                },
            }
        }),
    )
    .await;
    wait(cp, &ns, "Deployment web readyReplicas=2", || {
        let deps = deps.clone();
        async move { (deps.get("web").await.ok()?.status?.ready_replicas? == 2).then_some(()) }
    })
    .await;
    eprintln!("deployment ready in {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_and_daemonset_become_ready() {
    let (cp, ns) = setup("node-sts").await;
    let ns = ns.name.clone();
    let template = |app: &str| {
        json!({
            "metadata": {"labels": {"app": app}},
            "spec": {"containers": [{"name": "main", "image": SH_IMAGE, "command": ["/bin/sh", "-c", "sleep 3600 & wait"]}]},
        })
    };
    let t = Instant::now();
    let sts = Api::<StatefulSet>::namespaced(cp.client(), &ns);
    create(
        &sts,
        json!({
            "metadata": {"name": "db"},
            "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template("db")},
        }),
    )
    .await;
    let ds = Api::<DaemonSet>::namespaced(cp.client(), &ns);
    create(
        &ds,
        json!({
            "metadata": {"name": "agent"},
            "spec": {"selector": {"matchLabels": {"app": "agent"}}, "template": template("agent")},
        }),
    )
    .await;
    wait(cp, &ns, "StatefulSet db readyReplicas=2", || {
        let sts = sts.clone();
        async move { (sts.get("db").await.ok()?.status?.ready_replicas? == 2).then_some(()) }
    })
    .await;
    wait(cp, &ns, "DaemonSet agent numberReady=1", || {
        let ds = ds.clone();
        async move {
            let s = ds.get("agent").await.ok()?.status?;
            (s.desired_number_scheduled == 1 && s.number_ready == 1).then_some(())
        }
    })
    .await;
    eprintln!("statefulset and daemonset ready in {:.1}s", t.elapsed().as_secs_f64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_containers_run_in_order_and_failures_restart() {
    let (cp, ns) = setup("node-init").await;
    let ns = ns.name.clone();
    let pods = Api::<Pod>::namespaced(cp.client(), &ns);
    // The init container writes a file the main container needs; the main container fails
    // on its first run and succeeds on the second (restartPolicy OnFailure).
    create(
        &pods,
        json!({
            "metadata": {"name": "ordered"},
            "spec": {
                "restartPolicy": "OnFailure",
                "initContainers": [
                    {"name": "prepare", "image": SH_IMAGE, "command": ["/bin/sh", "-c", "echo ready > /work/ready"],
                     "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                    {"name": "simulated", "image": "busybox:1.36"},
                ],
                "containers": [{
                    "name": "main", "image": SH_IMAGE,
                    "command": ["/bin/sh", "-c",
                        "test -f /work/ready || exit 9; if [ -f /work/tried ]; then exit 0; fi; touch /work/tried; exit 1"],
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }],
                "volumes": [{"name": "work", "emptyDir": {}}],
            }
        }),
    )
    .await;
    let pod = wait_phase(cp, &ns, "ordered", "Succeeded").await;
    let st = pod.status.expect("status");
    let main = &st.container_statuses.expect("statuses")[0];
    assert_eq!(main.restart_count, 1, "{}", cp.pod_logs(&ns, "ordered"));
    assert_eq!(main.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code), Some(1));
    let inits = st.init_container_statuses.expect("init statuses");
    assert_eq!(inits.len(), 2);
    assert!(
        inits.iter().all(|c| c.state.as_ref().and_then(|s| s.terminated.as_ref()).is_some_and(|t| t.exit_code == 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_pod_kills_its_processes() {
    let (cp, ns) = setup("node-delete").await;
    let ns = ns.name.clone();
    let pods = Api::<Pod>::namespaced(cp.client(), &ns);
    create(
        &pods,
        json!({
            "metadata": {"name": "sleeper"},
            "spec": {
                "containers": [
                    {"name": "main", "image": SH_IMAGE, "command": ["/bin/sh", "-c", "sleep 3600 & wait"]},
                    {"name": "sidecar", "image": "nginx:1.27"},
                ],
            }
        }),
    )
    .await;
    let pod = wait(cp, &ns, "pod sleeper Ready", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("sleeper").await.ok()?;
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(p)
        }
    })
    .await;
    let cs = pod.status.and_then(|s| s.container_statuses).expect("statuses");
    let id = cs.iter().find(|c| c.name == "main").and_then(|c| c.container_id.clone()).expect("containerID");
    let pid: u32 = id.strip_prefix("testenv://").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("pid in {id}"));
    let proc_dir = format!("/proc/{pid}");
    assert!(Path::new(&proc_dir).exists(), "the process {pid} must be running");
    // Its child (the `sleep`) is in the same process group and must die with it.
    let children: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let t = Instant::now();
    pods.delete("sleeper", &Default::default()).await.expect("delete");
    wait(cp, &ns, "pod sleeper gone", || {
        let pods = pods.clone();
        async move { pods.get_opt("sleeper").await.ok()?.is_none().then_some(()) }
    })
    .await;
    eprintln!("pod deleted in {:.1}s", t.elapsed().as_secs_f64());
    assert!(!alive(pid).await, "process {pid} survived the pod's deletion");
    for c in children {
        assert!(!alive(c).await, "child {c} of {pid} survived the pod's deletion");
    }
}
