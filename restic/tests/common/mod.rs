//! Shared helpers for the integration tests: the pinned restic binary, random file trees,
//! checksums and servers on random loopback ports (stopped by process group on drop).
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rand::{Rng, RngCore};
use sha2::{Digest, Sha256};
use stash_restic::{Credentials, Location, Repo};
use stash_testenv::{
    bins::bin,
    process::{Proc, free_port},
};

pub fn restic() -> PathBuf {
    bin("restic").expect("restic binary (testenv/build.sh)")
}

pub fn creds(pairs: &[(&str, &str)]) -> Credentials {
    Credentials::from_map(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect::<BTreeMap<_, _>>(),
    )
    .expect("credentials")
}

/// A repo handle with its scratch dir inside `work`; bounded so that no test can hang.
pub fn repo(location: Location, credentials: Credentials, work: &Path) -> Repo {
    Repo::builder(location, credentials)
        .binary(restic())
        .scratch_dir(work.join("scratch"))
        .cache(true)
        .timeout(Some(Duration::from_secs(50)))
        .backend_retry_budget(Some(Duration::from_secs(5)))
        .build()
        .expect("repo")
}

/// A nested tree of files with random content (some empty, some larger than a restic chunk
/// boundary is likely to matter for), returns the number of files.
pub fn gen_tree(root: &Path, seed: u64) -> usize {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    for d in ["", "a", "a/b", "a/b/c", "d e", "f"] {
        let dir = root.join(d);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..rng.random_range(2..5) {
            let len = match i {
                0 => 0,
                1 => rng.random_range(1..200),
                _ => rng.random_range(1_000..300_000),
            };
            let mut buf = vec![0u8; len];
            rng.fill_bytes(&mut buf);
            std::fs::write(dir.join(format!("file-{i}.bin")), buf).unwrap();
            n += 1;
        }
    }
    n
}

/// sha256 of every regular file under `root`, by relative path.
pub fn checksums(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                walk(root, &e.path(), out);
            } else if ft.is_file() {
                let data = std::fs::read(e.path()).unwrap();
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, format!("{:x}", Sha256::digest(&data)));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Where restic restores `src` when the target is `target` (it recreates the absolute path).
pub fn restored(target: &Path, src: &Path) -> PathBuf {
    target.join(src.strip_prefix("/").unwrap())
}

pub fn wait_port(port: u16, p: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = p.exited() {
            panic!("{} exited with {st}:\n{}", p.name, p.log_tail(30));
        }
        assert!(
            Instant::now() < deadline,
            "{} did not listen on {port}:\n{}",
            p.name,
            p.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `rest-server --no-auth` serving `data` on a random loopback port.
pub fn rest_server(data: &Path, logs: &Path) -> (Proc, u16) {
    let port = free_port().unwrap();
    let mut p = Proc::spawn(
        "rest-server",
        &bin("rest-server").unwrap(),
        &[
            "--path".into(),
            data.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-auth".into(),
        ],
        logs,
    )
    .unwrap();
    wait_port(port, &mut p);
    (p, port)
}

/// moto's S3 server on a random loopback port, with `bucket` created.
pub fn moto(bucket: &str, logs: &Path) -> (Proc, u16) {
    let port = free_port().unwrap();
    let mut p = Proc::spawn(
        "moto",
        &bin("moto_server").unwrap(),
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        logs,
    )
    .unwrap();
    wait_port(port, &mut p);
    // PUT /<bucket> creates the bucket.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "create bucket: {resp}");
    (p, port)
}
