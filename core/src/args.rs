//! `target.args` (later Stash): extra arguments a user passes to restic's `backup` or
//! `restore`, from an allow-list. Everything stash-rs itself decides — the repository and its
//! credentials, the host name, what is backed up, the output it reads, the cache, the locks,
//! a snapshot's time — stays stash-rs's: such an argument is refused with the reason, at
//! admission and again by the agent.

/// The restic command the arguments are for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `restic backup`.
    Backup,
    /// `restic restore`.
    Restore,
}

/// At most this many arguments, each at most [`MAX_LEN`] bytes.
pub const MAX_ARGS: usize = 64;
/// The longest argument.
pub const MAX_LEN: usize = 1024;

/// Flags each command takes from a user, with whether they take a value.
const BACKUP: &[(&str, bool)] = &[
    ("--exclude", true),
    ("--iexclude", true),
    ("--exclude-file", true),
    ("--iexclude-file", true),
    ("--exclude-if-present", true),
    ("--exclude-larger-than", true),
    ("--exclude-caches", false),
    ("--one-file-system", false),
    ("--ignore-inode", false),
    ("--ignore-ctime", false),
    ("--with-atime", false),
    ("--no-scan", false),
    ("--force", false),
    ("--parent", true),
    ("--group-by", true),
    ("--tag", true),
    ("--read-concurrency", true),
    ("--pack-size", true),
    ("--compression", true),
    ("--limit-upload", true),
    ("--limit-download", true),
];

const RESTORE: &[(&str, bool)] = &[
    ("--include", true),
    ("--exclude", true),
    ("--iinclude", true),
    ("--iexclude", true),
    ("--include-file", true),
    ("--exclude-file", true),
    ("--iinclude-file", true),
    ("--iexclude-file", true),
    ("--verify", false),
    ("--sparse", false),
    ("--overwrite", true),
    ("--delete", false),
    ("--limit-download", true),
    ("--pack-size", true),
    // With `latest`: only snapshots with these tags (Stash's own example passes it).
    ("--tag", true),
];

/// Short flags, as their long form.
const SHORT: &[(&str, &str)] = &[
    ("-x", "--one-file-system"),
    ("-f", "--force"),
    ("-e", "--exclude"),
    ("-i", "--include"),
];

/// Why a flag that restic knows is not the user's to pass.
fn refused(flag: &str, command: Command) -> Option<&'static str> {
    Some(match flag {
        "--host" | "-H" | "--hostname" => "the host name is stash-rs's (write target.alias)",
        "--dry-run" | "-n" => "it writes nothing: the host would report no snapshot or no files",
        "--skip-if-unchanged" => {
            "it takes no snapshot when nothing changed: the host would report none"
        }
        "--stdin"
        | "--stdin-filename"
        | "--stdin-from-command"
        | "--files-from"
        | "--files-from-verbatim"
        | "--files-from-raw" => "what is backed up is the target's paths (spec.target.paths)",
        "--json" | "--quiet" | "-q" | "--verbose" | "-v" => "stash-rs reads restic's output itself",
        "--repo"
        | "-r"
        | "--repository-file"
        | "--password-file"
        | "-p"
        | "--password-command"
        | "--key-hint"
        | "--cacert"
        | "--tls-client-cert"
        | "--insecure-tls"
        | "--insecure-no-password"
        | "--option"
        | "-o" => "the repository and its credentials are the Repository's and its Secret's",
        "--cache-dir" | "--no-cache" | "--cleanup-cache" => {
            "the cache is stash-rs's (spec.tempDir)"
        }
        "--no-lock" => "a command without a lock can be pruned away underneath",
        "--retry-lock" => "stash-rs waits for other hosts' locks itself",
        "--time" => "a snapshot's time is its session's (retention counts on it)",
        "--target" | "-t" if command == Command::Restore => {
            "where a host restores is the target's mounts"
        }
        "--path" | "--snapshot" if command == Command::Restore => {
            "what is restored is the rules' paths and snapshots"
        }
        _ => return None,
    })
}

