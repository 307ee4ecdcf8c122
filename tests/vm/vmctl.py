#!/usr/bin/env python3
"""QEMU driver for contain's VM tests (called by run.sh and build-image.sh; python3 stdlib only).

    vmctl.py run --image base.qcow2 --kernel vmlinuz --initrd initrd.img --share DIR
                 --run-dir DIR [--state-dir DIR | --no-state] [--writable] [--timeout S]

Boots the guest without a NIC, shares DIR over 9p (the guest mounts it at /mnt/share and runs
scenario.sh from it), streams the guest's log, and exits with the scenario's exit code.

Saved VM state (the speed-up): the first run after a host boot cold-boots the guest up to
"docker ready", saves the VM (QMP migrate to a file) together with a frozen disk overlay, and
every run then restores that state in about a second instead of booting for about a minute.
A restore that does not reach the guest's agent in time is abandoned for a cold boot.

Exit codes: the scenario's own; 124 when a phase timed out; 125 when the harness or the guest
broke before the scenario produced an exit code.
"""
import argparse
import ctypes
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

EXIT_TIMEOUT = 124
EXIT_HARNESS = 125
# Bump when the host<->agent protocol or the QEMU command line changes incompatibly: it is
# part of the saved state's key.
PROTO = "1"

# Live QEMU processes we started; killed (by PID) on any exit path.
LIVE = []


