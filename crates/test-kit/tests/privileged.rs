//! The root-only tier's record: a skip is a line in `$CONTAIN_SKIPPED_LOG`,
//! which scripts/test.sh counts as skipped. Its own test binary: it sets
//! the process's environment.

#[test]
fn a_skip_is_recorded_as_one_line_in_the_skipped_log() {
    let log = std::env::temp_dir().join(format!("test-kit-skipped-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    std::env::set_var("CONTAIN_SKIPPED_LOG", &log);
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