/// `args` checked for `command`, as restic is to receive them (`--flag value` pairs and bare
/// flags), or, for each one refused, its index and why.
pub fn check(command: Command, args: &[String]) -> Result<Vec<String>, Vec<(usize, String)>> {
    let allowed = match command {
        Command::Backup => BACKUP,
        Command::Restore => RESTORE,
    };
    let name = match command {
        Command::Backup => "backup",
        Command::Restore => "restore",
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    if args.len() > MAX_ARGS {
        errors.push((
            MAX_ARGS,
            format!("at most {MAX_ARGS} arguments, got {}", args.len()),
        ));
        return Err(errors);
    }
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let at = i;
        i += 1;
        if arg.len() > MAX_LEN || arg.contains('\0') || arg.contains('\n') {
            errors.push((at, format!("at most {MAX_LEN} bytes, on one line")));
            continue;
        }
        if !arg.starts_with('-') || arg == "-" || arg == "--" {
            errors.push((
                at,
                format!("{arg:?} is not a flag: what restic {name} works on is stash-rs's"),
            ));
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (arg.as_str(), None),
        };
        let long = SHORT
            .iter()
            .find(|(s, _)| *s == flag)
            .map_or(flag, |(_, l)| *l);
        if let Some(why) = refused(flag, command).or_else(|| refused(long, command)) {
            errors.push((at, format!("{flag} is not allowed: {why}")));
            continue;
        }
        let Some((_, takes_value)) = allowed.iter().find(|(f, _)| *f == long) else {
            errors.push((
                at,
                format!(
                    "{flag} is not an argument stash-rs passes to restic {name} (allowed: {})",
                    allowed
                        .iter()
                        .map(|(f, _)| *f)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
            continue;
        };
        match (takes_value, inline) {
            (false, None) => out.push(long.to_string()),
            (false, Some(_)) => errors.push((at, format!("{flag} takes no value"))),
            (true, Some(v)) => {
                out.push(long.to_string());
                out.push(v.to_string());
            }
            (true, None) => match args.get(i) {
                Some(v) if !v.starts_with('-') => {
                    out.push(long.to_string());
                    out.push(v.clone());
                    i += 1;
                }
                _ => errors.push((at, format!("{flag} needs a value ({flag}=<value>)"))),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowed_flags_pass_in_either_form() {
        assert_eq!(
            check(
                Command::Backup,
                &v(&[
                    "--one-file-system",
                    "--exclude-larger-than=1M",
                    "--tag",
                    "weekly",
                    "-x"
                ])
            ),
            Ok(v(&[
                "--one-file-system",
                "--exclude-larger-than",
                "1M",
                "--tag",
                "weekly",
                "--one-file-system"
            ]))
        );
        assert_eq!(
            check(
                Command::Restore,
                &v(&["--verify", "--overwrite=if-changed"])
            ),
            Ok(v(&["--verify", "--overwrite", "if-changed"]))
        );
    }

    #[test]
    fn what_is_stash_rs_s_is_refused_with_the_reason() {
        let errs = check(
            Command::Backup,
            &v(&[
                "--host=x",
                "--password-file",
                "/etc/shadow",
                "/etc",
                "--frobnicate",
                "--tag",
            ]),
        )
        .expect_err("refused");
        let text: Vec<String> = errs.iter().map(|(i, w)| format!("{i}: {w}")).collect();
        assert!(
            text[0].starts_with("0: --host is not allowed: the host name"),
            "{text:?}"
        );
        assert!(
            text[1].starts_with("1: --password-file is not allowed"),
            "{text:?}"
        );
        // "/etc/shadow" was not taken as the refused flag's value: it is no flag.
        assert!(
            text[2].contains("\"/etc/shadow\" is not a flag"),
            "{text:?}"
        );
        assert!(text[3].contains("\"/etc\" is not a flag"), "{text:?}");
        assert!(
            text[4].contains("--frobnicate is not an argument"),
            "{text:?}"
        );
        assert!(text[5].contains("--tag needs a value"), "{text:?}");
        assert!(check(Command::Backup, &v(&["--dry-run"])).is_err());
        assert!(check(Command::Restore, &v(&["--target", "/"])).is_err());
        assert!(check(Command::Backup, &v(&["--force=yes"])).is_err());
        assert!(check(Command::Backup, &vec!["-x".to_string(); MAX_ARGS + 1]).is_err());
    }
}
