//! Local repositories with the pinned restic binary.
mod common;

use std::time::Duration;

use common::*;
use stash_restic::{
    DumpOptions, Error, Location, RestoreOptions, RetentionPolicy, SnapshotFilter, format_size,
};

#[tokio::test]
async fn local_backup_twice_check_snapshots_restore_forget_stats() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let n = gen_tree(&src, 1);
    let repo = repo(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "s3cret pw")]),
        work.path(),
    );

    assert!(
        repo.ensure_initialized().await.unwrap(),
        "a new repository is initialised"
    );
    assert!(
        !repo.ensure_initialized().await.unwrap(),
        "an existing one is not"
    );

    let first = repo.backup(&src, "host-0", &[]).await.unwrap();
    assert_eq!(first.files_new as usize, n);
    assert_eq!((first.files_changed, first.files_unmodified), (0, 0));
    assert_eq!(first.total_files_processed as usize, n);
    assert!(first.total_bytes_processed > 0 && first.data_added > 0);
    assert_eq!(first.snapshot_id.len(), 64);
    assert_eq!(first.short_id(), &first.snapshot_id[..8]);

    // One new file, one modified file.
    std::fs::write(src.join("a/b/new.txt"), b"brand new").unwrap();
    std::fs::write(src.join("a/file-1.bin"), b"modified content").unwrap();
    let second = repo
        .backup(&src, "host-0", &["daily".to_string()])
        .await
        .unwrap();
    assert_eq!((second.files_new, second.files_changed), (1, 1));
    assert_eq!(second.files_unmodified as usize, n - 1);
    assert_eq!(second.total_files_processed as usize, n + 1);

    assert!(repo.check(false).await.unwrap());

    let snaps = repo.snapshots(&SnapshotFilter::default()).await.unwrap();
    assert_eq!(snaps.len(), 2);
    let src_str = src.display().to_string();
    for s in &snaps {
        assert_eq!(s.hostname, "host-0");
        assert_eq!(s.paths, std::slice::from_ref(&src_str));
        assert_eq!(s.short_id, &s.id[..8]);
    }
    assert_eq!(snaps[1].id, second.snapshot_id);
    assert_eq!(snaps[1].tags, ["daily"]);
    assert_eq!(snaps[1].parent.as_deref(), Some(first.snapshot_id.as_str()));
    let by_host = repo
        .snapshots(&SnapshotFilter {
            hosts: vec!["host-1".into()],
            no_lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(by_host.is_empty());
    let by_id = repo
        .snapshots(&SnapshotFilter {
            ids: vec![first.short_id().into()],
            no_lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].id, first.snapshot_id);

    // Restore the latest snapshot of host-0 and compare every byte.
    let target = work.path().join("restore");
    let summary = repo
        .restore(&RestoreOptions {
            host: Some("host-0".into()),
            ..RestoreOptions::new("latest", &target)
        })
        .await
        .unwrap();
    assert_eq!(summary.total_bytes, second.total_bytes_processed);
    let want = checksums(&src);
    assert_eq!(want.len(), n + 1);
    assert_eq!(checksums(&restored(&target, &src)), want);

    // Restore the first snapshot, only one sub-directory.
    let target1 = work.path().join("restore-first");
    repo.restore(&RestoreOptions {
        includes: vec![format!("{src_str}/a/b")],
        ..RestoreOptions::new(&first.snapshot_id, &target1)
    })
    .await
    .unwrap();
    let got = checksums(&restored(&target1, &src));
    assert!(
        !got.is_empty() && got.keys().all(|k| k.starts_with("a/b/")),
        "{got:?}"
    );
    assert!(
        !got.contains_key("a/b/new.txt"),
        "the first snapshot has no new.txt"
    );

    let stats_before = repo.stats().await.unwrap();
    assert_eq!(stats_before.snapshots_count, 2);

    // keepLast=1 + prune: one kept, one removed.
    let out = repo
        .forget(&RetentionPolicy {
            keep_last: 1,
            prune: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((out.kept, out.removed), (1, 1));
    assert_eq!(out.groups.len(), 1);
    assert_eq!(out.groups[0].host, "host-0");
    assert_eq!(out.groups[0].keep[0].id, second.snapshot_id);
    assert_eq!(out.groups[0].remove[0].id, first.snapshot_id);
    assert_eq!(
        repo.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(repo.check(false).await.unwrap(), "consistent after prune");

    // An empty policy keeps everything (restic itself refuses a forget without policy).
    let out = repo.forget(&RetentionPolicy::default()).await.unwrap();
    assert_eq!((out.kept, out.removed), (1, 0));

    let stats = repo.stats().await.unwrap();
    assert!(stats.total_size > 0);
    assert_eq!(stats.snapshots_count, 1);
    assert_eq!(
        stats.total_size, second.total_bytes_processed,
        "restore-size of the one snapshot"
    );
    assert!(
        format_size(stats.total_size).ends_with("KiB")
            || format_size(stats.total_size).ends_with("MiB")
    );
}

#[tokio::test]
async fn wrong_password_is_typed_and_leaves_repo_untouched() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    gen_tree(&src, 2);
    let path = work.path().join("repo");
    let good = repo(
        Location::local(&path, ""),
        creds(&[("RESTIC_PASSWORD", "right-password")]),
        work.path(),
    );
    good.ensure_initialized().await.unwrap();
    good.backup(&src, "host-0", &[]).await.unwrap();
    let config_before = std::fs::read(path.join("config")).unwrap();
    let keys_before = std::fs::read_dir(path.join("keys")).unwrap().count();

    let bad = repo(
        Location::local(&path, ""),
        creds(&[("RESTIC_PASSWORD", "wrong-password")]),
        work.path(),
    );
    let e = bad.ensure_initialized().await.unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }), "{e:?}");
    assert_eq!(e.exit_code(), Some(12));
    assert!(!e.to_string().contains("wrong-password"), "{e}");
    let e = bad.backup(&src, "host-0", &[]).await.unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }), "{e:?}");
    let e = bad.snapshots(&SnapshotFilter::default()).await.unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }), "{e:?}");

    assert_eq!(
        std::fs::read(path.join("config")).unwrap(),
        config_before,
        "config unchanged"
    );
    assert_eq!(
        std::fs::read_dir(path.join("keys")).unwrap().count(),
        keys_before,
        "no key added"
    );
    assert_eq!(
        good.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        1,
        "snapshot count unchanged"
    );
    assert!(
        good.locks().await.unwrap().is_empty(),
        "no lock left behind"
    );
}

