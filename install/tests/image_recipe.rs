//! The stash image the test cluster runs is built without Docker by testenv/images.sh; it must be
//! the image the Dockerfile's final stage describes. This compares the two: base suite, apt
//! packages, the binaries copied in and where they go, USER, ENTRYPOINT and the labels. Any other
//! instruction in the final stage is a difference too, since the recipe does not model it.
//!
//! When this fails, change both files together: the Dockerfile's final stage and the `STASH_*`
//! assignments at the top of testenv/images.sh.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use stash_install::InstallOptions;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// What both files say about the stash image.
#[derive(Debug, Default, PartialEq)]
struct Recipe {
    /// The Debian suite of the base (`FROM debian:<suite>-slim`).
    suite: String,
    /// apt packages, sorted.
    packages: Vec<String>,
    /// (build stage the binary comes from, destination path), sorted.
    binaries: Vec<(String, String)>,
    user: String,
    entrypoint: Vec<String>,
    /// Values as written, with `$VAR` spelled `${VAR}`.
    labels: BTreeMap<String, String>,
}

/// Splits shell-like text into words: whitespace separates, '…' and "…" quote (a backslash
/// escapes in double quotes and outside), `#` at the start of a word comments out the rest of
/// the line. Variables are not expanded.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '#' if !in_word => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '\'' => {
                in_word = true;
                cur.extend(chars.by_ref().take_while(|&c| c != '\''));
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => cur.extend(chars.next()),
                        c => cur.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                cur.extend(chars.next());
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// `$VAR` → `${VAR}`, so both spellings compare equal.
fn braced(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if rest.starts_with('{') {
            out.push('$');
            continue;
        }
        let n = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.push_str(&format!("${{{}}}", &rest[..n]));
        rest = &rest[n..];
    }
    out + rest
}

fn label_pairs(
    ws: &[String],
    problems: &mut Vec<String>,
    whence: &str,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for w in ws {
        match w.split_once('=') {
            Some((k, v)) => {
                labels.insert(k.to_string(), braced(v));
            }
            None => problems.push(format!("{whence}: label {w:?} is not KEY=VALUE")),
        }
    }
    labels
}

/// The final stage of a Dockerfile, as (INSTRUCTION, arguments) with continuation lines joined
/// and comments dropped.
fn final_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let t = line.trim();
        if t.starts_with('#') || (t.is_empty() && pending.is_empty()) {
            continue;
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                pending.push_str(part);
                pending.push(' ');
            }
            None => {
                pending.push_str(t);
                let full = std::mem::take(&mut pending);
                let (ins, args) = full
                    .trim()
                    .split_once(char::is_whitespace)
                    .unwrap_or((full.trim(), ""));
                instructions.push((ins.to_ascii_uppercase(), args.trim().to_string()));
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .unwrap_or(0);
    instructions.split_off(last_from)
}

fn from_dockerfile(dockerfile: &str, problems: &mut Vec<String>) -> Recipe {
    let mut r = Recipe::default();
    for (ins, args) in final_stage(dockerfile) {
        match ins.as_str() {
            "FROM" => {
                let image = args.split_whitespace().next().unwrap_or("");
                match image
                    .strip_prefix("debian:")
                    .and_then(|t| t.strip_suffix("-slim"))
                {
                    Some(suite) => r.suite = suite.to_string(),
                    None => problems.push(format!(
                        "Dockerfile: final stage is FROM {image}, not debian:<suite>-slim"
                    )),
                }
            }
            "ARG" => {}
            "RUN" => {
                for command in args.replace("&&", ";").replace('|', ";").split(';') {
                    let ws = words(command);
                    if let Some(i) = ws
                        .windows(2)
                        .position(|w| w[0] == "apt-get" && w[1] == "install")
                    {
                        r.packages
                            .extend(ws[i + 2..].iter().filter(|w| !w.starts_with('-')).cloned());
                    }
                }
            }
            "COPY" | "ADD" => {
                let ws = words(&args);
                let from = ws.iter().find_map(|w| w.strip_prefix("--from="));
                let paths: Vec<&String> = ws.iter().filter(|w| !w.starts_with("--")).collect();
                match (ins.as_str(), from, paths.as_slice()) {
                    ("COPY", Some(stage), [_src, dest]) => r.binaries.push((stage.to_string(), dest.to_string())),
                    _ => problems.push(format!("Dockerfile: the recipe only models `COPY --from=STAGE SRC DEST`, not `{ins} {args}`")),
                }
            }
            "USER" => r.user = args,
            "ENTRYPOINT" => match serde_json::from_str::<Vec<String>>(&args) {
                Ok(v) => r.entrypoint = v,
                Err(e) => problems.push(format!(
                    "Dockerfile: ENTRYPOINT {args} is not the exec (JSON) form: {e}"
                )),
            },
            "LABEL" => {
                let labels = label_pairs(&words(&args), problems, "Dockerfile");
                r.labels.extend(labels);
            }
            other => problems.push(format!(
                "Dockerfile: the final stage's {other} has no counterpart in testenv/images.sh"
            )),
        }
    }
    // The same package twice would be a no-op for apt; compare sets.
    r.packages.sort();
    r.packages.dedup();
    r.binaries.sort();
    r
}

