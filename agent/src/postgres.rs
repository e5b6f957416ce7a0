//! `stash backup-pg` and `stash restore-pg` (stash-api.md §11.3): the first step of the
//! `pg-backup-<version>` / `pg-restore-<version>` Tasks.
//!
//! The connection comes from the AppBinding (`clientConfig.url`, else
//! `<scheme>://<service>.<namespace>.svc:<port><path>`) and its Secret (`POSTGRES_USER` /
//! `POSTGRES_PASSWORD`, or `username` / `password`). The password never appears on a command
//! line or in the environment of restic: it goes into a private `.pgpass` file named by the
//! libpq `passfile` connection parameter.
//!
//! * backup: `restic backup --stdin-from-command -- pg_dump --create --clean --if-exists …`
//!   (restic stores `pg_dump`'s output as `/dumpfile.sql`; a failing `pg_dump` fails the backup
//!   and leaves no snapshot);
//! * restore: `restic dump <snapshot> /dumpfile.sql` streamed into `psql -v ON_ERROR_STOP=1`
//!   connected to the `postgres` database (the dump recreates its database).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use stash_crds::AppBinding;
use stash_restic as restic;

use super::pvc::{self, RepoArgs, RetentionArgs};

/// The file name of the dump inside snapshots.
pub const DUMP_FILE: &str = "dumpfile.sql";

/// The database connection. `Debug` prints the password as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Conn {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `url` without its userinfo (`user:password@`), for messages: a URL may carry a password.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => authority.to_string(),
    };
    // A query may carry `password=`: drop it whole.
    let tail = tail.split_once('?').map_or(tail, |(p, _)| p);
    if scheme.is_empty() {
        format!("{authority}{tail}")
    } else {
        format!("{scheme}://{authority}{tail}")
    }
}

/// Host, port and database of a `postgres://` / `postgresql://` URL. Errors never contain
/// the URL's userinfo or query (they reach status, events and logs).
pub fn parse_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("bad port in {:?}", redact_url(url)))?,
        ),
        _ => (authority.to_string(), 5432),
    };
    if host.is_empty() {
        return Err(format!("no host in {:?}", redact_url(url)));
    }
    let db = if path.is_empty() {
        "postgres".to_string()
    } else {
        path.to_string()
    };
    Ok((
        host.trim_matches(|c| c == '[' || c == ']').to_string(),
        port,
        db,
    ))
}

/// The connection of AppBinding `name` in `ns`.
pub async fn connection(client: &Client, ns: &str, name: &str) -> Result<Conn, String> {
    if name.is_empty() {
        return Err("--app-binding is empty (the target names no AppBinding)".into());
    }
    let ab = Api::<AppBinding>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| format!("AppBinding {name}: {e}"))?;
    let cc = &ab.spec.client_config;
    let (host, port, database) = match (&cc.url, &cc.service) {
        (Some(u), _) if !u.is_empty() => parse_url(u)?,
        (_, Some(s)) => {
            let db = s
                .path
                .clone()
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let port = u16::try_from(if s.port == 0 { 5432 } else { s.port })
                .map_err(|_| "bad service port".to_string())?;
            (
                format!("{}.{ns}.svc", s.name),
                port,
                if db.is_empty() { "postgres".into() } else { db },
            )
        }
        _ => {
            return Err(format!(
                "AppBinding {name} has neither clientConfig.url nor clientConfig.service"
            ));
        }
    };
    let secret_name = ab
        .spec
        .secret
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let (mut user, mut password) = ("postgres".to_string(), String::new());
    if !secret_name.is_empty() {
        let s = Api::<Secret>::namespaced(client.clone(), ns)
            .get(&secret_name)
            .await
            .map_err(|e| format!("Secret {secret_name} of AppBinding {name}: {e}"))?;
        let data = s.data.unwrap_or_default();
        let get = |keys: &[&str]| {
            keys.iter().find_map(|k| data.get(*k)).map(|v| {
                String::from_utf8_lossy(&v.0)
                    .trim_end_matches('\n')
                    .to_string()
            })
        };
        if let Some(u) = get(&["POSTGRES_USER", "username"]) {
            user = u;
        }
        if let Some(p) = get(&["POSTGRES_PASSWORD", "password"]) {
            password = p;
        }
    }
    Ok(Conn {
        host,
        port,
        database,
        user,
        password,
    })
}

