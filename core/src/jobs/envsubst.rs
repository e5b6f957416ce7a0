//! Variable substitution for Functions, Tasks and PVC templates (stash-api.md §4).
//!
//! Semantics (gomodules `envsubst` as Stash uses it):
//! * only the braced form `${NAME}` is expanded; `$NAME` and Kubernetes' `$(NAME)` are left as
//!   they are; `$$` is an escaped `$` (so `$${X}` yields a literal `${X}`);
//! * `${v:=d}`, `${v=d}`, `${v:-d}`, `${v-d}`: `d` when `v` has no value; a variable present
//!   with an empty value substitutes the empty string even when a default is written;
//! * bash string operations: `${v^}`, `${v^^}`, `${v,}`, `${v,,}`, `${v:pos}`,
//!   `${v:pos:len}`, `${v#p}`, `${v##p}`, `${v%p}`, `${v%%p}`, `${v/p/r}`, `${v//p/r}`,
//!   `${v/#p/r}`, `${v/%p/r}`, `${#v}` (patterns may use `*` and `?`);
//! * a variable with no value and no default is an error naming it:
//!   `input/default value not found for key X`.
//!
//! Upstream substitutes over the JSON text of the object; we walk the JSON *value* and substitute
//! every string (and object key). The result is the same for every real template, and a value
//! containing quotes or backslashes cannot break the JSON (upstream would corrupt it).
use std::collections::BTreeMap;

use serde::{Serialize, de::DeserializeOwned};

/// The inputs: variable name → value.
pub type Inputs = BTreeMap<String, String>;

/// A substitution failure.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubstError {
    /// A variable with no value and no default.
    #[error("input/default value not found for key {0}")]
    Missing(String),
    /// `${` without its closing `}`, or an unusable expression.
    #[error("bad substitution {0:?}")]
    Syntax(String),
    /// Past a bound: nesting deeper than [`MAX_DEPTH`], a result longer than [`MAX_OUTPUT`],
    /// or a pattern too costly to match.
    #[error("substitution exceeds a limit: {0}")]
    Limit(String),
}

/// Deepest nesting of `${…}` inside defaults and patterns.
pub const MAX_DEPTH: usize = 16;
/// Longest result of one substituted string, in bytes (a name, a path, an argument).
pub const MAX_OUTPUT: usize = 64 * 1024;
/// Largest pattern × value product a `#`, `%` or `/` operation may match (cells of its table).
const MAX_MATCH_CELLS: usize = 4 * 1024 * 1024;

impl SubstError {
    /// The variable that had no value, if that was the problem.
    pub fn missing_key(&self) -> Option<&str> {
        match self {
            SubstError::Missing(k) => Some(k),
            SubstError::Syntax(_) | SubstError::Limit(_) => None,
        }
    }
}

/// Substitute `inputs` into one string. Every user-controlled size is bounded: nesting
/// ([`MAX_DEPTH`]), the result ([`MAX_OUTPUT`]), positions and lengths (checked arithmetic),
/// pattern matching (a table of bounded size, never backtracking).
pub fn subst(s: &str, inputs: &Inputs) -> Result<String, SubstError> {
    subst_at(s, inputs, 0)
}

fn too_long(len: usize) -> Result<(), SubstError> {
    if len > MAX_OUTPUT {
        return Err(SubstError::Limit(format!(
            "result longer than {MAX_OUTPUT} bytes"
        )));
    }
    Ok(())
}