/// The words of `NAME=value` or `NAME=(…)` (possibly spanning lines) at the start of a line.
fn assignment(script: &str, name: &str) -> Option<Vec<String>> {
    let prefix = format!("{name}=");
    let at = if script.starts_with(&prefix) {
        0
    } else {
        script.find(&format!("\n{prefix}"))? + 1
    };
    let value = &script[at + prefix.len()..];
    if let Some(array) = value.strip_prefix('(') {
        // The array ends at the first `)` outside quotes and comments.
        let (mut quote, mut comment) = (None, false);
        let end = array.char_indices().find_map(|(i, c)| {
            match (quote, c) {
                _ if comment => comment = c != '\n',
                (None, '#') => comment = true,
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, ')') => return Some(i),
                _ => {}
            }
            None
        })?;
        Some(words(&array[..end]))
    } else {
        Some(
            words(value.lines().next().unwrap_or(""))
                .into_iter()
                .take(1)
                .collect(),
        )
    }
}

fn from_script(script: &str, problems: &mut Vec<String>) -> Recipe {
    let mut get = |name: &str| {
        assignment(script, name).unwrap_or_else(|| {
            problems.push(format!(
                "testenv/images.sh: no `{name}=` assignment at the start of a line"
            ));
            Vec::new()
        })
    };
    let scalar = |v: Vec<String>| v.into_iter().next().unwrap_or_default();
    let suite = scalar(get("STASH_SUITE"));
    let mut packages = get("STASH_PACKAGES");
    let binaries = get("STASH_BINARIES");
    let user = scalar(get("STASH_USER"));
    let entrypoint = get("STASH_ENTRYPOINT");
    let labels = get("STASH_LABELS");
    let mut r = Recipe {
        suite,
        user,
        entrypoint,
        labels: label_pairs(&labels, problems, "testenv/images.sh"),
        ..Recipe::default()
    };
    packages.sort();
    packages.dedup();
    r.packages = packages;
    for b in binaries {
        match b.split_once(':') {
            Some((stage, dest)) => r.binaries.push((stage.to_string(), dest.to_string())),
            None => problems.push(format!(
                "testenv/images.sh: STASH_BINARIES entry {b:?} is not STAGE:DEST"
            )),
        }
    }
    r.binaries.sort();
    r
}

/// Every way the Dockerfile's final stage and the script's recipe differ.
fn problems(dockerfile: &str, script: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let d = from_dockerfile(dockerfile, &mut problems);
    let s = from_script(script, &mut problems);
    let mut differ = |what: &str, d: String, s: String| {
        if d != s {
            problems.push(format!(
                "{what} disagree:\n  Dockerfile:        {d}\n  testenv/images.sh: {s}"
            ));
        }
    };
    differ("the base suites", d.suite, s.suite);
    differ(
        "the apt packages",
        d.packages.join(" "),
        s.packages.join(" "),
    );
    differ(
        "the binaries (stage, destination)",
        format!("{:?}", d.binaries),
        format!("{:?}", s.binaries),
    );
    differ("the USERs", d.user, s.user);
    differ(
        "the ENTRYPOINTs",
        format!("{:?}", d.entrypoint),
        format!("{:?}", s.entrypoint),
    );
    differ(
        "the labels",
        format!("{:?}", d.labels),
        format!("{:?}", s.labels),
    );
    problems
}

#[test]
fn images_sh_builds_what_the_dockerfile_describes() {
    let found = problems(&read("Dockerfile"), &read("testenv/images.sh"));
    assert!(
        found.is_empty(),
        "the Dockerfile's final stage and testenv/images.sh disagree:\n{}",
        found.join("\n")
    );
}

#[test]
fn both_sides_are_actually_parsed() {
    let mut p = Vec::new();
    let d = from_dockerfile(&read("Dockerfile"), &mut p);
    let s = from_script(&read("testenv/images.sh"), &mut p);
    assert!(p.is_empty(), "{p:?}");
    for r in [&d, &s] {
        assert_eq!(r.suite, "bookworm");
        for pkg in ["ca-certificates", "tzdata", "postgresql-client"] {
            assert!(
                r.packages.iter().any(|p| p == pkg),
                "{pkg} missing in {r:?}"
            );
        }
        assert!(
            r.binaries
                .contains(&("restic".into(), "/usr/local/bin/restic".into())),
            "{r:?}"
        );
        assert!(
            r.binaries
                .contains(&("stash".into(), "/usr/local/bin/stash".into())),
            "{r:?}"
        );
        assert_eq!(
            r.entrypoint.first().map(String::as_str),
            Some("/usr/local/bin/stash")
        );
        assert_eq!(
            r.labels
                .get("io.stash-rs.restic.version")
                .map(String::as_str),
            Some("${RESTIC_VERSION}")
        );
        assert_eq!(
            r.labels
                .get("org.opencontainers.image.description")
                .map(String::as_str),
            Some("Kubernetes backup operator speaking the Stash API")
        );
    }
}

