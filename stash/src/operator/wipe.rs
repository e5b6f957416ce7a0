//! `wipeOut` for S3 backends (stash-api.md §3.1): delete every object under
//! `<bucket>/<prefix>/`, a page of keys at a time, with requests signed by AWS Signature V4.
//!
//! Path-style requests (`<endpoint>/<bucket>/<key>`), region `us-east-1` unless the storage
//! Secret has `AWS_REGION`. Plain `http://` endpoints (S3-compatible servers) and `https://`
//! with the system's roots are supported.
use std::{collections::BTreeMap, sync::Arc};

use ring::{digest, hmac};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Where the objects are and how to sign for them.
#[derive(Clone)]
pub struct S3 {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// Bucket.
    pub bucket: String,
    /// Prefix of the restic repository (no leading or trailing `/`).
    pub prefix: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Signing region.
    pub region: String,
}

impl std::fmt::Debug for S3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3")
            .field("endpoint", &format!("{}://{}", self.scheme, self.authority))
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

/// AWS URI encoding: unreserved characters stay, everything else is `%XX`.
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b'/' if keep_slash => "/".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The `Authorization` header of a request (Signature V4). `headers` are the headers to sign
/// (lower-case names), which must include `host`, `x-amz-date` and `x-amz-content-sha256`.
#[allow(clippy::too_many_arguments)] // the inputs of Signature V4, each named as AWS names them
pub fn authorization(
    access_key: &str,
    secret_key: &str,
    region: &str,
    method: &str,
    uri: &str,
    query: &BTreeMap<String, String>,
    headers: &BTreeMap<String, String>,
    payload_hash: &str,
) -> String {
    let amz_date = headers.get("x-amz-date").cloned().unwrap_or_default();
    let date = &amz_date[..amz_date.len().min(8)];
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers.keys().cloned().collect::<Vec<_>>().join(";");
    let canonical_request = format!(
        "{method}\n{uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, b"s3");
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let signature = hex(&hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    )
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

impl S3 {
    async fn connect(&self) -> Result<Box<dyn Stream>, String> {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h)
            .to_string();
        let addr = if self.authority.contains(':') {
            self.authority.clone()
        } else {
            format!(
                "{}:{}",
                self.authority,
                if self.scheme == "https" { 443 } else { 80 }
            )
        };
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        if self.scheme != "https" {
            return Ok(Box::new(tcp));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(tls))
    }

    /// One signed request; returns the status code and the body.
    async fn request(
        &self,
        method: &str,
        key: Option<&str>,
        query: &BTreeMap<String, String>,
    ) -> Result<(u16, String), String> {
        let uri = match key {
            Some(k) => format!(
                "/{}/{}",
                uri_encode(&self.bucket, false),
                uri_encode(k, true)
            ),
            None => format!("/{}", uri_encode(&self.bucket, false)),
        };
        let payload_hash = sha256_hex(b"");
        let amz_date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let headers: BTreeMap<String, String> = [
            ("host".to_string(), self.authority.clone()),
            ("x-amz-content-sha256".to_string(), payload_hash.clone()),
            ("x-amz-date".to_string(), amz_date),
        ]
        .into();
        let auth = authorization(
            &self.access_key,
            &self.secret_key,
            &self.region,
            method,
            &uri,
            query,
            &headers,
            &payload_hash,
        );
        let q = query
            .iter()
            .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
            .collect::<Vec<_>>()
            .join("&");
        let target = if q.is_empty() {
            uri
        } else {
            format!("{uri}?{q}")
        };
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nAuthorization: {auth}\r\nConnection: close\r\nContent-Length: 0\r\n"
        );
        for (k, v) in &headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let exchange = async {
            let mut s = self.connect().await?;
            s.write_all(req.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(answer)
        };
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), exchange)
            .await
            .map_err(|_| "the object store did not answer in time".to_string())??;
        let text = String::from_utf8_lossy(&answer).to_string();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, dechunk(&text, body)))
    }

    /// Delete every object under `<bucket>/<prefix>/`; returns how many were deleted.
    pub async fn wipe(&self) -> Result<usize, String> {
        let prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix.trim_matches('/'))
        };
        let mut deleted = 0;
        loop {
            let mut query: BTreeMap<String, String> = [
                ("list-type".to_string(), "2".to_string()),
                ("max-keys".to_string(), "50".to_string()),
            ]
            .into();
            if !prefix.is_empty() {
                query.insert("prefix".into(), prefix.clone());
            }
            let (code, body) = self.request("GET", None, &query).await?;
            if code != 200 {
                return Err(format!(
                    "listing objects: HTTP {code}: {}",
                    first_error(&body)
                ));
            }
            let keys = xml_values(&body, "Key");
            if keys.is_empty() {
                return Ok(deleted);
            }
            for key in keys {
                let (code, body) = self.request("DELETE", Some(&key), &BTreeMap::new()).await?;
                if !(200..300).contains(&code) {
                    return Err(format!(
                        "deleting {key}: HTTP {code}: {}",
                        first_error(&body)
                    ));
                }
                deleted += 1;
            }
        }
    }
}

/// Undo `Transfer-Encoding: chunked` when the server used it.
fn dechunk(head: &str, body: String) -> String {
    let headers = head
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !headers.contains("transfer-encoding: chunked") {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| {
            s.split_once(&close).map(|(v, _)| {
                v.replace("&amp;", "&")
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
            })
        })
        .collect()
}

fn first_error(body: &str) -> String {
    xml_values(body, "Message")
        .into_iter()
        .next()
        .unwrap_or_else(|| body.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of AWS's Signature V4 documentation for S3.
    #[test]
    fn signatures_match_the_aws_documentation_example() {
        let headers: BTreeMap<String, String> = [
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
            ("x-amz-date", "20130524T000000Z"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let auth = authorization(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "GET",
            "/test.txt",
            &BTreeMap::new(),
            &headers,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn keys_are_read_from_list_results() {
        let xml = "<ListBucketResult><Contents><Key>p/config</Key></Contents><Contents><Key>p/data/0&amp;1</Key></Contents></ListBucketResult>";
        assert_eq!(xml_values(xml, "Key"), ["p/config", "p/data/0&1"]);
        assert_eq!(uri_encode("a b/c~", true), "a%20b/c~");
    }
}