def log(msg):
    print(f"[vm {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class HarnessError(Exception):
    pass


class PhaseTimeout(Exception):
    pass


def env_num(name, default):
    return float(os.environ.get(name, default))


# ----------------------------------------------------------------------------------------------
# QEMU command line
# ----------------------------------------------------------------------------------------------
def accel():
    """TCG unless KVM is really usable. /dev/kvm can exist without hardware virtualisation
    (a kvm-pvm module here): a stock kernel then hangs in early boot, so check vmx/svm."""
    want = os.environ.get("CONTAIN_VM_ACCEL", "auto")
    if want == "auto":
        flags = set()
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        usable = os.access("/dev/kvm", os.R_OK | os.W_OK) and bool(flags & {"vmx", "svm"})
        want = "kvm" if usable else "tcg"
    if want == "kvm":
        return ["-accel", "kvm", "-cpu", "host"]
    # qemu64, not max: the guest's Go (dockerd, containerd, runc) and glibc then take plain SSE2
    # paths and 4-level page tables, which TCG runs faster: a `docker run` on a user network took
    # 4.3-4.8 s against 6-8.4 s with max (a scenario timing `docker run`, same image, one host).
    return ["-accel", "tcg,thread=multi,tb-size=512", "-cpu", os.environ.get("CONTAIN_VM_CPU") or "qemu64"]


# mitigations=off: the guest is a throw-away test box; page-table isolation and friends cost a
# lot under TCG and do not change what the BPF verifier accepts from root.
CMDLINE = ("root=/dev/vda rw rootfstype=ext4 console=ttyS0 loglevel=4 panic=-1 fsck.mode=skip "
           "mitigations=off nowatchdog random.trust_cpu=on systemd.show_status=auto")


def qemu_args(p):
    """p: dict with kernel, initrd, disk, share, run_dir. Only kernel/initrd/disk/share/run_dir
    paths may differ between the QEMU that saves a state and the one that restores it."""
    cmdline = CMDLINE + (" " + os.environ["CONTAIN_VM_CMDLINE_EXTRA"]
                         if os.environ.get("CONTAIN_VM_CMDLINE_EXTRA") else "")
    rd = p["run_dir"]
    return [
        "qemu-system-x86_64", "-name", "contain-vm", "-nodefaults", "-no-user-config",
        "-display", "none", "-machine", "pc", *accel(),
        "-smp", os.environ.get("CONTAIN_VM_SMP", "2"), "-m", os.environ.get("CONTAIN_VM_MEM", "2048"),
        "-kernel", p["kernel"], "-initrd", p["initrd"], "-append", cmdline, "-no-reboot",
        # No NIC at all (-nodefaults): every test packet stays inside the guest.
        "-drive", f"file={p['disk']},if=none,id=root,format=qcow2,cache=unsafe,discard=unmap",
        "-device", "virtio-blk-pci,drive=root",
        "-device", "virtio-rng-pci",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=ctl,path={rd}/ctl.sock,server=on,wait=off",
        "-device", "virtserialport,chardev=ctl,name=org.contain.ctl",
        "-fsdev", f"local,id=share,path={p['share']},security_model=none",
        "-device", "virtio-9p-pci,fsdev=share,mount_tag=share",
        "-chardev", f"file,id=con,path={rd}/console.log",
        "-serial", "chardev:con",
        "-qmp", f"unix:{rd}/qmp.sock,server=on,wait=off",
    ]


def _pdeathsig():
    # If this driver dies (even by SIGKILL), the kernel kills its QEMU: no orphaned VM.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class VM:
    def __init__(self, kernel, initrd, disk, share, run_dir, incoming=None):
        self.p = dict(kernel=kernel, initrd=initrd, disk=disk, share=share, run_dir=run_dir)
        self.incoming = incoming
        self.proc = None
        self.ctl = None
        self.ctl_buf = b""
        self.qmp = None

    def start(self):
        os.makedirs(self.p["run_dir"], exist_ok=True)
        for f in ("ctl.sock", "qmp.sock"):
            try:
                os.unlink(os.path.join(self.p["run_dir"], f))
            except FileNotFoundError:
                pass
        args = qemu_args(self.p)
        if self.incoming:
            args += ["-incoming", self.incoming]
        out = open(os.path.join(self.p["run_dir"], "qemu.log"), "ab")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        LIVE.append(self)
        self.t0 = time.monotonic()
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self, what):
        if not self.alive():
            raise HarnessError(f"QEMU exited (status {self.proc.returncode}) {what}\n"
                               + self.diagnostics())

    def diagnostics(self, lines=40):
        out = []
        for name in ("qemu.log", "console.log"):
            path = os.path.join(self.p["run_dir"], name)
            try:
                with open(path, "rb") as f:
                    tail = f.read()[-8000:].decode(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            if tail:
                out.append(f"--- last lines of {path} ---")
                out += tail
        return "\n".join(out)

    def kill(self):
        """Stop our QEMU, by PID only."""
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for s in (self.ctl, self.qmp):
            if s:
                s.close()
        self.ctl = self.qmp = None
        if self in LIVE:
            LIVE.remove(self)

    # -- sockets -------------------------------------------------------------------------------
    def _connect(self, name, deadline):
        path = os.path.join(self.p["run_dir"], name)
        while True:
            self.check_alive(f"before {name} was available")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                return s
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise PhaseTimeout(f"QEMU did not open {path}")
                time.sleep(0.05)

    def ctl_connect(self, deadline):
        if not self.ctl:
            self.ctl = self._connect("ctl.sock", deadline)
            self.ctl.setblocking(False)

    def ctl_send(self, line):
        try:
            self.ctl.send((line + "\n").encode())
        except (BlockingIOError, OSError):
            pass  # resent anyway

    def ctl_lines(self, timeout):
        import select
        r, _, _ = select.select([self.ctl], [], [], timeout)
        if r:
            try:
                data = self.ctl.recv(4096)
            except BlockingIOError:
                data = b""
            self.ctl_buf += data
        out = []
        while b"\n" in self.ctl_buf:
            line, self.ctl_buf = self.ctl_buf.split(b"\n", 1)
            out.append(line.decode(errors="replace").strip())
        return out

    def qmp_cmd(self, cmd, deadline, **arguments):
        if not self.qmp:
            self.qmp = self._connect("qmp.sock", deadline)
            self.qmp_file = self.qmp.makefile("rwb")
            self.qmp.settimeout(max(1.0, deadline - time.monotonic()))
            json.loads(self.qmp_file.readline())  # greeting
            self._qmp_send("qmp_capabilities", {})
        self.qmp.settimeout(max(1.0, deadline - time.monotonic()))
        return self._qmp_send(cmd, arguments)

    def _qmp_send(self, cmd, arguments):
        msg = {"execute": cmd}
        if arguments:
            msg["arguments"] = arguments
        self.qmp_file.write(json.dumps(msg).encode() + b"\n")
        self.qmp_file.flush()
        while True:
            line = self.qmp_file.readline()
            if not line:
                raise HarnessError(f"QMP connection closed during {cmd}")
            reply = json.loads(line)
            if "event" in reply:
                continue
            if "error" in reply:
                raise HarnessError(f"QMP {cmd}: {reply['error']}")
            return reply.get("return")


# ----------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------
def wait_ready(vm, deadline, limit):
    """Until the guest agent says READY (docker answers)."""
    vm.ctl_connect(deadline)
    while True:
        vm.check_alive("while the guest was booting")
        for line in vm.ctl_lines(0.5):
            if line.startswith("READY"):
                return
            if line.startswith("NOTREADY"):
                raise HarnessError("the guest's Docker did not become ready (`docker info` "
                                   "kept failing)\n" + vm.diagnostics())
        if time.monotonic() > deadline:
            raise PhaseTimeout(f"the guest did not report 'docker ready' within {limit:.0f} s "
                               "(CONTAIN_VM_BOOT_TIMEOUT)")


def send_go(vm, share, deadline):
    """GO until acknowledged (or the guest visibly started: share/.started)."""
    vm.ctl_connect(deadline)
    nonce = secrets.token_hex(4)
    started = os.path.join(share, ".started")
    while True:
        vm.check_alive("before the scenario started")
        vm.ctl_send(f"GO {nonce} {int(time.time())}")
        for line in vm.ctl_lines(0.5):
            if line == f"ACK {nonce}":
                return
        if os.path.exists(started):
            return
        if time.monotonic() > deadline:
            raise PhaseTimeout("the guest did not acknowledge GO in time")


class Tail:
    """Streams a growing file to stderr, line by line, with a prefix."""

    def __init__(self, path, prefix="  | "):
        self.path, self.prefix, self.f, self.buf = path, prefix, None, b""

    def poll(self, final=False):
        if self.f is None:
            try:
                self.f = open(self.path, "rb")
            except FileNotFoundError:
                return
        self.buf += self.f.read()
        *lines, self.buf = self.buf.split(b"\n")
        if final and self.buf:
            lines, self.buf = lines + [self.buf], b""
        for line in lines:
            sys.stderr.write(self.prefix + line.decode(errors="replace") + "\n")
        sys.stderr.flush()


def wait_done(vm, share, deadline, limit):
    """Stream the scenario's log until the guest writes its exit code; returns it."""
    tail = Tail(os.path.join(share, "log"))
    rc_path = os.path.join(share, "exit-code")
    try:
        while True:
            tail.poll()
            if os.path.exists(rc_path):
                with open(rc_path) as f:
                    rc = int(f.read().strip() or EXIT_HARNESS)
                # The guest powers off by itself; don't wait long for it.
                try:
                    vm.proc.wait(20)
                except subprocess.TimeoutExpired:
                    log("guest did not power off within 20 s after the scenario; killing QEMU")
                return rc
            if not vm.alive():
                tail.poll(final=True)
                raise HarnessError(f"QEMU exited (status {vm.proc.returncode}) before the "
                                   "scenario wrote its exit code\n" + vm.diagnostics())
            if time.monotonic() > deadline:
                tail.poll(final=True)
                raise PhaseTimeout(f"the scenario did not finish within {limit:.0f} s "
                                   "(CONTAIN_VM_TIMEOUT)")
            time.sleep(0.3)
    finally:
        tail.poll(final=True)


# ----------------------------------------------------------------------------------------------
# Saved state
# ----------------------------------------------------------------------------------------------
def qemu_img_overlay(path, backing):
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(backing),
                    "-F", "qcow2", path], check=True)