#[tokio::test]
async fn missing_repository_and_password_errors() {
    let work = tempfile::tempdir().unwrap();
    let r = repo(
        Location::local(work.path().join("none"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    let e = r.snapshots(&SnapshotFilter::default()).await.unwrap_err();
    assert!(matches!(e, Error::RepositoryNotFound { .. }), "{e:?}");
    assert_eq!(e.exit_code(), Some(10));
    assert!(e.to_string().contains("repository does not exist"), "{e}");
    assert!(
        !work.path().join("none").exists(),
        "a read does not create the repository"
    );

    // A password that restic would trim from a file is passed exactly (as upstream did).
    let r = repo(
        Location::local(work.path().join("ws"), ""),
        creds(&[("RESTIC_PASSWORD", "pw\n")]),
        work.path(),
    );
    r.ensure_initialized().await.unwrap();
    let trimmed = repo(
        Location::local(work.path().join("ws"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    let e = trimmed
        .snapshots(&SnapshotFilter::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::WrongPassword { .. }), "{e:?}");
}

#[tokio::test]
async fn stdin_backup_and_dump_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let repo = repo(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    repo.ensure_initialized().await.unwrap();

    // A piped reader (e.g. a dump streamed by the agent).
    let mut data = vec![0u8; 2 * 1024 * 1024 + 17];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let mut reader: &[u8] = &data;
    let s = repo
        .backup_stdin(&mut reader, "db/dump.bin", "host-0", &[])
        .await
        .unwrap();
    assert_eq!(s.total_bytes_processed, data.len() as u64);
    assert_eq!(s.files_new, 1);

    // restic runs the command itself.
    let cmd = ["sh", "-c", "printf 'CREATE TABLE t;\\nINSERT 1;\\n'"];
    let s2 = repo
        .backup_command(&cmd, "pg.sql", "host-1", &[])
        .await
        .unwrap();
    assert_eq!(s2.total_bytes_processed, 26);

    let mut out: Vec<u8> = Vec::new();
    let opts = DumpOptions {
        snapshot: "latest".into(),
        file: "/db/dump.bin".into(),
        host: Some("host-0".into()),
        paths: vec![],
    };
    repo.dump(&opts, &mut out).await.unwrap();
    assert!(
        out == data,
        "dump returns the exact bytes ({} vs {})",
        out.len(),
        data.len()
    );

    let mut out: Vec<u8> = Vec::new();
    repo.dump(
        &DumpOptions {
            snapshot: s2.snapshot_id.clone(),
            file: "/pg.sql".into(),
            host: None,
            paths: vec![],
        },
        &mut out,
    )
    .await
    .unwrap();
    assert_eq!(out, b"CREATE TABLE t;\nINSERT 1;\n");

    // A failing command fails the backup and leaves no snapshot.
    let e = repo
        .backup_command(
            &["sh", "-c", "echo partial; exit 3"],
            "bad.sql",
            "host-2",
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Failed { code: Some(1), .. }), "{e:?}");
    assert!(
        e.to_string().starts_with("exit status 1, reason: Fatal:"),
        "{e}"
    );
    assert_eq!(
        repo.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );

    // Dump of a missing file is an error.
    let mut out: Vec<u8> = Vec::new();
    let e = repo
        .dump(
            &DumpOptions {
                snapshot: "latest".into(),
                file: "/nope".into(),
                host: Some("host-0".into()),
                paths: vec![],
            },
            &mut out,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Failed { .. }), "{e:?}");
}

#[tokio::test]
async fn forget_ids_locks_and_unlock() {
    let work = tempfile::tempdir().unwrap();
    let repo = repo(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    repo.ensure_initialized().await.unwrap();
    let a = repo
        .backup_command(&["printf", "a"], "a", "host-0", &[])
        .await
        .unwrap();
    let b = repo
        .backup_command(&["printf", "b"], "b", "host-0", &[])
        .await
        .unwrap();

    // The Snapshot API deletes by id; an unknown id removes nothing.
    let e = repo
        .forget_ids(&[a.short_id().into(), "deadbeef".into()], true)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::SnapshotNotFound { id } if id == "deadbeef"),
        "{e:?}"
    );
    assert_eq!(
        repo.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .len(),
        2
    );
    repo.forget_ids(&[a.short_id().into()], true).await.unwrap();
    let left = repo
        .snapshots(&SnapshotFilter {
            no_lock: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [b.snapshot_id.as_str()]
    );

    // A running backup holds a (fresh, non-stale) lock.
    let slow = repo.clone();
    let running = tokio::spawn(async move {
        slow.backup_command(&["sh", "-c", "sleep 4; echo x"], "slow", "host-0", &[])
            .await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let locks = loop {
        let l = repo.locks().await.unwrap();
        if !l.is_empty() || std::time::Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(locks.len(), 1, "{locks:?}");
    assert!(!locks[0].exclusive);
    assert!(!locks[0].is_stale(jiff::Timestamp::now(), None));
    assert!(repo.stale_locks(None).await.unwrap().is_empty());
    running.await.unwrap().unwrap();
    assert!(repo.locks().await.unwrap().is_empty());
    repo.unlock(true).await.unwrap();
}

#[tokio::test]
async fn timeout_kills_the_process_group() {
    let work = tempfile::tempdir().unwrap();
    let base = repo(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    base.ensure_initialized().await.unwrap();
    let marker = work.path().join("child-survived");
    let short = stash_restic::Repo::builder(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
    )
    .binary(restic())
    .scratch_dir(work.path().join("scratch"))
    .timeout(Some(Duration::from_secs(3)))
    .build()
    .unwrap();
    let started = std::time::Instant::now();
    let script = format!("sleep 8; touch {}", marker.display());
    let e = short
        .backup_command(&["sh", "-c", script.as_str()], "x", "host-0", &[])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert!(
        !marker.exists(),
        "the command restic started was killed with it"
    );
    assert!(
        base.snapshots(&SnapshotFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        base.locks().await.unwrap().is_empty(),
        "restic removed its lock on SIGTERM"
    );
}

#[tokio::test]
async fn corrupted_pack_is_reported_by_check() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    gen_tree(&src, 5);
    let path = work.path().join("repo");
    let repo = repo(
        Location::local(&path, ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    repo.ensure_initialized().await.unwrap();
    repo.backup(&src, "host-0", &[]).await.unwrap();
    assert!(repo.check(true).await.unwrap());

    // Flip bytes inside every pack file.
    let mut packs = 0;
    for sub in std::fs::read_dir(path.join("data")).unwrap() {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            let mut data = std::fs::read(&f).unwrap();
            for b in data.iter_mut().skip(10).take(16) {
                *b ^= 0xff;
            }
            std::fs::write(&f, data).unwrap();
            packs += 1;
        }
    }
    assert!(packs > 0);
    let report = repo.check_report(true).await.unwrap();
    assert!(!report.is_ok());
    assert!(report.num_errors > 0, "{report:?}");
    assert!(
        report.broken_packs.as_ref().is_some_and(|p| !p.is_empty()),
        "{report:?}"
    );
    assert!(
        report
            .errors
            .iter()
            .any(|e| e.contains("repository contains errors")),
        "{report:?}"
    );
    assert!(!repo.check(true).await.unwrap());
}

/// Dropping a running call (a cancelled request, an aborted task) stops restic the way it can
/// clean up: SIGTERM to its process group, SIGKILL only after a grace. Its lock is gone
/// without `unlock` (a SIGKILLed restic left it, and an exclusive one blocks every backup).
#[tokio::test]
async fn a_cancelled_call_leaves_no_lock() {
    let work = tempfile::tempdir().unwrap();
    let repo = repo(
        Location::local(work.path().join("repo"), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
        work.path(),
    );
    repo.ensure_initialized().await.unwrap();
    let marker = work.path().join("child-survived");
    let script = format!("sleep 5; touch {}", marker.display());
    let cmd = ["sh", "-c", script.as_str()];
    let cancelled = tokio::time::timeout(
        Duration::from_secs(2),
        repo.backup_command(&cmd, "x", "host-0", &[]),
    )
    .await;
    assert!(cancelled.is_err(), "the call was still running");
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let locks = repo.locks().await.unwrap();
        if locks.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "restic's lock is still there: {locks:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!marker.exists(), "the command restic started died with it");
    assert!(repo.locks().await.unwrap().is_empty());
}

/// A restic that holds a (shared) lock on `repo_dir` until the returned child is killed, on
/// this host, or (with `host`) in a UTS namespace of its own named `host` (needs root).
fn holder(repo_dir: &std::path::Path, host: Option<&str>) -> std::process::Child {
    holding(
        repo_dir,
        host,
        &[
            "backup",
            "--stdin",
            "--stdin-filename",
            "held",
            "--no-cache",
            "-q",
        ],
    )
}

/// restic `args` on `repo_dir` (on this host, or in a UTS namespace named `host`), returned
/// once it holds a lock.
fn holding(repo_dir: &std::path::Path, host: Option<&str>, args: &[&str]) -> std::process::Child {
    let restic = restic();
    let mut cmd = match host {
        None => std::process::Command::new(&restic),
        Some(h) => {
            let mut c = std::process::Command::new("unshare");
            c.args([
                "--uts",
                "sh",
                "-c",
                &format!("hostname {h} && exec \"$0\" \"$@\""),
            ])
            .arg(&restic);
            c
        }
    };
    cmd.args(args)
        .env("RESTIC_REPOSITORY", repo_dir)
        .env("RESTIC_PASSWORD", "pw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().expect("spawn the lock holder");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // A complete lock file: 64 hex digits (the local backend writes a temporary file first).
    let complete = |d: std::fs::ReadDir| {
        d.flatten()
            .filter(|e| {
                let n = e.file_name();
                let n = n.to_string_lossy();
                n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .count()
    };
    while std::fs::read_dir(repo_dir.join("locks")).map_or(0, complete) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder took a lock"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

#[tokio::test]
async fn a_dead_restic_s_lock_of_this_host_is_unlocked_and_another_host_s_is_left() {
    // Root: the second holder runs in a UTS namespace of its own (another pod's hostname).
    assert!(
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")),
        "this test needs root (unshare --uts)"
    );
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("repo");
    let repo = stash_restic::Repo::builder(
        Location::local(dir.clone(), ""),
        creds(&[("RESTIC_PASSWORD", "pw")]),
    )
    .binary(restic())
    .scratch_dir(work.path().join("scratch"))
    .timeout(Some(Duration::from_secs(50)))
    .retry_lock(Duration::from_secs(1))
    .build()
    .unwrap();
    repo.ensure_initialized().await.unwrap();
    repo.backup_command(&["printf", "a"], "a", "host-0", &[])
        .await
        .unwrap();
    let policy = RetentionPolicy {
        keep_last: 1,
        prune: true,
        ..Default::default()
    };

    // SIGKILLed on this host: its lock stays, and refuses the exclusive forget --prune...
    let mut dead = holder(&dir, None);
    let dead_pid = dead.id();
    dead.kill().unwrap();
    dead.wait().unwrap();
    assert_eq!(
        repo.locks().await.unwrap().len(),
        1,
        "the dead restic's lock"
    );
    // ...until restic proves it stale (this host, a dead pid): unlocked, run again, done.
    repo.forget(&policy)
        .await
        .expect("forget --prune after the stale lock is removed");
    assert!(repo.locks().await.unwrap().is_empty(), "no lock left");
    let removed = stash_restic::take_removed_locks();
    assert!(
        removed
            .iter()
            .any(|r| r.starts_with(&format!("shared lock of PID {dead_pid} on "))),
        "the removed lock is named: {removed:?}"
    );

    // A `check` SIGKILLed on this host leaves an exclusive lock, which refuses a backup (a
    // shared command, not cleared beforehand): refused, proven stale, unlocked, run again.
    let src = work.path().join("src");
    gen_tree(&src, 7);
    repo.backup(&src, "host-0", &[]).await.unwrap();
    let mut dead = holding(&dir, None, &["check", "--read-data", "--no-cache"]);
    let dead_pid = dead.id();
    dead.kill().unwrap();
    dead.wait().unwrap();
    let left = repo.locks().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].exclusive, "the dead check's lock is exclusive");
    repo.backup(&src, "host-0", &[])
        .await
        .expect("a backup after the dead exclusive lock is removed");
    assert!(repo.locks().await.unwrap().is_empty(), "no lock left");
    let removed = stash_restic::take_removed_locks();
    assert!(
        removed
            .iter()
            .any(|r| r.starts_with(&format!("exclusive lock of PID {dead_pid} on "))),
        "the removed lock is named: {removed:?}"
    );

    // A live restic of another host: its lock is waited for and never removed.
    let mut live = holder(&dir, Some("another-pod"));
    let locks = repo.locks().await.unwrap();
    assert_eq!(locks.len(), 1);
    assert_eq!(locks[0].hostname, "another-pod");
    let e = repo.forget(&policy).await.unwrap_err();
    assert!(
        matches!(&e, Error::Locked { reason } if reason.contains("another-pod")),
        "{e:?}"
    );
    assert_eq!(
        repo.locks().await.unwrap().len(),
        1,
        "the live lock is left"
    );
    // With a lock reporter (an agent's session): the lock in a command's way is reported
    // before the command and once more when it is refused; a shared lock is in no backup's way.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut reporting = repo.clone();
    let sink = seen.clone();
    reporting.set_lock_reporter(std::sync::Arc::new(move |locks| {
        let sink = sink.clone();
        Box::pin(async move {
            sink.lock()
                .unwrap()
                .extend(locks.into_iter().map(|l| l.hostname));
        })
    }));
    reporting
        .backup_command(&["printf", "b"], "b", "host-0", &[])
        .await
        .expect("a backup beside another host's shared lock");
    assert!(seen.lock().unwrap().is_empty(), "{seen:?}");
    reporting.forget(&policy).await.unwrap_err();
    assert_eq!(*seen.lock().unwrap(), ["another-pod", "another-pod"]);
    live.kill().unwrap();
    live.wait().unwrap();
}
