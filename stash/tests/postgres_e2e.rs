//! PostgreSQL through the job model (issue 6 part 3, stash-api.md §3.8, §11.3), against a real
//! PostgreSQL server started here: tables and rows are created, backed up by the
//! `pg-backup-15` Task (pg_dump streamed into restic), the database is dropped, restored by
//! `pg-restore-15` (restic dump streamed into psql), and row counts and a checksum of the data
//! compared. The connection comes from an AppBinding (`clientConfig.url`) and its Secret.
use stash_e2e as support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::json;
use stash_crds::restore_session::Phase as RestorePhase;
use stash_testenv::{ControlPlane, NODE_IP};
use support::*;

const PASSWORD: &str = "restic-password";
const PG_PASSWORD: &str = "pg:sec'ret\\pw";
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

struct Postgres {
    port: u16,
    /// The server's process group (started by `spawn_in_cluster`).
    pid: u32,
    dir: PathBuf,
}

fn pg_bin(name: &str) -> PathBuf {
    Path::new(PG_BIN).join(name)
}

/// The PostgreSQL user's home, made by the Debian package: where its data directories go.
const PG_HOME: &str = "/var/lib/postgresql";

/// initdb (as `postgres`: initdb refuses root) and start a server on the node address, inside
/// the cluster's network namespace (the job pods connect to it there), with password
/// authentication over TCP. Its directory is made by the `postgres` user in its own home, as a
/// PostgreSQL admin makes one; stopped and removed when the returned value drops (and a run
/// that was killed leaves one that the next run removes).
fn start_postgres(cp: &ControlPlane) -> Postgres {
    remove_stale_dirs();
    let dir = Path::new(PG_HOME).join(format!("stash-rs-e2e-{}", std::process::id()));
    let mkdir = Command::new("runuser")
        .args(["-u", "postgres", "--", "mkdir", "-p"])
        .arg(&dir)
        .status()
        .expect("mkdir as postgres");
    assert!(mkdir.success(), "mkdir {} as postgres", dir.display());
    let pwfile = dir.join("pwfile");
    std::fs::write(&pwfile, format!("{PG_PASSWORD}\n")).expect("pwfile");
    let data = dir.join("data");
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(pg_bin("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--pwfile",
        ])
        .arg(&pwfile)
        .output()
        .expect("initdb");
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Clients come from the cluster's addresses: the job pods (198.19.0.0/24) and this
    // process through the veth (198.18.0.1).
    let hba = data.join("pg_hba.conf");
    let mut conf = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    conf.push_str("host all all 198.18.0.0/15 scram-sha-256\n");
    std::fs::write(&hba, conf).expect("write pg_hba.conf");
    let port = cp.cluster_port();
    let args: Vec<String> = [
        "-u",
        "postgres",
        "--",
        &pg_bin("postgres").to_string_lossy(),
        "-D",
        &data.to_string_lossy(),
        "-p",
        &port.to_string(),
        "-k",
        &dir.to_string_lossy(),
        "-c",
        &format!("listen_addresses={NODE_IP}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = cp
        .spawn_in_cluster(
            &format!("postgres-{port}"),
            Path::new("/usr/sbin/runuser"),
            &args,
            &[],
        )
        .expect("postgres");
    let log = cp.dir().join(format!("postgres-{port}.log"));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(pg_bin("pg_isready"))
            .args(["-h", NODE_IP, "-p", &port.to_string()])
            .output();
        if ok.is_ok_and(|o| o.status.success()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Postgres { port, pid, dir }
}

/// Directories of earlier runs whose process is gone (a run killed before its drop).
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(PG_HOME) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("stash-rs-e2e-") else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Postgres {
    /// Stop the server (its process group), then remove its directory.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", "--", &format!("-{}", self.pid)])
            .status();
        // A server that shut down removed its pid file.
        let pid_file = self.dir.join("data/postmaster.pid");
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_file.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn psql(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new(pg_bin("psql"))
        .env("PGPASSWORD", PG_PASSWORD)
        .args([
            "-h",
            NODE_IP,
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Row counts and an md5 over every row of both tables, in a fixed order.
fn fingerprint(port: u16) -> (String, String, String) {
    let customers = psql(port, "shop", "SELECT count(*) FROM customers");
    let orders = psql(port, "shop", "SELECT count(*) FROM orders");
    let sum = psql(
        port,
        "shop",
        "SELECT md5(string_agg(t, '|' ORDER BY t)) FROM (
           SELECT format('c:%s:%s:%s', id, name, email) AS t FROM customers
           UNION ALL SELECT format('o:%s:%s:%s:%s', id, customer_id, amount, note) FROM orders) x",
    );
    (customers, orders, sum)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_database_is_backed_up_dropped_and_restored() {
    let env = env().await;
    let pg = start_postgres(env.cp);
    psql(pg.port, "postgres", "CREATE DATABASE shop");
    psql(
        pg.port,
        "shop",
        "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
         CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers(id), amount numeric(10,2), note text);
         INSERT INTO customers (name, email) SELECT 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
         INSERT INTO orders (customer_id, amount, note)
           SELECT 1 + (g % 2000), (g * 7 % 10000) / 100.0, repeat(md5(g::text), 3) || E'\\n''quoted''' FROM generate_series(1, 50000) g;",
    );
    let before = fingerprint(pg.port);
    assert_eq!((before.0.as_str(), before.1.as_str()), ("2000", "50000"));

    let ns = env.cp.namespace("pg").await.expect("namespace");
    let ns = ns; // dropped (deleted) at the end of the test
    let n = ns.name.clone();
    let client = env.cp.client();
    let repo_dir = env.cp.dir().join("repos").join(&n);
    std::fs::create_dir_all(&repo_dir).expect("repo dir");
    let (functions, tasks) = stash_operator::jobs::builtin::postgres(IMAGE, "15");
    stash_operator::jobs::builtin::apply(&client, &functions, &tasks)
        .await
        .expect("pg Functions and Tasks");
    for doc in [
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-secret"}, "stringData": {"RESTIC_PASSWORD": PASSWORD}}),
        json!({"apiVersion": "stash.appscode.com/v1alpha1", "kind": "Repository", "metadata": {"name": "repo"},
               "spec": {"backend": {"storageSecretName": "repo-secret",
                                    "local": {"mountPath": "/safe/data", "hostPath": {"path": repo_dir.to_string_lossy()}}}}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shop-auth"},
               "stringData": {"POSTGRES_USER": "postgres", "POSTGRES_PASSWORD": PG_PASSWORD}}),
        json!({"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "metadata": {"name": "shop"},
               "spec": {"type": "kubedb.com/postgres", "version": "15",
                        "clientConfig": {"url": format!("postgresql://{NODE_IP}:{}/shop?sslmode=disable", pg.port)},
                        "secret": {"name": "shop-auth"}}}),
        json!({"apiVersion": "stash.appscode.com/v1beta1", "kind": "BackupConfiguration", "metadata": {"name": "shop-backup"},
               "spec": {"schedule": "0 0 1 1 *", "task": {"name": "pg-backup-15"}, "repository": {"name": "repo"},
                        "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "shop"}},
                        "retentionPolicy": {"name": "keep-last-5", "keepLast": 5, "prune": true}}}),
    ] {
        apply(&client, &n, doc).await;
    }
    let started = Instant::now();
    let bs = run_backup_session(
        &client,
        &n,
        "shop-backup",
        "shop-backup-1",
        Duration::from_secs(180),
    )
    .await;
    let backup_took = started.elapsed();
    let snaps = restic_snapshots(&repo_dir.to_string_lossy(), PASSWORD);
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0]["paths"], json!(["/dumpfile.sql"]));
    assert_eq!(snaps[0]["hostname"], "host-0");

    // Lose the database.
    psql(pg.port, "postgres", "DROP DATABASE shop");
    let gone = psql(
        pg.port,
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname = 'shop'",
    );
    assert_eq!(gone, "0");

    apply(&client, &n, json!({
        "apiVersion": "stash.appscode.com/v1beta1", "kind": "RestoreSession", "metadata": {"name": "shop-restore"},
        "spec": {"task": {"name": "pg-restore-15"}, "repository": {"name": "repo"},
                 "target": {"ref": {"apiVersion": "appcatalog.appscode.com/v1alpha1", "kind": "AppBinding", "name": "shop"}},
                 "rules": [{"snapshots": ["latest"]}]}
    }))
    .await;
    let started = Instant::now();
    let rs = wait_session_ends(
        &client,
        &n,
        "shop-restore",
        RestorePhase::Succeeded,
        Duration::from_secs(180),
    )
    .await;
    let restore_took = started.elapsed();
    let status = rs.status.clone().expect("status");
    let after = fingerprint(pg.port);
    assert_eq!(after, before, "row counts and data checksum after restore");
    println!(
        "PostgreSQL (2000 + 50000 rows): backup session {:.1}s, restore session {:.1}s (session durations: backup {:?}, restore {:?})",
        backup_took.as_secs_f64(),
        restore_took.as_secs_f64(),
        bs.status
            .as_ref()
            .and_then(|s| s.stats.first())
            .and_then(|h| h.duration)
            .map(|d| d.as_std()),
        status
            .stats
            .first()
            .and_then(|h| h.duration)
            .map(|d| d.as_std()),
    );
    assert_no_illegal_transitions().await;
}