def state_key(a):
    ver = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True,
                         check=True).stdout.splitlines()[0]
    stamp_path = os.path.join(os.path.dirname(os.path.abspath(a.image)), "stamp")
    stamp = open(stamp_path).read().strip() if os.path.exists(stamp_path) else "?"
    boot_id = open("/proc/sys/kernel/random/boot_id").read().strip()
    template = qemu_args(dict(kernel=os.path.abspath(a.kernel), initrd=os.path.abspath(a.initrd),
                              disk="D", share="S", run_dir="R"))
    h = hashlib.sha256("\0".join([PROTO, ver, stamp, boot_id, *template]).encode())
    return h.hexdigest()[:16]


def ensure_state(a, lock_fd):
    """Make sure STATE/vm.state + STATE/disk.qcow2 match this image/QEMU/host boot. Holds the
    lock exclusively while (re)making them, then shared for the rest of the run (the run's disk
    overlay uses STATE/disk.qcow2 as its backing file, so nobody may replace it meanwhile)."""
    sd = a.state_dir
    key = state_key(a)
    key_path, st, disk = (os.path.join(sd, n) for n in ("key", "vm.state", "disk.qcow2"))

    def valid():
        return (os.path.exists(key_path) and open(key_path).read().strip() == key
                and os.path.exists(st) and os.path.exists(disk)
                and not os.path.exists(os.path.join(sd, "bad")))

    # Common case: a valid state, shared with concurrent runs.
    fcntl.flock(lock_fd, fcntl.LOCK_SH)
    if valid():
        return st, disk
    # (Re)make it: exclusive, i.e. after the runs still using the old one have finished.
    fcntl.flock(lock_fd, fcntl.LOCK_UN)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    if not valid():
        for n in ("key", "vm.state", "vm.state.tmp", "disk.qcow2", "bad"):
            try:
                os.unlink(os.path.join(sd, n))
            except FileNotFoundError:
                pass
        log("making the saved VM state: cold boot to 'docker ready' (once per host boot)")
        t0 = time.monotonic()
        qemu_img_overlay(disk, a.image)
        empty = os.path.join(a.run_dir, "state-share")
        os.makedirs(empty, exist_ok=True)
        vm = VM(a.kernel, a.initrd, disk, empty, os.path.join(a.run_dir, "state-vm")).start()
        try:
            wait_ready(vm, time.monotonic() + a.boot_timeout, a.boot_timeout)
            t_ready = time.monotonic() - t0
            deadline = time.monotonic() + 300
            vm.qmp_cmd("stop", deadline)
            vm.qmp_cmd("migrate", deadline, uri=f"file:{st}.tmp")
            while True:
                s = vm.qmp_cmd("query-migrate", deadline)
                status = s.get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled"):
                    raise HarnessError(f"saving the VM state failed: {s.get('error-desc', s)}")
                if time.monotonic() > deadline:
                    raise PhaseTimeout("saving the VM state took too long")
                time.sleep(0.2)
            vm.qmp_cmd("quit", deadline)
            vm.proc.wait(30)  # QEMU flushes the disk overlay on quit
        except BaseException:
            vm.kill()
            for n in ("vm.state.tmp", "disk.qcow2"):
                try:
                    os.unlink(os.path.join(sd, n))
                except FileNotFoundError:
                    pass
            raise
        vm.kill()
        os.rename(st + ".tmp", st)
        with open(key_path, "w") as f:
            f.write(key + "\n")
        log(f"saved VM state: cold boot to docker ready {t_ready:.1f} s, total "
            f"{time.monotonic() - t0:.1f} s, {os.path.getsize(st) >> 20} MiB")
    fcntl.flock(lock_fd, fcntl.LOCK_SH)
    return st, disk


