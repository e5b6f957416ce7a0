//! Names the operator generates, made to fit Kubernetes' limits.
//!
//! A Job name becomes the value of its Pods' `job-name` label, so it must be a DNS label
//! (≤ 63 characters); a CronJob name must leave room for the 11 characters of its Jobs' suffix
//! (≤ 52). A name that fits is used as it is, so short names stay exactly as Stash spells them;
//! a longer one is cut and ends with a hash of the whole, so two long names never collide.

/// The longest DNS label.
pub const DNS_LABEL: usize = 63;

/// `<prefix><name>`, or, when that exceeds `max` characters, its first characters followed by
/// `-` and 10 hex digits of FNV-1a of the full name. Never ends in `-` or `.` before the hash.
pub fn fit(prefix: &str, name: &str, max: usize) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= max {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) & 0xff_ffff_ffff;
    let keep = max.saturating_sub(11);
    let head = full[..keep.min(full.len())].trim_end_matches(['-', '.']);
    format!("{head}-{hash:010x}")
}

/// Which host of a target a name is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// One of numbered hosts: a StatefulSet's pod, or an ordinal of a per-ordinal restore.
    Ordinal(u64),
    /// A DaemonSet's pod on this node.
    Node(&'a str),
    /// The one host of any other target (a Deployment's pods, the job model's one Job).
    Only,
}

/// The host name a target's data is stored under (restic's `--host`; §9.3 with later Stash's
/// `target.alias`): `host-<i>` (`<alias>-<i>`) for numbered hosts, the node's name
/// (`<alias>-<node>`) for a DaemonSet's, and `host-0` (`<alias>`) for the only host of any
/// other target. An empty alias is none.
pub fn host_name(alias: Option<&str>, host: Host<'_>) -> String {
    let alias = alias.filter(|a| !a.is_empty());
    match (host, alias) {
        (Host::Ordinal(i), a) => format!("{}-{i}", a.unwrap_or("host")),
        (Host::Node(node), None) => node.to_string(),
        (Host::Node(node), Some(a)) => format!("{a}-{node}"),
        (Host::Only, None) => "host-0".to_string(),
        (Host::Only, Some(a)) => a.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_names_the_host_or_prefixes_its_number_or_node() {
        assert_eq!(host_name(None, Host::Only), "host-0");
        assert_eq!(host_name(Some(""), Host::Only), "host-0");
        assert_eq!(host_name(Some("db"), Host::Only), "db");
        assert_eq!(host_name(None, Host::Ordinal(2)), "host-2");
        assert_eq!(host_name(Some("db"), Host::Ordinal(2)), "db-2");
        assert_eq!(host_name(None, Host::Node("n1")), "n1");
        assert_eq!(host_name(Some("logs"), Host::Node("n1")), "logs-n1");
    }

    #[test]
    fn short_names_are_kept_and_long_ones_fit_without_colliding() {
        assert_eq!(
            fit("stash-backup-", "daily-1", DNS_LABEL),
            "stash-backup-daily-1"
        );
        let a = fit("stash-backup-", &"a".repeat(80), DNS_LABEL);
        let b = fit("stash-backup-", &format!("{}b", "a".repeat(79)), DNS_LABEL);
        assert_eq!(a.len(), DNS_LABEL);
        assert!(a.starts_with("stash-backup-aaa"));
        assert_ne!(a, b);
        // Exactly at the limit: unchanged.
        let exact = "x".repeat(DNS_LABEL - 13);
        assert_eq!(fit("stash-backup-", &exact, DNS_LABEL).len(), DNS_LABEL);
        assert!(!fit("p-", &format!("{}-{}", "a".repeat(50), "b".repeat(20)), 63).contains("--"));
    }
}
