//! Compile errors of `#[lifecycle]`, pinned with their spans (`tests/ui/*.stderr`).
//! `TRYBUILD=overwrite cargo test -p stash-macros --test ui` rewrites them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}