# ----------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------
def run_cold(a, disk):
    t0 = time.monotonic()
    vm = VM(a.kernel, a.initrd, disk, a.share, a.run_dir).start()
    log(f"cold boot (QEMU pid {vm.proc.pid})")
    wait_ready(vm, t0 + a.boot_timeout, a.boot_timeout)
    send_go(vm, a.share, time.monotonic() + 60)
    log(f"scenario started after {time.monotonic() - t0:.1f} s (cold boot)")
    return vm


def run_restored(a, state, state_disk):
    t0 = time.monotonic()
    disk = os.path.join(a.run_dir, "disk.qcow2")
    qemu_img_overlay(disk, state_disk)
    vm = VM(a.kernel, a.initrd, disk, a.share, a.run_dir, incoming=f"file:{state}").start()
    log(f"restoring the saved VM state (QEMU pid {vm.proc.pid})")
    deadline = t0 + a.restore_timeout
    try:
        while True:
            status = vm.qmp_cmd("query-status", deadline)["status"]
            if status != "inmigrate":
                break
            if time.monotonic() > deadline:
                raise PhaseTimeout("loading the saved VM state took too long")
            time.sleep(0.1)
        if status != "running":
            vm.qmp_cmd("cont", deadline)  # QEMU keeps the saved (paused) run state
        send_go(vm, a.share, deadline)
    except (HarnessError, PhaseTimeout, OSError, ValueError) as e:
        vm.kill()
        why = (str(e).splitlines() or [type(e).__name__])[0]
        try:  # QEMU's own words are the useful part (e.g. "load of migration failed: ...")
            with open(os.path.join(a.run_dir, "qemu.log"), errors="replace") as f:
                qlog = " | ".join(f.read().strip().splitlines()[-3:])
        except OSError:
            qlog = ""
        raise HarnessError(f"restore failed: {why}" + (f" (QEMU: {qlog})" if qlog else "")) from e
    log(f"scenario started after {time.monotonic() - t0:.1f} s (restored state)")
    return vm


