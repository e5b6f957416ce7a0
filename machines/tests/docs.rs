//! The committed diagrams under `docs/lifecycles/` are exactly what the macro generates.
//! `STASH_BLESS=1 cargo test -p stash-machines --test docs` rewrites them.

use stash_machines::{backup_host, backup_session, repository, restore_host, restore_session};
use std::path::PathBuf;

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/lifecycles")
}

fn readme() -> String {
    format!(
        "# Lifecycles\n\n\
         Generated from the `#[lifecycle]` specs in `machines/src/backup_session/mod.rs`,\n\
         `machines/src/restore_session.rs`, `machines/src/backup_host.rs`,\n\
         `machines/src/restore_host.rs` and `machines/src/repository.rs`; do not edit. `cargo test -p stash-machines --test docs`\n\
         fails when these files are stale, and `STASH_BLESS=1` rewrites them.\n\n\
         Every transition moves forward (the macro rejects cycles), terminal phases absorb every\n\
         event, and a guarded transition (`Event [guard]`) fires only when its guard holds; the\n\
         unguarded transition after it is the fallback. The model tests in `model-tests/` check the\n\
         machines built on these lifecycles.\n\n\
         ## BackupSession\n\n\
         `Unknown` is part of the API but never set for backups. `Skipped` means the session never\n\
         ran: its BackupConfiguration was paused, another session of it was running, or its deadline\n\
         passed before it could start.\n\n\
         ```mermaid\n{}```\n\n\
         Graphviz: [backup-session.dot](backup-session.dot).\n\n\
         ## RestoreSession\n\n\
         A host that no rule matches fails the session before it starts (it is never reported as a\n\
         success).\n\n\
         ```mermaid\n{}```\n\n\
         Graphviz: [restore-session.dot](restore-session.dot).\n\n\
         ## BackupHost\n\n\
         What one host's agent (a sidecar, or a backup Job's pod) does for a BackupSession. The\n\
         phase is never stored: the agent computes it from the session's phase, its own entry in\n\
         `status.stats` and the snapshots restic holds with the session's tag, and writes its\n\
         entry only from `Reporting`.\n\n\
         ```mermaid\n{}```\n\n\
         Graphviz: [backup-host.dot](backup-host.dot).\n\n\
         ## RestoreHost\n\n\
         What one host's restore agent (the init-container, or a restore Job's pod) does for a\n\
         RestoreSession. A host whose entry is already there is `Reported`: a restarted\n\
         init-container does not restore twice.\n\n\
         ```mermaid\n{}```\n\n\
         Graphviz: [restore-host.dot](restore-host.dot).\n\n\
         ## Repository\n\n\
         What happens to a deleted Repository's restic data. The finalizer goes only in a terminal\n\
         phase; every one but `Kept` (no `wipeOut` asked) is announced by an Event. A failed\n\
         wipe-out is retried from `Failing` until it succeeds, the user abandons it\n\
         (`stash.appscode.com/abandon-wipe-out=true`), or its Secret goes with its namespace.\n\
         `model-tests/tests/repository.rs` explores it.\n\n\
         ```mermaid\n{}```\n\n\
         Graphviz: [repository.dot](repository.dot).\n",
        backup_session::MERMAID,
        restore_session::MERMAID,
        backup_host::MERMAID,
        restore_host::MERMAID,
        repository::MERMAID
    )
}

#[test]
fn committed_lifecycle_diagrams_are_up_to_date() {
    let files = [
        ("backup-session.mmd", backup_session::MERMAID.to_string()),
        ("backup-session.dot", backup_session::DOT.to_string()),
        ("restore-session.mmd", restore_session::MERMAID.to_string()),
        ("restore-session.dot", restore_session::DOT.to_string()),
        ("backup-host.mmd", backup_host::MERMAID.to_string()),
        ("backup-host.dot", backup_host::DOT.to_string()),
        ("restore-host.mmd", restore_host::MERMAID.to_string()),
        ("restore-host.dot", restore_host::DOT.to_string()),
        ("repository.mmd", repository::MERMAID.to_string()),
        ("repository.dot", repository::DOT.to_string()),
        ("README.md", readme()),
    ];
    let bless = std::env::var_os("STASH_BLESS").is_some_and(|v| v == "1");
    let mut stale = Vec::new();
    for (name, want) in files {
        let path = docs().join(name);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            if bless {
                std::fs::create_dir_all(docs()).unwrap();
                std::fs::write(&path, want).unwrap();
                eprintln!("blessed {}", path.display());
            } else {
                stale.push(name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?} under docs/lifecycles/; rerun with STASH_BLESS=1 to rewrite them"
    );
}