/// A private `.pgpass` holding the password (mode 0600, as libpq requires).
fn pgpass(dir: &Path, password: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!(".pgpass-{}", std::process::id()));
    let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
    std::fs::write(&path, format!("*:*:*:*:{escaped}\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// A libpq connection string (values quoted).
fn conninfo(c: &Conn, database: &str, passfile: &Path) -> String {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    format!(
        "host={} port={} user={} dbname={} passfile={}",
        q(&c.host),
        c.port,
        q(&c.user),
        q(database),
        q(&passfile.to_string_lossy())
    )
}

/// Flags of `backup-pg`.
#[derive(Clone, Debug, clap::Args)]
pub struct BackupOptions {
    /// Repository flags.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Retention policy.
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Extra `pg_dump` arguments (whitespace-separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub pg_args: String,
    /// Namespace of the AppBinding.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The AppBinding.
    #[arg(long, default_value = "")]
    pub app_binding: String,
}

/// `backup-pg`.
pub async fn backup(opts: BackupOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let host = opts.repo.hostname.clone();
    let result = async {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        let conn = connection(&client, &opts.namespace, &opts.app_binding).await?;
        let scratch = opts.repo.scratch_dir.join("pg");
        let passfile = pgpass(&scratch, &conn.password).map_err(|e| format!("write .pgpass: {e}"))?;
        let mut r = opts.repo.open()?;
        if let Some(reporter) = crate::report::job_lock_reporter(&host).await {
            r.set_lock_reporter(reporter);
        }
        r.ensure_initialized().await.map_err(|e| e.to_string())?;
        let mut cmd: Vec<String> = vec![
            "pg_dump".into(),
            format!("--dbname={}", conninfo(&conn, &conn.database, &passfile)),
            "--create".into(),
            "--clean".into(),
            "--if-exists".into(),
        ];
        cmd.extend(opts.pg_args.split_whitespace().map(String::from));
        let t = Instant::now();
        let s = r.backup_command(&cmd, DUMP_FILE, &host, &[]).await.map_err(|e| format!("pg_dump | restic backup: {e}"));
        let _ = std::fs::remove_file(&passfile);
        let s = s?;
        tracing::info!(database = %conn.database, seconds = t.elapsed().as_secs_f64(), "database dumped into the repository");
        let snaps = vec![pvc::snapshot_stats(&format!("/{DUMP_FILE}"), &s)];
        let followed = pvc::after_backup(&r, &opts.retention.policy()).await;
        Ok((snaps, followed))
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "backup failed");
    }
    opts.repo.write(&pvc::backup_output(&host, started, result))
}

/// Flags of `restore-pg`.
#[derive(Clone, Debug, clap::Args)]
pub struct RestoreOptions {
    /// Repository flags (`--hostname` is the source host).
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Extra `psql` arguments (whitespace-separated).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub pg_args: String,
    /// Namespace of the AppBinding.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// The AppBinding.
    #[arg(long, default_value = "")]
    pub app_binding: String,
    /// The snapshot (empty or `latest`: the newest of the source host).
    #[arg(long, default_value = "")]
    pub snapshot: String,
}

/// `restore-pg`.
pub async fn restore(opts: RestoreOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let result = async {
        let client = Client::try_default().await.map_err(|e| e.to_string())?;
        let conn = connection(&client, &opts.namespace, &opts.app_binding).await?;
        let scratch = opts.repo.scratch_dir.join("pg");
        let passfile = pgpass(&scratch, &conn.password).map_err(|e| format!("write .pgpass: {e}"))?;
        let r = opts.repo.open()?;
        let snap = opts.snapshot.split(',').map(str::trim).find(|s| !s.is_empty()).unwrap_or("latest");
        let latest = snap == "latest";
        let snapshot = if latest { "latest".into() } else { crate::restore::resolve_id(&r, snap).await? };
        let dump = restic::DumpOptions {
            snapshot,
            file: format!("/{DUMP_FILE}"),
            host: latest.then(|| opts.repo.hostname.clone()),
            paths: vec![],
        };
        let mut psql = tokio::process::Command::new("psql");
        psql.arg(format!("--dbname={}", conninfo(&conn, "postgres", &passfile)))
            .args(["-v", "ON_ERROR_STOP=1", "--quiet", "--no-psqlrc"])
            .args(opts.pg_args.split_whitespace())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = psql.spawn().map_err(|e| format!("start psql: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("psql has no stdin")?;
        let t = Instant::now();
        let dumped = r.dump(&dump, &mut stdin).await;
        drop(stdin);
        let out = child.wait_with_output().await.map_err(|e| format!("psql: {e}"))?;
        let _ = std::fs::remove_file(&passfile);
        dumped.map_err(|e| format!("restic dump: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_string();
            return Err(format!("psql failed ({}): {last}", out.status));
        }
        tracing::info!(database = %conn.database, seconds = t.elapsed().as_secs_f64(), "database restored");
        Ok(())
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "restore failed");
    }
    opts.repo.write(&pvc::restore_output(
        &RepoArgs::restoring_host(),
        started,
        result,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("postgresql://127.0.0.1:5433/app?sslmode=disable"),
            Ok(("127.0.0.1".into(), 5433, "app".into()))
        );
        assert_eq!(
            parse_url("postgres://u:p@db.ns.svc/"),
            Ok(("db.ns.svc".into(), 5432, "postgres".into()))
        );
        assert!(parse_url("postgresql://:x/").is_err());
    }

    #[test]
    fn url_errors_and_debug_never_show_a_password() {
        for url in [
            "postgres://u:s3cr3t-pw@db:notaport/x",
            "postgres://u:s3cr3t-pw@/x",
            "postgres://u:s3cr3t-pw@db:99999/x?password=s3cr3t-pw",
            "u:s3cr3t-pw@:x",
        ] {
            let e = parse_url(url).expect_err(url);
            assert!(!e.contains("s3cr3t-pw"), "{e}");
            assert!(e.contains("<redacted>"), "{e}");
        }
        let c = Conn {
            host: "db".into(),
            port: 5432,
            database: "d".into(),
            user: "u".into(),
            password: "s3cr3t-pw".into(),
        };
        assert!(!format!("{c:?}").contains("s3cr3t-pw"));
    }

    #[test]
    fn secrets_stay_out_of_command_lines() {
        let dir = std::env::temp_dir().join(format!("pgpass-test-{}", std::process::id()));
        let c = Conn {
            host: "h".into(),
            port: 1,
            database: "d".into(),
            user: "u".into(),
            password: "p:a\\ss".into(),
        };
        let f = pgpass(&dir, &c.password).expect("pgpass");
        assert_eq!(
            std::fs::read_to_string(&f).expect("read"),
            "*:*:*:*:p\\:a\\\\ss\n"
        );
        assert_eq!(
            std::fs::metadata(&f).expect("meta").permissions().mode() & 0o777,
            0o600
        );
        let ci = conninfo(&c, "d", &f);
        assert!(!ci.contains("p:a") && ci.contains("passfile="), "{ci}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