def cmd_run(a):
    os.makedirs(a.run_dir, exist_ok=True)
    for f in ("exit-code", ".started", "log"):
        try:
            os.unlink(os.path.join(a.share, f))
        except FileNotFoundError:
            pass
    vm = None
    if a.writable:
        vm = run_cold(a, a.image)
    else:
        if a.state_dir:
            os.makedirs(a.state_dir, exist_ok=True)
            lock_fd = os.open(os.path.join(a.state_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                state, state_disk = ensure_state(a, lock_fd)
                vm = run_restored(a, state, state_disk)
            except HarnessError as e:
                log(f"{e}; falling back to a cold boot")
                open(os.path.join(a.state_dir, "bad"), "w").close()  # remade by the next run
                fcntl.flock(lock_fd, fcntl.LOCK_UN)  # the cold boot does not use the state
            except PhaseTimeout as e:
                log(f"saved state unavailable ({e}); falling back to a cold boot")
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        if vm is None:
            disk = os.path.join(a.run_dir, "disk.qcow2")
            qemu_img_overlay(disk, a.image)
            vm = run_cold(a, disk)
    t0 = time.monotonic()
    rc = wait_done(vm, a.share, t0 + a.timeout, a.timeout)
    vm.kill()
    log(f"scenario finished in {time.monotonic() - t0:.1f} s with exit code {rc}")
    return rc


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot (or restore) the guest and run SHARE/scenario.sh")
    r.add_argument("--image", required=True)
    r.add_argument("--kernel", required=True)
    r.add_argument("--initrd", required=True)
    r.add_argument("--share", required=True, help="directory shared at /mnt/share")
    r.add_argument("--run-dir", required=True, help="sockets, console log, disk overlay")
    r.add_argument("--state-dir", help="where the saved VM state lives")
    r.add_argument("--no-state", action="store_true", help="always cold boot")
    r.add_argument("--writable", action="store_true",
                   help="boot the image itself (provisioning); implies --no-state")
    r.add_argument("--timeout", type=float, default=env_num("CONTAIN_VM_TIMEOUT", 900),
                   help="limit for the scenario itself, from GO to exit code")
    r.add_argument("--boot-timeout", type=float, default=env_num("CONTAIN_VM_BOOT_TIMEOUT", 420))
    r.add_argument("--restore-timeout", type=float,
                   default=env_num("CONTAIN_VM_RESTORE_TIMEOUT", 90))
    a = ap.parse_args()
    a.share, a.run_dir = os.path.abspath(a.share), os.path.abspath(a.run_dir)
    if a.no_state or a.writable:
        a.state_dir = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        return cmd_run(a)
    except PhaseTimeout as e:
        vms = ", ".join(str(v.proc.pid) for v in LIVE)
        log(f"TIMEOUT: {e}; killing QEMU (pid {vms or '-'})")
        for v in LIVE:
            diag = v.diagnostics()
            if diag:
                log(diag)
        return EXIT_TIMEOUT
    except HarnessError as e:
        log(f"ERROR: {e}")
        return EXIT_HARNESS
    except (OSError, subprocess.CalledProcessError) as e:  # e.g. QEMU or qemu-img missing
        log(f"ERROR: {e}")
        return EXIT_HARNESS
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); stopping QEMU")
        return 130
    finally:
        for v in list(LIVE):
            v.kill()


if __name__ == "__main__":
    sys.exit(main())
