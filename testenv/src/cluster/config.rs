//! The configuration files of the node's servers, rendered from the [`Layout`].
use super::Layout;

/// containerd v2 (config version 3): its own root/state/socket, Debian's runc with the
/// cgroupfs driver, `restrict_oom_score_adj` (this VM has no CAP_SYS_RESOURCE), pod network
/// namespaces and runc state under the state directory, the locally built pause image.
pub fn containerd(l: &Layout) -> String {
    let c = l.containerd_dir();
    format!(
        r#"version = 3
root = "{root}"
state = "{state}"

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[debug]
  level = "warn"

[metrics]
  address = ""

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{pause}"
    [plugins.'io.containerd.cri.v1.images'.registry]
      config_path = "{certs_d}"

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    enable_selinux = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{runc}"
          Root = "{runc_root}"
          SystemdCgroup = false
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      bin_dirs = ["{cni_bin}"]
      conf_dir = "{cni_conf}"

  [plugins.'io.containerd.grpc.v1.cri']
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"#,
        root = c.join("root").display(),
        state = c.join("state").display(),
        sock = l.containerd_sock().display(),
        pause = super::PAUSE_IMAGE,
        runc = l.runc.display(),
        runc_root = c.join("runc").display(),
        cni_bin = l.bin_dir.display(),
        cni_conf = l.cni_conf_dir().display(),
        certs_d = l.state.join("certs.d").display(),
    )
}

/// containerd's hosts file for docker.io: the cluster's own registry and nothing else, so
/// `image: busybox` (pull policy Always) resolves without leaving the machine.
pub fn docker_io_hosts() -> String {
    let r = format!("http://{}:{}", super::NODE_IP, super::REGISTRY_PORT);
    format!("server = \"{r}\"\n\n[host.\"{r}\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
}

/// The registry (distribution v3): filesystem storage under the state directory, plain HTTP
/// on the node address.
pub fn registry(l: &Layout) -> String {
    format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}:{}\n",
        l.state.join("registry").display(),
        super::NODE_IP,
        super::REGISTRY_PORT
    )
}

/// One bridge, host-local IPAM on the pod range, the gateway on the bridge, **no
/// masquerade**: pod traffic never leaves the cluster's network namespace.
pub fn cni(l: &Layout) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "stash-testenv",
        "plugins": [
            {
                "type": "bridge",
                "bridge": super::BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": super::POD_CIDR, "gateway": super::POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": l.state.join("cni-ipam").display().to_string(),
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// The kubelet: cgroup v1 allowed, cgroupfs, containerd's socket, the node address, webhook
/// authn/authz with the cluster's client CA, CoreDNS as cluster DNS with a resolv.conf that
/// only names it, generous eviction thresholds and no image GC (images are imported).
pub fn kubelet(l: &Layout) -> String {
    let pki = l.pki_dir();
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
containerRuntimeEndpoint: unix://{sock}
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: {pki}/kubelet-serving.crt
tlsPrivateKeyFile: {pki}/kubelet-serving.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {pki}/client-ca.crt
authorization:
  mode: Webhook
clusterDNS: [{node_ip}]
clusterDomain: cluster.local
resolvConf: {resolv}
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "50Mi"
  nodefs.available: "1%"
  nodefs.inodesFree: "1%"
  imagefs.available: "1%"
serializeImagePulls: false
maxPods: 110
volumePluginDir: {plugins}
syncFrequency: 5s
fileCheckFrequency: 5s
nodeStatusUpdateFrequency: 5s
"#,
        cgroup = super::CGROUP_ROOT,
        sock = l.containerd_sock().display(),
        node_ip = super::NODE_IP,
        pki = pki.display(),
        resolv = l.state.join("resolv.conf").display(),
        plugins = l.state.join("kubelet-plugins").display(),
    )
}

/// kube-proxy in iptables mode inside the cluster's namespace; no conntrack sysctl writes,
/// no localhost node ports (no `route_localnet`).
pub fn kube_proxy(l: &Layout) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
clusterCIDR: {pods}
hostnameOverride: {node}
bindAddress: {node_ip}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
"#,
        kubeconfig = l.kubeconfig("kube-proxy").display(),
        pods = super::POD_CIDR,
        node = super::NODE_NAME,
        node_ip = super::NODE_IP,
    )
}

