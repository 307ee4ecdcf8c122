//! The root-only tier. A test that needs root and does not have it does not
//! pass silently: it says why on stderr and appends that line to
//! `$CONTAIN_SKIPPED_LOG`, which `scripts/test.sh` counts as skipped (cargo
//! itself would count the early return as passed).

use std::io::Write as _;

/// Whether `test` may run: true as root. Otherwise records it as skipped,
/// with `needs` (what root is for) as the reason, and returns false.
pub fn root_or_skip(test: &str, needs: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    record_skip(&format!("{test}: needs root ({needs})"));
    false
}

/// Says why a test did not run and records it in `$CONTAIN_SKIPPED_LOG`.
///
/// Panics when the log is set but cannot be written: a skip that is not
/// counted would be counted as a pass.
pub fn record_skip(why: &str) {
    record_line("CONTAIN_SKIPPED_LOG", why);
}

/// Says why one check of a running test was not held against it (a probe
/// of a hole known to be open, say) and records it in
/// `$CONTAIN_SKIPPED_CHECKS_LOG`: `scripts/test.sh` counts it as skipped
/// without taking a pass from the test, whose other checks passed or failed
/// on their own.
///
/// Panics as [`record_skip`] does.
pub fn record_skipped_check(why: &str) {
    record_line("CONTAIN_SKIPPED_CHECKS_LOG", why);
}

/// Appends `why` to the log `log_var` names, one line (a newline in it
/// would count twice).
fn record_line(log_var: &str, why: &str) {
    let why = why.replace('\n', " ");
    eprintln!("skipped: {why}");
    let Some(log) = std::env::var_os(log_var) else {
        return;
    };
    // One append of one line per test: tests run in parallel.
    let recorded = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut f| f.write_all(format!("{why}\n").as_bytes()));
    if let Err(e) = recorded {
        panic!("cannot record a skipped test in {log:?}: {e}");
    }
}
