//! Narrowing a thread's effective capabilities to a unit's set, and back
//! (root).

use test_kit::privileged::{self, EffectiveCapabilities, CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE};

/// `CapEff` of `/proc/thread-self/status`.
fn effective() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("a CapEff line");
    u64::from_str_radix(line.trim(), 16).expect("hex")
}

#[test]
fn a_threads_effective_capabilities_are_narrowed_and_given_back() {
    if !privileged::root_or_skip(
        "a_threads_effective_capabilities_are_narrowed_and_given_back",
        "capabilities to narrow",
    ) {
        return;
    }
    // A file of another user's, mode 0600: root reads it through
    // CAP_DAC_OVERRIDE or CAP_DAC_READ_SEARCH only.
    let path = std::env::temp_dir().join(format!("test-kit-caps-{}", std::process::id()));
    std::fs::write(&path, "x").unwrap();
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let before = effective();
    let unit = (1 << CAP_DAC_READ_SEARCH) | (1 << CAP_SYS_PTRACE);
    assert_eq!(before & unit, unit, "root has both");
    {
        let _narrowed =
            EffectiveCapabilities::only(&[CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]).expect("capset");
        assert_eq!(effective(), unit, "exactly those two");
        // A thread started now gets the narrowed set.
        let started = std::thread::spawn(effective).join().unwrap();
        assert_eq!(started, unit);
        assert!(std::fs::read(&path).is_ok(), "CAP_DAC_READ_SEARCH reads it");
        {
            let _ptrace_only = EffectiveCapabilities::only(&[CAP_SYS_PTRACE]).expect("capset");
            assert_eq!(effective(), 1 << CAP_SYS_PTRACE);
            let err = std::fs::read(&path).expect_err("root without DAC capabilities");
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        }
        assert_eq!(effective(), unit, "the inner guard gave back the outer set");
    }
    assert_eq!(effective(), before, "all given back");
    let _ = std::fs::remove_file(&path);
}