#[test]
fn every_kind_of_difference_is_caught() {
    let docker = read("Dockerfile");
    let script = read("testenv/images.sh");
    let mutations: &[(&str, &str, &str, &str)] = &[
        (
            "Dockerfile",
            "tzdata postgresql-client",
            "tzdata postgresql-client curl",
            "apt packages",
        ),
        (
            "Dockerfile",
            "ca-certificates tzdata postgresql-client",
            "ca-certificates postgresql-client",
            "apt packages",
        ),
        (
            "images.sh",
            "STASH_PACKAGES=(ca-certificates tzdata postgresql-client)",
            "STASH_PACKAGES=(ca-certificates tzdata)",
            "apt packages",
        ),
        (
            "Dockerfile",
            "/restic-bin /usr/local/bin/restic",
            "/restic-bin /usr/bin/restic",
            "binaries",
        ),
        (
            "images.sh",
            "restic:/usr/local/bin/restic",
            "restic:/usr/local/bin/restic2",
            "binaries",
        ),
        ("Dockerfile", "USER 65534:65534", "USER 0:0", "USER"),
        (
            "images.sh",
            "STASH_USER=65534:65534",
            "STASH_USER=65534",
            "USER",
        ),
        (
            "Dockerfile",
            "ENTRYPOINT [\"/usr/local/bin/stash\"]",
            "ENTRYPOINT [\"/usr/local/bin/stash\", \"run\"]",
            "ENTRYPOINT",
        ),
        (
            "Dockerfile",
            "ENTRYPOINT [\"/usr/local/bin/stash\"]",
            "ENTRYPOINT /usr/local/bin/stash",
            "ENTRYPOINT",
        ),
        (
            "Dockerfile",
            "org.opencontainers.image.licenses=\"Apache-2.0\"",
            "org.opencontainers.image.licenses=\"MIT\"",
            "labels",
        ),
        (
            "Dockerfile",
            "FROM debian:bookworm-slim",
            "FROM debian:trixie-slim",
            "suites",
        ),
        (
            "Dockerfile",
            "USER 65534:65534",
            "ENV TZ=UTC\nUSER 65534:65534",
            "ENV",
        ),
        (
            "Dockerfile",
            "USER 65534:65534",
            "COPY deploy /deploy\nUSER 65534:65534",
            "COPY",
        ),
    ];
    for (file, from, to, what) in mutations {
        let (d, s) = match *file {
            "Dockerfile" => (docker.replacen(from, to, 1), script.clone()),
            _ => (docker.clone(), script.replacen(from, to, 1)),
        };
        assert!(
            d != docker || s != script,
            "mutation {from:?} does not apply to {file}"
        );
        let found = problems(&d, &s);
        assert!(
            found.iter().any(|p| p.contains(what)),
            "changing {from:?} to {to:?} in {file} went unnoticed: {found:?}"
        );
    }
}

#[test]
fn words_and_assignments_parse_like_the_shell() {
    assert_eq!(
        words(r#"a "b c" 'd e' f\ g # h i"#),
        ["a", "b c", "d e", "f g"]
    );
    assert_eq!(words("x=\"y z\"w"), ["x=y zw"]);
    let script = "FOO=(a b # c)\n  \"d e\" # )\n)\nBAR=baz # qux\n";
    assert_eq!(
        assignment(script, "FOO"),
        Some(vec!["a".into(), "b".into(), "d e".into()])
    );
    assert_eq!(assignment(script, "BAR"), Some(vec!["baz".into()]));
    assert_eq!(assignment(script, "BAZ"), None);
    assert_eq!(braced("v=$A-${B}/$C_1"), "v=${A}-${B}/${C_1}");
}

#[test]
fn images_sh_tags_are_the_manifests_images() {
    let script = read("testenv/images.sh");
    let tag = |name: &str| {
        assignment(&script, name)
            .and_then(|v| v.into_iter().next())
            .unwrap_or_else(|| panic!("no {name} in testenv/images.sh"))
    };
    let o = InstallOptions::default();
    assert_eq!(
        tag("STASH_TAG"),
        o.image,
        "testenv/images.sh builds another stash tag than the manifests run"
    );
    assert_eq!(
        tag("PUSHGATEWAY_TAG"),
        o.pushgateway_image,
        "testenv/images.sh builds another pushgateway tag than the manifests run"
    );
    // The pushgateway binary in that image is testenv/build.sh's, from testenv/go/pushgateway.
    let version = o
        .pushgateway_image
        .rsplit_once(':')
        .expect("tag")
        .1
        .to_string();
    let go_mod = read("testenv/go/pushgateway/go.mod");
    assert!(
        go_mod.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq(["github.com/prometheus/pushgateway", version.as_str()])),
        "testenv/go/pushgateway/go.mod does not pin github.com/prometheus/pushgateway {version}"
    );
}