fn subst_at(s: &str, inputs: &Inputs, depth: usize) -> Result<String, SubstError> {
    if depth > MAX_DEPTH {
        return Err(SubstError::Limit(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut lit = 0; // start of pending literal text
    while i < b.len() {
        if b[i] != b'$' {
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'$') => {
                out.push_str(&s[lit..i]);
                out.push('$');
                i += 2;
                lit = i;
            }
            Some(b'{') => {
                out.push_str(&s[lit..i]);
                let end =
                    closing(s, i + 2).ok_or_else(|| SubstError::Syntax(s[i..].to_string()))?;
                out.push_str(&expr(&s[i + 2..end], inputs, depth)?);
                too_long(out.len())?;
                i = end + 1;
                lit = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&s[lit..]);
    too_long(out.len())?;
    Ok(out)
}

/// The index of the `}` closing the expression starting at `from` (nested `${…}` allowed).
fn closing(s: &str, from: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'$' if b.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 2;
                continue;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// One `${…}` body.
fn expr(body: &str, inputs: &Inputs, depth: usize) -> Result<String, SubstError> {
    if let Some(name) = body.strip_prefix('#')
        && !name.is_empty()
        && name.chars().all(is_name_char)
    {
        let v = value(name, inputs)?;
        return Ok(v.chars().count().to_string());
    }
    let name_len = body.find(|c: char| !is_name_char(c)).unwrap_or(body.len());
    let (name, op) = body.split_at(name_len);
    if name.is_empty() {
        return Err(SubstError::Syntax(format!("${{{body}}}")));
    }
    let val = inputs.get(name);
    // Defaults: used only when the variable is absent.
    for prefix in [":=", ":-", "=", "-"] {
        if let Some(default) = op.strip_prefix(prefix) {
            return match val {
                Some(v) => Ok(v.clone()),
                None => subst_at(default, inputs, depth + 1),
            };
        }
    }
    let v = value(name, inputs)?;
    if op.is_empty() {
        return Ok(v);
    }
    let chars: Vec<char> = v.chars().collect();
    let first_mapped = |f: fn(char) -> String| -> String {
        match chars.split_first() {
            Some((c, rest)) => f(*c) + &rest.iter().collect::<String>(),
            None => String::new(),
        }
    };
    match op {
        "^^" => return Ok(v.to_uppercase()),
        ",," => return Ok(v.to_lowercase()),
        "^" => return Ok(first_mapped(|c| c.to_uppercase().collect())),
        "," => return Ok(first_mapped(|c| c.to_lowercase().collect())),
        _ => {}
    }
    if let Some(rest) = op.strip_prefix(':') {
        let (pos, len) = match rest.split_once(':') {
            Some((p, l)) => (p, Some(l)),
            None => (rest, None),
        };
        let int = |t: &str| {
            t.trim()
                .parse::<i64>()
                .map_err(|_| SubstError::Syntax(format!("${{{body}}}")))
        };
        // Checked arithmetic: positions and lengths are the user's (any i64).
        let n = i64::try_from(chars.len()).unwrap_or(i64::MAX);
        let start = int(pos)?;
        let start = if start < 0 {
            n.saturating_add(start).max(0)
        } else {
            start
        }
        .min(n);
        let end = match len {
            None => n,
            Some(l) => {
                let l = int(l)?;
                if l < 0 {
                    n.saturating_add(l).max(start)
                } else {
                    start.saturating_add(l).min(n)
                }
            }
        };
        let (start, end) = (
            usize::try_from(start).unwrap_or(0),
            usize::try_from(end).unwrap_or(0),
        );
        return Ok(chars[start..end.max(start)].iter().collect());
    }
    let pat = |p: &str| subst_at(p, inputs, depth + 1);
    if let Some(p) = op.strip_prefix("##") {
        return strip_prefix(&v, &pat(p)?, true);
    }
    if let Some(p) = op.strip_prefix('#') {
        return strip_prefix(&v, &pat(p)?, false);
    }
    if let Some(p) = op.strip_prefix("%%") {
        return strip_suffix(&v, &pat(p)?, true);
    }
    if let Some(p) = op.strip_prefix('%') {
        return strip_suffix(&v, &pat(p)?, false);
    }
    if let Some(rest) = op.strip_prefix('/') {
        let (mode, rest) = match rest.chars().next() {
            Some('/') => ('a', &rest[1..]),
            Some('#') => ('p', &rest[1..]),
            Some('%') => ('s', &rest[1..]),
            _ => ('f', rest),
        };
        let (p, r) = rest.split_once('/').unwrap_or((rest, ""));
        let (p, r) = (pat(p)?, pat(r)?);
        if mode == 'a' && !p.is_empty() {
            // Every occurrence replaced: bound the result before building it.
            let grows = v.matches(p.as_str()).count().saturating_mul(r.len());
            too_long(v.len().saturating_add(grows))?;
        }
        return Ok(match mode {
            'a' if !p.is_empty() => v.replace(&p, &r),
            'a' => v,
            'p' => match v.strip_prefix(&p) {
                Some(t) => format!("{r}{t}"),
                None => v,
            },
            's' => match v.strip_suffix(&p) {
                Some(t) => format!("{t}{r}"),
                None => v,
            },
            _ if !p.is_empty() => v.replacen(&p, &r, 1),
            _ => v,
        });
    }
    Err(SubstError::Syntax(format!("${{{body}}}")))
}

fn value(name: &str, inputs: &Inputs) -> Result<String, SubstError> {
    inputs
        .get(name)
        .cloned()
        .ok_or_else(|| SubstError::Missing(name.to_string()))
}

/// For every `k` in `0..=s.len()`: whether the glob `p` (`*`, `?`, everything else literal)
/// matches the whole of `s[..k]`. One table row per pattern character, so the cost is
/// `p.len() × s.len()` (bounded), never the exponential backtracking of a naive matcher.
fn glob_prefixes(p: &[char], s: &[char]) -> Result<Vec<bool>, SubstError> {
    if p.len().saturating_mul(s.len() + 1) > MAX_MATCH_CELLS {
        return Err(SubstError::Limit(format!(
            "pattern of {} characters against a value of {} characters",
            p.len(),
            s.len()
        )));
    }
    let mut row = vec![false; s.len() + 1];
    row[0] = true;
    for c in p {
        let mut next = vec![false; s.len() + 1];
        match c {
            '*' => {
                let mut any = false;
                for (k, cell) in next.iter_mut().enumerate() {
                    any |= row[k];
                    *cell = any;
                }
            }
            _ => {
                for k in 1..=s.len() {
                    next[k] = row[k - 1] && (*c == '?' || s[k - 1] == *c);
                }
            }
        }
        row = next;
    }
    Ok(row)
}

fn strip_prefix(v: &str, p: &str, longest: bool) -> Result<String, SubstError> {
    let s: Vec<char> = v.chars().collect();
    let p: Vec<char> = p.chars().collect();
    let ok = glob_prefixes(&p, &s)?;
    let mut ks = (0..=s.len()).filter(|k| ok[*k]);
    let k = if longest { ks.next_back() } else { ks.next() };
    Ok(match k {
        Some(k) => s[k..].iter().collect(),
        None => v.to_string(),
    })
}

fn strip_suffix(v: &str, p: &str, longest: bool) -> Result<String, SubstError> {
    // A suffix of `v` matching `p` is a prefix of reversed `v` matching reversed `p`.
    let s: Vec<char> = v.chars().rev().collect();
    let p: Vec<char> = p.chars().rev().collect();
    let ok = glob_prefixes(&p, &s)?;
    let mut ks = (0..=s.len()).filter(|k| ok[*k]);
    let k = if longest { ks.next_back() } else { ks.next() };
    Ok(match k {
        Some(k) => s[k..].iter().rev().collect(),
        None => v.to_string(),
    })
}

/// Substitute into every string (and key) of a JSON value.
pub fn subst_value(v: &mut serde_json::Value, inputs: &Inputs) -> Result<(), SubstError> {
    match v {
        serde_json::Value::String(s) => *s = subst(s, inputs)?,
        serde_json::Value::Array(a) => {
            for x in a {
                subst_value(x, inputs)?;
            }
        }
        serde_json::Value::Object(m) => {
            let old = std::mem::take(m);
            for (k, mut x) in old {
                subst_value(&mut x, inputs)?;
                m.insert(subst(&k, inputs)?, x);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Substitute into a whole object (through its JSON form) and decode it back.
pub fn subst_object<T: Serialize + DeserializeOwned>(
    obj: &T,
    inputs: &Inputs,
) -> Result<T, SubstError> {
    let mut v = serde_json::to_value(obj).map_err(|e| SubstError::Syntax(e.to_string()))?;
    subst_value(&mut v, inputs)?;
    serde_json::from_value(v).map_err(|e| SubstError::Syntax(format!("after substitution: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        [
            ("A", "hello"),
            ("E", ""),
            ("P", "/data/dir/file.tar.gz"),
            ("N", "Name"),
            ("U", "MiXeD"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn s(t: &str) -> String {
        subst(t, &inputs()).unwrap_or_else(|e| panic!("{t}: {e}"))
    }

    #[test]
    fn plain_and_untouched_forms() {
        assert_eq!(s("x-${A}-y"), "x-hello-y");
        assert_eq!(s("$A $(A) $(K8S_VAR) $"), "$A $(A) $(K8S_VAR) $");
        assert_eq!(s("cost $5"), "cost $5");
        assert_eq!(s("$${A} and $$"), "${A} and $");
        assert_eq!(s("$$(A)"), "$(A)");
        assert_eq!(s(""), "");
        assert_eq!(s("${A}${A}"), "hellohello");
        assert_eq!(s("ünï${A}cödé"), "ünïhellocödé");
    }

    #[test]
    fn defaults_only_for_absent_keys() {
        for op in [":=", "=", ":-", "-"] {
            assert_eq!(s(&format!("${{X{op}dflt}}")), "dflt", "{op}");
            assert_eq!(s(&format!("${{A{op}dflt}}")), "hello", "{op}");
            assert_eq!(
                s(&format!("${{E{op}dflt}}")),
                "",
                "a present empty value wins over the default ({op})"
            );
            assert_eq!(s(&format!("${{X{op}}}")), "", "empty default ({op})");
        }
        assert_eq!(s("${X:=${A}-2}"), "hello-2", "nested default");
        assert_eq!(s("--ns=${NAMESPACE=\"default\"}"), "--ns=\"default\"");
    }

    #[test]
    fn case_operations() {
        assert_eq!(s("${A^}"), "Hello");
        assert_eq!(s("${A^^}"), "HELLO");
        assert_eq!(s("${N,}"), "name");
        assert_eq!(s("${U,,}"), "mixed");
        assert_eq!(s("${E^}"), "");
    }

    #[test]
    fn substrings_and_length() {
        assert_eq!(s("${A:1}"), "ello");
        assert_eq!(s("${A:1:3}"), "ell");
        assert_eq!(s("${A:10}"), "");
        assert_eq!(s("${A: -3}"), "llo");
        assert_eq!(s("${A:0:-1}"), "hell");
        assert_eq!(s("${#A}"), "5");
        assert_eq!(s("${#E}"), "0");
    }

    #[test]
    fn prefix_and_suffix_removal() {
        assert_eq!(s("${P#/data}"), "/dir/file.tar.gz");
        assert_eq!(s("${P#*/}"), "data/dir/file.tar.gz");
        assert_eq!(s("${P##*/}"), "file.tar.gz");
        assert_eq!(s("${P%.gz}"), "/data/dir/file.tar");
        assert_eq!(s("${P%.*}"), "/data/dir/file.tar");
        assert_eq!(s("${P%%.*}"), "/data/dir/file");
        assert_eq!(s("${P#nomatch}"), "/data/dir/file.tar.gz");
        assert_eq!(s("${A%l?}"), "hel");
    }

    #[test]
    fn replacement() {
        assert_eq!(s("${A/l/L}"), "heLlo");
        assert_eq!(s("${A//l/L}"), "heLLo");
        assert_eq!(s("${A/#he/HE}"), "HEllo");
        assert_eq!(s("${A/#lo/X}"), "hello");
        assert_eq!(s("${A/%lo/LO}"), "helLO");
        assert_eq!(s("${A/l}"), "helo");
        assert_eq!(
            s("${P//\\//_}"),
            "/data/dir/file.tar.gz",
            "a backslash is literal"
        );
    }

    #[test]
    fn missing_variables_are_errors_naming_the_key() {
        let e = subst("--backup-dirs=${TARGET_DIRECTORIES}", &inputs()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input/default value not found for key TARGET_DIRECTORIES"
        );
        assert_eq!(e.missing_key(), Some("TARGET_DIRECTORIES"));
        for t in [
            "${X^}",
            "${X:1}",
            "${#X}",
            "${X#a}",
            "${X/a/b}",
            "${X:=${Y}}",
        ] {
            assert!(
                matches!(subst(t, &inputs()), Err(SubstError::Missing(_))),
                "{t}"
            );
        }
        assert!(matches!(
            subst("${A", &inputs()),
            Err(SubstError::Syntax(_))
        ));
        assert!(matches!(
            subst("${}", &inputs()),
            Err(SubstError::Syntax(_))
        ));
        assert!(matches!(
            subst("${A?x}", &inputs()),
            Err(SubstError::Syntax(_))
        ));
    }

    #[test]
    fn whole_objects_keys_and_special_characters() {
        let mut i = inputs();
        i.insert("Q".into(), "a \"quoted\" \\ value".into());
        let obj =
            serde_json::json!({"name": "${A}-vol", "${N}": ["$(KEEP)", "${Q}"], "n": 3, "b": true});
        let out: serde_json::Value = subst_object(&obj, &i).expect("subst");
        assert_eq!(
            out,
            serde_json::json!({"name": "hello-vol", "Name": ["$(KEEP)", "a \"quoted\" \\ value"], "n": 3, "b": true})
        );
        let e = subst_object(&serde_json::json!({"a": ["${NOPE}"]}), &i).unwrap_err();
        assert_eq!(e.missing_key(), Some("NOPE"));
    }

    /// Hostile templates of issue 24: positions and lengths at the limits of i64, nesting past
    /// any sane depth, patterns that make a backtracking matcher exponential, replacements that
    /// multiply. Each is an error or a bounded result, never a panic.
    #[test]
    fn hostile_templates_are_errors_or_bounded_never_panics() {
        let i: Inputs = [("POD_ORDINAL".to_string(), "3".to_string())].into();
        for t in [
            "data-${POD_ORDINAL:1:9223372036854775807}",
            "data-${POD_ORDINAL:9223372036854775807:9223372036854775807}",
            "data-${POD_ORDINAL:-9223372036854775808:-9223372036854775808}",
            "data-${POD_ORDINAL: -9223372036854775807:9223372036854775807}",
        ] {
            assert!(subst(t, &i).is_ok_and(|v| v.len() <= 6), "{t}");
        }
        assert_eq!(
            subst("${POD_ORDINAL:0:9223372036854775807}", &i).unwrap(),
            "3"
        );
        let nested = format!("{}x{}", "${A:=".repeat(200), "}".repeat(200));
        assert!(matches!(subst(&nested, &i), Err(SubstError::Limit(_))));
        let nested_ok = format!("{}x{}", "${A:=".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(subst(&nested_ok, &i).unwrap(), "x");
        let mut big = i.clone();
        big.insert("V".into(), "a".repeat(60));
        let exp = format!("${{V#{}b}}", "*a".repeat(40));
        assert_eq!(
            subst(&exp, &big).unwrap(),
            "a".repeat(60),
            "no match, quickly"
        );
        let grow = "${V//a/${V//a/${V//a/${V}}}}";
        assert!(matches!(subst(grow, &big), Err(SubstError::Limit(_))));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Any template over the operators' alphabet, with any value: an error or a result no
        /// longer than MAX_OUTPUT; never a panic.
        #[test]
        fn any_template_is_an_error_or_bounded(
            t in "([$][{]|[}]|[:#%/^,=-]|[0-9]|-?[0-9]{1,19}|A|V|[*?]|x){0,60}",
            v in "[a-z*?/]{0,40}",
        ) {
            let i: Inputs = [("A".to_string(), "hello".to_string()), ("V".to_string(), v)].into();
            if let Ok(out) = subst(&t, &i) {
                proptest::prop_assert!(out.len() <= MAX_OUTPUT);
            }
        }
    }
}
