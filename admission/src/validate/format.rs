//! Format checks of single values (names, quantities, paths, URLs, images), each returning what
//! is accepted when the value is not. Values holding a `${VARIABLE}` (stash-api.md §4) are
//! resolved later and are not checked here ([`templated`]).

/// Does the value contain a `${...}` variable (substituted when the Task is resolved)?
pub fn templated(v: &str) -> bool {
    v.contains("${")
}

/// A DNS-1123 label: at most 63 of `a-z0-9-`, starting and ending alphanumeric.
pub fn dns_label(v: &str) -> Result<(), String> {
    const ACCEPTED: &str = "a DNS-1123 label (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)";
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("{v:?} is not {ACCEPTED}"))
    }
}

/// A DNS-1123 subdomain (the name of most objects): at most 253 characters, dot-separated labels.
pub fn dns_subdomain(v: &str) -> Result<(), String> {
    const ACCEPTED: &str = "a DNS-1123 subdomain (at most 253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)";
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{v:?} is not {ACCEPTED}"))
    }
}

/// An object name, unless it is a variable.
pub fn object_name(v: &str) -> Result<(), String> {
    if templated(v) {
        Ok(())
    } else {
        dns_subdomain(v)
    }
}

/// A volume name (DNS-1123 label), unless it is a variable.
pub fn volume_name(v: &str) -> Result<(), String> {
    if templated(v) { Ok(()) } else { dns_label(v) }
}

/// An environment variable name: `[-._a-zA-Z][-._a-zA-Z0-9]*` (what the API server accepts).
pub fn env_name(v: &str) -> Result<(), String> {
    let mut bytes = v.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || matches!(b, b'-' | b'.' | b'_'));
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')) {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a valid environment variable name (letters, digits, '_', '-', '.', not starting with a digit)"
        ))
    }
}

/// A variable name a parameter substitutes (`${NAME}`): `[A-Za-z_][A-Za-z0-9_]*`.
pub fn param_name(v: &str) -> Result<(), String> {
    let mut bytes = v.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a variable name (letters, digits and '_', not starting with a digit)"
        ))
    }
}

/// An absolute path (unless it is a variable).
pub fn absolute_path(v: &str) -> Result<(), String> {
    if templated(v) || v.starts_with('/') {
        Ok(())
    } else {
        Err(format!("must be an absolute path, got {v:?}"))
    }
}

/// A relative path that stays inside its base (no leading '/', no `..`).
pub fn relative_path(v: &str) -> Result<(), String> {
    if v.starts_with('/') || v.split('/').any(|c| c == "..") {
        Err(format!("must be a relative path without '..', got {v:?}"))
    } else {
        Ok(())
    }
}

pub use stash_machines::paths::under;

/// A Kubernetes quantity (`1`, `500m`, `1.5Gi`, `2e3`, ...); its value in units when valid.
pub fn quantity(v: &str) -> Result<f64, String> {
    let err = || {
        format!(
            "{v:?} is not a quantity (a number with an optional suffix: m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent such as e3)"
        )
    };
    let (sign, body) = match v.strip_prefix('-') {
        Some(rest) => (-1.0, rest),
        None => (1.0, v.strip_prefix('+').unwrap_or(v)),
    };
    let end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err());
    }
    let n: f64 = number.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => {
            let exp = e
                .strip_prefix(['e', 'E'])
                .filter(|x| !x.is_empty())
                .ok_or_else(err)?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            10f64.powi(exp.parse::<i32>().map_err(|_| err())?)
        }
    };
    Ok(sign * n * factor)
}

/// A container image reference: no whitespace, no upper case in the repository, a tag
/// (`:tag`) or digest (`@sha256:...`) that is not empty.
pub fn image(v: &str) -> Result<(), String> {
    if templated(v) {
        return Ok(());
    }
    let accepted =
        "an image reference like registry/name:tag (no whitespace, lowercase repository)";
    if v.is_empty() || v.chars().any(char::is_whitespace) {
        return Err(format!("{v:?} is not {accepted}"));
    }
    let (name, digest) = match v.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (v, None),
    };
    if digest.is_some_and(|d| !d.contains(':') || d.ends_with(':')) {
        return Err(format!(
            "{v:?} has an invalid digest (expected @sha256:<hex>)"
        ));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    let repo_path = match last.split_once(':') {
        Some((_, "")) => return Err(format!("{v:?} has an empty tag")),
        Some((_, _)) => &name[..name.len() - last.len() + last.find(':').unwrap_or(0)],
        None => name,
    };
    // The registry host (first component with a '.' or ':') may have upper case; the path not.
    let path = match repo_path.split_once('/') {
        Some((host, rest)) if host.contains(['.', ':']) || host == "localhost" => rest,
        _ => repo_path,
    };
    if path.is_empty() || path.ends_with('/') || path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("{v:?} is not {accepted}"));
    }
    Ok(())
}

