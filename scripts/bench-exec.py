#!/usr/bin/env python3
"""What exec tracking costs per exec: contain's exec, newtask and exit programs.

A benchmark, not a test: it measures and prints, it asserts nothing.

  sudo scripts/bench-exec.py [--bin target/release/bpf-loader] [--rounds 5] [--execs 2000]

Two measurements, both from one run:
  * the programs' own time per call, from the kernel's BPF statistics
    (kernel.bpf_stats_enabled, run_time_ns / run_cnt of this loader's
    programs, by program id);
  * the wall time of fork + exec + exit of /bin/true, in rounds that
    alternate with the loader (so its tracepoints) attached and not, and the
    difference of the medians.
The loader runs with a private socket and pin directory, removed at the end;
its programs are told from any other loader's by their ids. Other BPF
programs attached to the same tracepoints (another contain) add to both
sides of the wall-time comparison alike.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

PROGRAMS = ("contain_exec", "contain_newtask", "contain_exit")


def start_loader(binary, scratch):
    pin_dir = "/sys/fs/bpf/bench-exec-%d" % os.getpid()
    sock = os.path.join(scratch, "loader.sock")
    log = open(os.path.join(scratch, "loader.log"), "ab")
    proc = subprocess.Popen(
        [binary, "--socket", sock, "--pin-dir", pin_dir, "--log-format", "text"],
        stdout=log, stderr=log)
    for _ in range(200):
        if os.path.exists(sock):
            return proc, pin_dir
        if proc.poll() is not None:
            sys.exit("bpf-loader exited; see %s" % log.name)
        time.sleep(0.05)
    sys.exit("bpf-loader did not come up")


def stop_loader(proc, pin_dir):
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    # The pins hold the links: removing them detaches the tracepoints.
    shutil.rmtree(pin_dir, ignore_errors=True)


def prog_stats(ids):
    """run_time_ns and run_cnt of the tracking programs with these ids."""
    progs = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show"]))
    return {
        p["name"]: (p.get("run_time_ns", 0), p.get("run_cnt", 0))
        for p in progs
        if p.get("id") in ids
    }


def tracking_ids():
    """Ids of the loaded programs named like contain's tracking programs."""
    progs = json.loads(subprocess.check_output(["bpftool", "-j", "prog", "show"]))
    return {p["id"] for p in progs if p.get("name") in PROGRAMS}


def exec_round(n):
    start = time.perf_counter_ns()
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            try:
                os.execv("/bin/true", ["/bin/true"])
            finally:
                os._exit(127)
        os.waitpid(pid, 0)
    return (time.perf_counter_ns() - start) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/bpf-loader")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--execs", type=int, default=2000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("must run as root (it loads BPF programs)")
    scratch = tempfile.mkdtemp(prefix="bench-exec-")
    stats_path = "/proc/sys/kernel/bpf_stats_enabled"
    stats_before = open(stats_path).read().strip()
    with_loader, without = [], []
    per_call = {name: [] for name in PROGRAMS}
    try:
        with open(stats_path, "w") as f:
            f.write("1")
        exec_round(200)  # warm-up
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for attached in order:
                if attached:
                    others = tracking_ids()
                    proc, pin_dir = start_loader(args.bin, scratch)
                    try:
                        ours = tracking_ids() - others
                        before = prog_stats(ours)
                        with_loader.append(exec_round(args.execs))
                        after = prog_stats(ours)
                    finally:
                        stop_loader(proc, pin_dir)
                    for name in PROGRAMS:
                        t0, c0 = before.get(name, (0, 0))
                        t1, c1 = after.get(name, (0, 0))
                        if c1 > c0:
                            per_call[name].append((t1 - t0) / (c1 - c0))
                else:
                    without.append(exec_round(args.execs))
    finally:
        with open(stats_path, "w") as f:
            f.write(stats_before)
        shutil.rmtree(scratch, ignore_errors=True)
    on, off = statistics.median(with_loader), statistics.median(without)
    print("exec tracking, %d rounds of %d fork+exec+exit of /bin/true" % (args.rounds, args.execs))
    for name in PROGRAMS:
        if per_call[name]:
            print("  %-16s %6.0f ns per call (median of rounds, kernel BPF stats)"
                  % (name, statistics.median(per_call[name])))
        else:
            print("  %-16s not measured (no calls seen)" % name)
    print("  fork+exec+exit   %.1f µs with the programs, %.1f µs without: %+.2f µs (%.1f %%)"
          % (on / 1000, off / 1000, (on - off) / 1000, 100 * (on - off) / off))


if __name__ == "__main__":
    main()
