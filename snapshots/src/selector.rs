//! Kubernetes label selectors (`labelSelector=` query parameter): equality (`k=v`, `k==v`,
//! `k!=v`) and set-based (`k in (a,b)`, `k notin (a,b)`, `k`, `!k`) requirements, joined by
//! commas; all must hold.
use std::collections::BTreeMap;

/// One requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Req {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector(Vec<Req>);

/// A selector that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

/// Split on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn set_values(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| SelectorError(whole.to_owned()))?;
    let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).collect();
    if values.iter().any(|v| !valid_value(v)) {
        return Err(SelectorError(whole.to_owned()));
    }
    Ok(values)
}

/// `key in (…)` / `key notin (…)`: the key, the operator and the parenthesised rest.
fn set_op(p: &str) -> Option<(&str, &str, &str)> {
    let open = p.find('(')?;
    let mut words = p[..open].split_whitespace();
    let (k, op) = (words.next()?, words.next()?);
    (words.next().is_none() && (op == "in" || op == "notin")).then_some((k, op, &p[open..]))
}

impl Selector {
    /// Parse a selector string.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            let err = || SelectorError(p.to_owned());
            if p.is_empty() {
                return Err(err());
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                let k = k.trim();
                valid_key(k)
                    .then(|| Req::NotExists(k.to_owned()))
                    .ok_or_else(err)?
            } else if let Some((k, v)) = p.split_once("!=") {
                let (k, v) = (k.trim(), v.trim());
                (valid_key(k) && valid_value(v))
                    .then(|| Req::NotIn(k.to_owned(), vec![v.to_owned()]))
                    .ok_or_else(err)?
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                let (k, v) = (k.trim(), v.trim());
                (valid_key(k) && valid_value(v))
                    .then(|| Req::In(k.to_owned(), vec![v.to_owned()]))
                    .ok_or_else(err)?
            } else if let Some((k, op, rest)) = set_op(p) {
                if !valid_key(k) {
                    return Err(err());
                }
                let values = set_values(rest, p)?;
                if op == "in" {
                    Req::In(k.to_owned(), values)
                } else {
                    Req::NotIn(k.to_owned(), values)
                }
            } else if valid_key(p) {
                Req::Exists(p.to_owned())
            } else {
                return Err(err());
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Do `labels` satisfy every requirement?
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Req::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Req::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Req::Exists(k) => labels.contains_key(k),
            Req::NotExists(k) => !labels.contains_key(k),
        })
    }

    /// The value this selector pins `key` to with an equality requirement, if it does (lets a
    /// list skip repositories without looking at their labels).
    pub fn pinned(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|r| match r {
            Req::In(k, vs) if k == key && vs.len() == 1 => Some(vs[0].as_str()),
            _ => None,
        })
    }
}

/// A field selector restricted to what a Snapshot list honours: `metadata.name` and
/// `metadata.namespace` (`=`, `==`, `!=`). Other fields are ignored, as upstream ignores field
/// selectors altogether.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parse; unknown fields are kept but never constrain.
    pub fn parse(s: &str) -> Self {
        let mut out = Vec::new();
        for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some((k, v)) = p.split_once("!=") {
                out.push((k.trim().to_owned(), false, v.trim().to_owned()));
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                out.push((k.trim().to_owned(), true, v.trim().to_owned()));
            }
        }
        Self(out)
    }

    /// Does an object with this name and namespace pass?
    pub fn matches(&self, name: &str, namespace: &str) -> bool {
        self.0.iter().all(|(k, eq, v)| {
            let have = match k.as_str() {
                "metadata.name" => name,
                "metadata.namespace" => namespace,
                _ => return true,
            };
            (have == v) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_sets() {
        let l = labels(&[("repository", "repo-a"), ("app", "web")]);
        for (sel, want) in [
            ("", true),
            ("repository=repo-a", true),
            ("repository==repo-a", true),
            ("repository=repo-b", false),
            ("repository!=repo-b", true),
            ("repository=repo-a,app=web", true),
            ("repository=repo-a,app=db", false),
            ("app in (web,db)", true),
            ("app in (db)", false),
            ("app notin (db, cache)", true),
            ("app", true),
            ("!app", false),
            ("!missing", true),
            ("missing!=x", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&l), want, "{sel}");
        }
        assert_eq!(
            Selector::parse("repository=repo-a,app=web")
                .unwrap()
                .pinned("repository"),
            Some("repo-a")
        );
        assert!(Selector::parse("a=b=c").is_err());
        assert!(Selector::parse("a in x").is_err());
        assert!(Selector::parse(",").is_err());
    }

    #[test]
    fn fields() {
        let f = FieldSelector::parse("metadata.name=r-0123abcd,status.x=1");
        assert!(f.matches("r-0123abcd", "ns"));
        assert!(!f.matches("r-ffffffff", "ns"));
        assert!(FieldSelector::parse("metadata.namespace!=a").matches("x", "b"));
    }
}