/// An `http(s)://host[:port][/path]` URL.
pub fn http_url(url: &str) -> Result<(), String> {
    if url.chars().any(char::is_whitespace) {
        return Err("contains whitespace".into());
    }
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must be an absolute URL like http://host:8000/path")?;
    if !matches!(scheme, "http" | "https") {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    host_port(rest.split(['/', '?', '#']).next().unwrap_or_default())
}

/// `[user@]host[:port]` with a non-empty host and a numeric port in 1..=65535.
pub fn host_port(authority: &str) -> Result<(), String> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
            (h, after.strip_prefix(':'))
        }
        None => match host_port.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host_port, None),
        },
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.contains(['\\', '%', ' ']) {
        return Err(format!("host {host:?} is not a host name or address"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!("port {p:?} is not a number in 1..65535"));
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

fn charset_len(
    v: &str,
    len: std::ops::RangeInclusive<usize>,
    allowed: fn(u8) -> bool,
    what: &str,
) -> Result<(), String> {
    if templated(v) {
        return Ok(());
    }
    let edges_ok = v
        .bytes()
        .next()
        .zip(v.bytes().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if len.contains(&v.len()) && v.bytes().all(allowed) && edges_ok {
        Ok(())
    } else {
        Err(format!("{v:?} is not {what}"))
    }
}

/// An S3 bucket name: 3–63 of lowercase letters, digits, '.', '-'.
pub fn s3_bucket(v: &str) -> Result<(), String> {
    charset_len(
        v,
        3..=63,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-',
        "an S3 bucket name (3-63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)",
    )
}

/// A GCS bucket name: 3–222 of lowercase letters, digits, '.', '-', '_'.
pub fn gcs_bucket(v: &str) -> Result<(), String> {
    charset_len(
        v,
        3..=222,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'),
        "a GCS bucket name (3-222 lowercase letters, digits, '.', '-' and '_', starting and ending with a letter or digit)",
    )
}

/// An Azure blob container name: 3–63 of lowercase letters, digits, '-'.
pub fn azure_container(v: &str) -> Result<(), String> {
    charset_len(
        v,
        3..=63,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
        "an Azure container name (3-63 lowercase letters, digits and '-', starting and ending with a letter or digit)",
    )
}

/// A B2 bucket name: 6–50 of letters, digits, '-'.
pub fn b2_bucket(v: &str) -> Result<(), String> {
    charset_len(
        v,
        6..=50,
        |b| b.is_ascii_alphanumeric() || b == b'-',
        "a B2 bucket name (6-50 letters, digits and '-')",
    )
}

/// A Swift container name: 1–256 characters without '/'.
pub fn swift_container(v: &str) -> Result<(), String> {
    if v.len() <= 256 && !v.contains('/') {
        Ok(())
    } else {
        Err(format!(
            "{v:?} is not a Swift container name (at most 256 characters, no '/')"
        ))
    }
}

/// An S3 endpoint: `host[:port]` or an `http(s)://host[:port]` URL.
pub fn endpoint(v: &str) -> Result<(), String> {
    let checked = if v.contains("://") {
        http_url(v)
    } else {
        host_port(v.split('/').next().unwrap_or_default()).and_then(|()| {
            if v.chars().any(char::is_whitespace) {
                Err("contains whitespace".into())
            } else {
                Ok(())
            }
        })
    };
    checked.map_err(|why| {
        format!("{v:?} is not an endpoint like s3.amazonaws.com or http://minio:9000: {why}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_like_the_api_server() {
        assert_eq!(quantity("1Gi").unwrap(), 1024f64.powi(3));
        assert_eq!(quantity("500m").unwrap(), 0.5);
        assert_eq!(quantity("256M").unwrap(), 256e6);
        assert_eq!(quantity("2e3").unwrap(), 2000.0);
        assert_eq!(quantity("-1").unwrap(), -1.0);
        for bad in ["", "1 Gi", "1GB", "one", "1.2.3", "e3", "1e", "Gi", "."] {
            assert!(quantity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_paths_and_images() {
        assert!(dns_label("source-data").is_ok());
        assert!(dns_label("Source").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
        assert!(dns_subdomain("gcs-secret.v1").is_ok());
        assert!(dns_subdomain("bad_name").is_err());
        assert!(volume_name("${secretVolume}").is_ok());
        assert!(image("appscode/stash:0.8.3").is_ok());
        assert!(image("registry.local:5000/stash-rs/stash@sha256:abc").is_ok());
        assert!(image("Appscode/Stash:1").is_err());
        assert!(image("busybox:").is_err());
        assert!(image("a b").is_err());
        assert!(env_name("RESTIC_PASSWORD").is_ok());
        assert!(env_name("1X").is_err());
        assert!(param_name("outputDir").is_ok());
        assert!(param_name("output-dir").is_err());
        assert!(http_url("http://rest:8000/x").is_ok());
        assert!(http_url("http://rest:0/x").is_err());
        assert!(http_url("ftp://x").is_err());
    }
}