/// CoreDNS with the `kubernetes` plugin only, bound to the node address: nothing is
/// forwarded anywhere (the machine's own resolver is out of bounds).
pub fn corefile(l: &Layout) -> String {
    format!(
        r#".:53 {{
    bind {node_ip}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
}}
"#,
        node_ip = super::NODE_IP,
        kubeconfig = l.kubeconfig("coredns").display(),
    )
}

/// A kubeconfig for `server` with a client certificate.
pub fn kubeconfig(server: &str, ca: &str, cert: &str, key: &str) -> String {
    use base64::{Engine, engine::general_purpose::STANDARD};
    let b = |s: &str| STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: testenv\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: testenv\n  context:\n    cluster: testenv\n    user: testenv\ncurrent-context: testenv\n",
        b(ca),
        b(cert),
        b(key)
    )
}

/// The user name kube-apiserver's webhook client certificate carries.
pub const WEBHOOK_CLIENT_CN: &str = "kube-apiserver-webhook-client";

/// kube-apiserver's `--admission-control-config-file`: both webhook admission plugins read
/// `kubeconfig` for the credentials they present to webhooks.
pub fn admission_configuration(kubeconfig: &std::path::Path) -> String {
    let plugin = |name: &str| {
        format!(
            "- name: {name}\n  configuration:\n    apiVersion: apiserver.config.k8s.io/v1\n    kind: WebhookAdmissionConfiguration\n    kubeConfigFile: {}\n",
            kubeconfig.display()
        )
    };
    format!(
        "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n{}{}",
        plugin("ValidatingAdmissionWebhook"),
        plugin("MutatingAdmissionWebhook")
    )
}

/// The kubeconfig of the webhook admission plugins: one user, `*.svc`, so every webhook the
/// API server reaches through a Service (`<name>.<namespace>.svc[:port]`) gets the client
/// certificate; webhooks reached by URL (tests' local operators) get none. Files, not inline
/// data: the key stays in the PKI directory.
pub fn webhook_client_kubeconfig(cert: &std::path::Path, key: &std::path::Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nusers:\n- name: '*.svc'\n  user:\n    client-certificate: {}\n    client-key: {}\n",
        cert.display(),
        key.display()
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn webhooks_get_the_api_servers_client_certificate() {
        let yaml = admission_configuration(Path::new("/pki/webhooks.kubeconfig"));
        let doc: serde_json::Value = serde_saphyr::from_str(&yaml).expect("yaml");
        assert_eq!(doc["apiVersion"], "apiserver.config.k8s.io/v1");
        assert_eq!(doc["kind"], "AdmissionConfiguration");
        let plugins = doc["plugins"].as_array().expect("plugins");
        let names: Vec<_> = plugins
            .iter()
            .map(|p| p["name"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            names,
            ["ValidatingAdmissionWebhook", "MutatingAdmissionWebhook"]
        );
        for p in plugins {
            let c = &p["configuration"];
            assert_eq!(c["apiVersion"], "apiserver.config.k8s.io/v1");
            assert_eq!(c["kind"], "WebhookAdmissionConfiguration");
            assert_eq!(c["kubeConfigFile"], "/pki/webhooks.kubeconfig");
        }

        let kc = webhook_client_kubeconfig(Path::new("/pki/w.crt"), Path::new("/pki/w.key"));
        let doc: serde_json::Value = serde_saphyr::from_str(&kc).expect("yaml");
        assert_eq!(doc["kind"], "Config");
        let users = doc["users"].as_array().expect("users");
        assert_eq!(users.len(), 1);
        // kube-apiserver matches `stash-operator.stash-system.svc:443` against `*.svc`.
        assert_eq!(users[0]["name"], "*.svc");
        assert_eq!(users[0]["user"]["client-certificate"], "/pki/w.crt");
        assert_eq!(users[0]["user"]["client-key"], "/pki/w.key");
    }
}
