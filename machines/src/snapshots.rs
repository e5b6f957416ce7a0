//! Which snapshot a name means, and which snapshots a restore rule's `snapshots` restore
//! (stash-api.md §7.3, §10). Decided before a byte is read or written:
//!
//! - a snapshot is addressed internally by its full id; a name or short id that two snapshots
//!   share is an error, never "the first match";
//! - `latest` is the newest snapshot of the rule's source host, never of another host;
//! - a snapshot is restored only when every path it holds lies under one of the target's
//!   volume mounts: restoring a path the target does not mount would write into the agent's
//!   own filesystem, "Succeed", and change nothing the application sees.
use crate::paths::under;

/// One snapshot of the repository, as far as the choice needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// The full id (64 hex).
    pub id: &'a str,
    /// The host it was taken on.
    pub hostname: &'a str,
    /// The paths it holds.
    pub paths: &'a [String],
}

/// The restic id (or id prefix) a name stands for: a Snapshot API name
/// (`<repository>-<8 hex>`) stands for its 8 hex; anything else is taken as it is.
pub fn id_of(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((_, id)) if id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()) => id,
        _ => name,
    }
}

/// What an id or id prefix names among a repository's snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Exactly this one (an index into the ids).
    Found(usize),
    /// None.
    Missing,
    /// At least these two: the prefix is ambiguous.
    Ambiguous(usize, usize),
}

/// Look `prefix` up among `ids` (full ids). An empty prefix names nothing.
pub fn lookup<'a>(ids: impl IntoIterator<Item = &'a str>, prefix: &str) -> Lookup {
    if prefix.is_empty() {
        return Lookup::Missing;
    }
    let mut found = None;
    for (i, id) in ids.into_iter().enumerate() {
        if id.starts_with(prefix) {
            match found {
                None => found = Some(i),
                Some(first) => return Lookup::Ambiguous(first, i),
            }
        }
    }
    found.map_or(Lookup::Missing, Lookup::Found)
}

/// The short form restic prints.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The snapshots (indices into `candidates`, in the order asked, each once) that `requested`
/// restores for a host whose source host is `source_host`, into a target that mounts
/// `mounts`; or why none is restored. `candidates` are in time order, oldest first (restic's
/// order), so `latest` is the last of the source host.
pub fn choose(
    requested: &[String],
    source_host: &str,
    candidates: &[Candidate<'_>],
    mounts: &[String],
) -> Result<Vec<usize>, String> {
    let mut chosen: Vec<usize> = Vec::new();
    for name in requested.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let i = if name == "latest" {
            candidates
                .iter()
                .rposition(|c| c.hostname == source_host)
                .ok_or_else(|| format!("snapshot latest: host {source_host} has no snapshot"))?
        } else {
            let id = id_of(name);
            match lookup(candidates.iter().map(|c| c.id), id) {
                Lookup::Found(i) => i,
                Lookup::Missing => return Err(format!("snapshot {name} not found")),
                Lookup::Ambiguous(a, b) => {
                    return Err(format!(
                        "snapshot {name} is ambiguous: snapshots {} and {} both start with {id}; name it by a longer id",
                        candidates[a].id, candidates[b].id
                    ));
                }
            }
        };
        let c = &candidates[i];
        if let Some(p) = c.paths.iter().find(|p| !mounts.iter().any(|m| under(p, m))) {
            let mounted = if mounts.is_empty() {
                "the target mounts no volume".to_string()
            } else {
                format!("the target mounts {}", mounts.join(", "))
            };
            return Err(format!(
                "snapshot {} holds {p}, which lies under none of the target's volumeMounts ({mounted}): restoring it would write outside the target's volumes",
                short(c.id)
            ));
        }
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    if chosen.is_empty() {
        return Err("the rule names no snapshot".into());
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "abcd1234aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "abcd1234bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "0123abcdcccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn data() -> Vec<String> {
        vec!["/source/data".into()]
    }

    #[test]
    fn names_and_prefixes() {
        assert_eq!(id_of("repo-0123abcd"), "0123abcd");
        assert_eq!(id_of("my-repo-0123abcd"), "0123abcd");
        assert_eq!(id_of("0123abcd"), "0123abcd");
        assert_eq!(id_of("repo-latest"), "repo-latest");
        let ids = [A, B, C];
        assert_eq!(lookup(ids, "0123"), Lookup::Found(2));
        assert_eq!(lookup(ids, "abcd1234"), Lookup::Ambiguous(0, 1));
        assert_eq!(lookup(ids, "abcd1234b"), Lookup::Found(1));
        assert_eq!(lookup(ids, "ffff"), Lookup::Missing);
        assert_eq!(lookup(ids, ""), Lookup::Missing);
    }

    #[test]
    fn latest_is_the_source_hosts_and_ids_are_exact() {
        let (d, other) = (data(), vec!["/etc".to_string()]);
        let cands = [
            Candidate {
                id: C,
                hostname: "host-0",
                paths: &d,
            },
            Candidate {
                id: A,
                hostname: "host-1",
                paths: &d,
            },
            Candidate {
                id: B,
                hostname: "host-0",
                paths: &other,
            },
        ];
        let mounts = data();
        // host-1's latest is A, although B (host-0) is newer.
        assert_eq!(
            choose(&["latest".into()], "host-1", &cands, &mounts),
            Ok(vec![1])
        );
        assert_eq!(
            choose(&["latest".into()], "host-7", &cands, &mounts),
            Err("snapshot latest: host host-7 has no snapshot".into())
        );
        assert_eq!(
            choose(
                &["repo-0123abcd".into(), C.into()],
                "host-0",
                &cands,
                &mounts
            ),
            Ok(vec![0])
        );
        let amb = choose(&["repo-abcd1234".into()], "host-0", &cands, &mounts).unwrap_err();
        assert!(
            amb.contains("ambiguous") && amb.contains(A) && amb.contains(B),
            "{amb}"
        );
        // host-0's latest holds /etc: not under /source/data.
        let out = choose(&["latest".into()], "host-0", &cands, &mounts).unwrap_err();
        assert!(
            out.contains("holds /etc") && out.contains("/source/data"),
            "{out}"
        );
        let none = choose(&[C.into()], "host-0", &cands, &[]).unwrap_err();
        assert!(none.contains("mounts no volume"), "{none}");
        assert_eq!(
            choose(&[" ".into()], "host-0", &cands, &mounts),
            Err("the rule names no snapshot".into())
        );
    }

    #[test]
    fn a_path_walking_out_of_a_mount_is_outside() {
        let p = vec!["/source/data/../../etc".to_string()];
        let cands = [Candidate {
            id: C,
            hostname: "h",
            paths: &p,
        }];
        assert!(choose(&[C.into()], "h", &cands, &data()).is_err());
    }
}
