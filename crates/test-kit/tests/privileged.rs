//! The root-only tier's record: a skip is a line in `$CONTAIN_SKIPPED_LOG`,
//! a skipped check of a test that ran one in `$CONTAIN_SKIPPED_CHECKS_LOG`,
//! which scripts/test.sh counts as skipped. Its own test binary: it sets
//! the process's environment (one test, so nothing runs beside it).

#[test]
fn skips_and_skipped_checks_are_recorded_one_line_each_in_their_logs() {
    let log = std::env::temp_dir().join(format!("test-kit-skipped-{}.log", std::process::id()));
    let checks = log.with_extension("checks.log");
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(&checks);
    std::env::set_var("CONTAIN_SKIPPED_LOG", &log);
    std::env::set_var("CONTAIN_SKIPPED_CHECKS_LOG", &checks);
    // A check of a test that ran goes to its own log (the test's pass
    // stands), one line even when its reason has two.
    test_kit::privileged::record_skipped_check("probe: known open\nhole");
    let text = std::fs::read_to_string(&checks).expect("the checks log was written");
    let _ = std::fs::remove_file(&checks);
    assert_eq!(text, "probe: known open hole\n");
    assert!(!log.exists(), "a skipped check is not a skipped test");
    test_kit::privileged::record_skip("first: needs root (a reason)");
    test_kit::privileged::record_skip("second: needs root (another)");
    let text = std::fs::read_to_string(&log).expect("the log was written");
    let _ = std::fs::remove_file(&log);
    assert_eq!(
        text,
        "first: needs root (a reason)\nsecond: needs root (another)\n"
    );
    // As root the test runs and nothing is recorded.
    if nix::unistd::geteuid().is_root() {
        assert!(test_kit::privileged::root_or_skip("this", "nothing"));
        assert!(!log.exists());
    }
}
