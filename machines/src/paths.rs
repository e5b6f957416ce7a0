//! Paths compared the way the kernel resolves them: the rule "lies under a mounted volume" is
//! one function, used by admission and by the restore agents alike.

/// `path` with `.`, `..` and repeated or trailing slashes resolved lexically, as the kernel
/// resolves them when no component is a symlink (`/source/data/../../etc` is `/etc`; `..`
/// above the root stays at the root).
pub fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    if path.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Is `path` equal to `dir` or inside it, after both are [normalized](normalize)
/// (component-wise: `..` cannot walk out of `dir`)?
pub fn under(path: &str, dir: &str) -> bool {
    let (path, dir) = (normalize(path), normalize(dir));
    let path = path.trim_end_matches('/');
    let dir = dir.trim_end_matches('/');
    dir.is_empty()
        || path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn under_is_component_wise_after_normalizing() {
        assert!(under("/source/data/x", "/source/data"));
        assert!(under("/source/data/", "/source/data"));
        assert!(!under("/source/database", "/source/data"));
        assert!(under("/anything", "/"));
        assert!(
            !under("/source/data/../../etc", "/source/data"),
            "lexical .. walks out"
        );
        assert!(under("/source/data/./x/../y", "/source/data"));
        assert!(!under("/source/data/..", "/source/data"));
        assert_eq!(normalize("/a/../../b//c/."), "/b/c");
        assert_eq!(normalize("/.."), "/");
    }
}
