//! The agents' metrics (stash-api.md §10), pushed to a Prometheus pushgateway.
//!
//! Deliberate difference from upstream (decision 5): the grouping key is the job **and the
//! host** (`/metrics/job/<job>/Host/<host>`), so the hosts of one session do not overwrite each
//! other's group. A push replaces the whole group (HTTP PUT), like upstream.
use std::{fmt::Write as _, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::backup::BackupOutcome;

/// One gauge sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Value.
    pub value: f64,
}

/// A group of samples with the labels they all carry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Group {
    /// The pushgateway job.
    pub job: String,
    /// The host (part of the grouping key).
    pub host: String,
    /// Constant labels on every sample (besides `Host`, which is in the grouping key).
    pub labels: Vec<(String, String)>,
    /// The samples.
    pub samples: Vec<Sample>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Group {
    /// The text exposition format of the group.
    pub fn render(&self) -> String {
        let labels = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect::<Vec<_>>()
            .join(",");
        let mut out = String::new();
        for s in &self.samples {
            let _ = writeln!(out, "# HELP {} {}", s.name, s.help);
            let _ = writeln!(out, "# TYPE {} gauge", s.name);
            if labels.is_empty() {
                let _ = writeln!(out, "{} {}", s.name, s.value);
            } else {
                let _ = writeln!(out, "{}{{{labels}}} {}", s.name, s.value);
            }
        }
        out
    }

    /// The pushgateway path of the group.
    pub fn path(&self) -> String {
        format!(
            "/metrics/job/{}/Host/{}",
            encode(&self.job),
            encode(&self.host)
        )
    }
}

/// Path-segment encoding (the pushgateway also accepts base64, not needed for our names).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The metrics of one host's backup (success or failure).
pub fn backup_group(
    bc: &str,
    kind: &str,
    name: &str,
    host: &str,
    duration: Duration,
    outcome: Option<&BackupOutcome>,
) -> Group {
    let mut samples = vec![
        Sample {
            name: "stash_backup_session_success",
            help: "1 if the host's backup succeeded, 0 otherwise",
            value: if outcome.is_some() { 1.0 } else { 0.0 },
        },
        Sample {
            name: "stash_backup_session_duration_total_seconds",
            help: "Time the host's backup took",
            value: duration.as_secs_f64(),
        },
    ];
    if let Some(o) = outcome {
        let sum = |f: fn(&crate::backup::SnapshotResult) -> u64| {
            o.snapshots.iter().map(f).sum::<u64>() as f64
        };
        samples.extend([
            Sample {
                name: "stash_backup_data_size_bytes",
                help: "Bytes backed up",
                value: sum(|s| s.total_bytes),
            },
            Sample {
                name: "stash_backup_data_uploaded_bytes",
                help: "Bytes added to the repository",
                value: sum(|s| s.data_added),
            },
            Sample {
                name: "stash_backup_data_processing_time_seconds",
                help: "Time restic spent processing",
                value: sum(|s| s.duration_secs),
            },
            Sample {
                name: "stash_backup_files_total",
                help: "Files backed up",
                value: sum(|s| s.total_files),
            },
            Sample {
                name: "stash_backup_files_new",
                help: "New files",
                value: sum(|s| s.files_new),
            },
            Sample {
                name: "stash_backup_files_modified",
                help: "Modified files",
                value: sum(|s| s.files_changed),
            },
            Sample {
                name: "stash_backup_files_unmodified",
                help: "Unmodified files",
                value: sum(|s| s.files_unmodified),
            },
        ]);
        // The repository figures exist only when their step after the snapshot worked.
        let repo = [
            (
                "stash_repository_integrity",
                "1 if restic check found no errors",
                o.integrity.map(|i| if i { 1.0 } else { 0.0 }),
            ),
            (
                "stash_repository_size_bytes",
                "Repository size",
                o.repository_size.map(|v| v as f64),
            ),
            (
                "stash_repository_snapshot_count",
                "Snapshots in the repository",
                o.snapshot_count.map(|v| v as f64),
            ),
            (
                "stash_repository_snapshot_cleaned",
                "Snapshots removed by the retention policy",
                o.snapshots_removed.map(|v| v as f64),
            ),
        ];
        samples.extend(
            repo.into_iter()
                .filter_map(|(name, help, v)| v.map(|value| Sample { name, help, value })),
        );
    }
    Group {
        job: bc.into(),
        host: host.into(),
        labels: vec![
            ("BackupConfiguration".into(), bc.into()),
            ("kind".into(), kind.into()),
            ("name".into(), name.into()),
        ],
        samples,
    }
}

/// The metrics of one host's restore.
pub fn restore_group(rs: &str, host: &str, duration: Duration, ok: bool) -> Group {
    Group {
        job: rs.into(),
        host: host.into(),
        labels: vec![("RestoreSession".into(), rs.into())],
        samples: vec![
            Sample {
                name: "stash_restore_session_success",
                help: "1 if the host's restore succeeded",
                value: if ok { 1.0 } else { 0.0 },
            },
            Sample {
                name: "stash_restore_session_duration_total_seconds",
                help: "Time the host's restore took",
                value: duration.as_secs_f64(),
            },
        ],
    }
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Only `http://host:port` URLs are supported.
    #[error("unsupported pushgateway URL {0:?} (expected http://host:port)")]
    Url(String),
    /// Network error.
    #[error("pushgateway: {0}")]
    Io(#[from] std::io::Error),
    /// The pushgateway answered with an error status.
    #[error("pushgateway answered {0}")]
    Status(String),
    /// No answer in time.
    #[error("pushgateway did not answer in time")]
    Timeout,
}

/// PUT `group` to the pushgateway at `url` (`http://host:port`), replacing the group.
pub async fn push(url: &str, group: &Group) -> Result<(), PushError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| PushError::Url(url.into()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(PushError::Url(url.into()));
    }
    let body = group.render();
    let request = format!(
        "PUT {} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        group.path(),
        body.len()
    );
    let exchange = async {
        let mut s = TcpStream::connect(authority).await?;
        s.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| PushError::Timeout)??;
    let text = String::from_utf8_lossy(&answer);
    let status = text.lines().next().unwrap_or_default().to_string();
    if status.starts_with("HTTP/1.1 2") || status.starts_with("HTTP/1.0 2") {
        Ok(())
    } else {
        Err(PushError::Status(status))
    }
}

/// Push, logging (never failing) — metrics are information, not state.
pub async fn push_logged(url: &str, group: &Group) {
    if url.is_empty() {
        return;
    }
    match push(url, group).await {
        Ok(()) => tracing::info!(job = %group.job, host = %group.host, "pushed metrics"),
        Err(e) => tracing::warn!(error = %e, "could not push metrics"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_render_in_the_text_format_with_the_host_in_the_grouping_key() {
        let g = restore_group("rs", "host-1", Duration::from_secs(2), true);
        assert_eq!(g.path(), "/metrics/job/rs/Host/host-1");
        let text = g.render();
        assert!(
            text.contains("stash_restore_session_success{RestoreSession=\"rs\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE stash_restore_session_duration_total_seconds gauge"));
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn a_failed_backup_pushes_only_success_and_duration() {
        let g = backup_group(
            "bc",
            "Deployment",
            "app",
            "host-0",
            Duration::from_secs(1),
            None,
        );
        assert_eq!(g.samples.len(), 2);
        assert_eq!(g.samples[0].value, 0.0);
    }
}
