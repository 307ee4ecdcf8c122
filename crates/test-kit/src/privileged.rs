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

/// `CAP_DAC_READ_SEARCH`'s number.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// `CAP_SYS_PTRACE`'s number.
pub const CAP_SYS_PTRACE: u32 = 19;

/// The version-3 layout of `capget(2)` and `capset(2)`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

fn capget() -> std::io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget writes one header and two data structs of the
    // version-3 layout, which these are.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(data)
}

fn capset(data: &[CapData; 2]) -> std::io::Result<()> {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: capset reads one header and two data structs of the
    // version-3 layout, which these are.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's effective capabilities narrowed to a set (a
/// daemon's unit gives it those alone) until dropped, when the thread gets
/// back those it had. Capabilities are per thread: the process's other
/// threads keep theirs, a thread this one starts meanwhile gets the
/// narrowed set, and a program it executes as root gets them all back. The
/// others stay permitted, which is what lets the drop restore them. For a
/// test of what a daemon does with its unit's capabilities, run the daemon
/// on this thread alone (a current-thread runtime); not `Send`, so it is
/// restored on the thread it narrowed.
pub struct EffectiveCapabilities {
    before: [CapData; 2],
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl EffectiveCapabilities {
    /// Narrows the effective set to exactly `caps` (each permitted
    /// already).
    pub fn only(caps: &[u32]) -> std::io::Result<EffectiveCapabilities> {
        let before = capget()?;
        let mut narrowed = before;
        for word in &mut narrowed {
            word.effective = 0;
        }
        for &cap in caps {
            narrowed[(cap / 32) as usize].effective |= 1 << (cap % 32);
        }
        capset(&narrowed)?;
        let now = capget()?;
        if now != narrowed {
            return Err(std::io::Error::other(format!(
                "capset left {now:?}, not {narrowed:?}"
            )));
        }
        Ok(EffectiveCapabilities {
            before,
            _this_thread: std::marker::PhantomData,
        })
    }
}

impl Drop for EffectiveCapabilities {
    fn drop(&mut self) {
        if let Err(e) = capset(&self.before) {
            panic!("cannot give the thread its capabilities back: {e}");
        }
    }
}
