//! Running the host's tools, and stopping only the processes a run started
//! (by their pid, never by name).

use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{Error, Result};

/// Runs `program` with `args` (stdin closed); its stdout, or an error
/// with everything it printed when it cannot run or fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null());
    output_of(&mut cmd)
}

/// Runs a prepared command; its stdout, or an error as [`run`]'s.
fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: describe(cmd),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Failed {
            command: describe(cmd),
            status: out.status,
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a shell script with `set -e`.
pub fn sh(script: &str) -> Result<String> {
    run("sh", &["-ec", script])
}

/// Runs `program`, ignoring its output; whether it succeeded (for cleanup,
/// where what is to be removed may be gone already).
pub fn run_quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `program` is on `PATH`.
pub fn installed(program: &str) -> bool {
    run_quiet("sh", &["-c", &format!("command -v {program}")])
}

/// Runs `program` with its stdin fed from `input`.
pub fn run_with_input(program: &str, args: &[&str], input: &[u8]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let command = describe(&cmd);
    let spawn_error = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).map_err(spawn_error)?;
    }
    let out = child.wait_with_output().map_err(spawn_error)?;
    if !out.status.success() {
        return Err(Error::Failed {
            command,
            status: out.status,
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` to process `pid` (one the run started, or found by the
/// run's own name in its command line).
pub fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
    }
}

/// Stops a child this run started: SIGTERM, then SIGKILL if it has not
/// exited within two seconds; reaped either way.
pub fn stop(child: &mut Child) {
    signal(child.id(), nix::sys::signal::Signal::SIGTERM);
    for _ in 0..100 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A child killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child killed (SIGKILL) and reaped when dropped, with the process
/// group it leads if it was spawned as a leader (`Command::process_group(0)`):
/// a wrapper such as strace then goes with what it runs, which a tracer's
/// death alone would leave running.
pub struct ProcGroup(pub Child);

impl Drop for ProcGroup {
    fn drop(&mut self) {
        if let Ok(leader) = i32::try_from(self.0.id()) {
            let leader = nix::unistd::Pid::from_raw(leader);
            if nix::unistd::getpgid(Some(leader)) == Ok(leader) {
                let _ = nix::sys::signal::killpg(leader, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
