//! Tests that need something of the machine (root, a tool, a kernel
//! feature) call [`missing`] when it is not there, then return. By default
//! that fails the test: in CI a test that did not run must not pass. On a
//! workstation without root, set `STATELESS_TEST_ALLOW_SKIP=1` to have such
//! tests print `skipped: …` and pass instead.

/// Fails the test (or, with `STATELESS_TEST_ALLOW_SKIP=1`, prints that it
/// is skipped) because `why` is missing. The caller returns afterwards.
#[allow(dead_code, clippy::panic)]
pub fn missing(why: &str) {
    if std::env::var_os("STATELESS_TEST_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("skipped: {why}");
        return;
    }
    panic!("prerequisite missing: {why} (set STATELESS_TEST_ALLOW_SKIP=1 to skip instead of failing)");
}
