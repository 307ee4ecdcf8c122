#!/usr/bin/env python3
"""Mutation checks: each security check the README says a test proves is
taken out of the code, one at a time, and the test that proves it must then
fail, with the failure the claim names (`expect`); a check the README says
is not needed alone is taken out and the protection must still hold
(`outcome = "holds"`: the test's output has every `expect` and no `forbid`,
such as a probe's leak). A mutation the test survives is a test that no
longer sees what the README says it sees.

    tests/mutations/run.py [NAME...]     every mutation in catalogue.toml,
                                         or those whose names contain NAME

Each mutation edits this tree (exact text found exactly once, so a stale
entry fails loudly rather than testing nothing), builds, runs its test and
writes the files' bytes back, also when interrupted; so do not edit or
build here while it runs. (A scratch worktree sharing the target directory
would not do: cargo takes one checkout's build of a crate for the other's,
paths baked in at compile time and all.) At the end the daemons in
target/debug are built again from the restored tree. The tests need root
(they load eBPF programs); without root every mutation is counted as
skipped. Ends with "N passed, N failed" (", N skipped")."""

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = Path(__file__).with_name("catalogue.toml")
# A mutation whose test runs longer than this is a failure (a hang).
TIMEOUT_SECS = 900


def load(only):
    with open(CATALOGUE, "rb") as f:
        mutations = tomllib.load(f)["mutation"]
    if only:
        mutations = [m for m in mutations if any(o in m["name"] for o in only)]
    return mutations


def write_atomically(path, data):
    tmp = path.with_name(path.name + ".mutation-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Edits:
    """The mutation's edits applied in `tree`; the files' bytes as they
    were come back on exit, and on any failure while applying them."""

    def __init__(self, tree, edits):
        self.tree = tree
        self.edits = edits
        self.saved = {}

    def __enter__(self):
        try:
            for e in self.edits:
                path = self.tree / e["file"]
                data = path.read_bytes()
                find, replace = e["find"].encode(), e["replace"].encode()
                found = data.count(find)
                if found != 1:
                    raise LookupError(f"{e['file']}: the text to mutate is there {found} times, not once: the catalogue is stale")
                self.saved.setdefault(path, data)
                write_atomically(path, data.replace(find, replace))
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *_):
        self.restore()

    def restore(self):
        for path, data in self.saved.items():
            write_atomically(path, data)
        self.saved.clear()


# The cargo process group running now, killed with the run on a signal.
running = None


def cargo_test(tree, args, env, no_run=False):
    """`cargo test -q ARGS` in `tree`, in a process group of its own (the
    tests start loaders and helpers as root: a timeout or a signal takes
    them all down)."""
    global running
    split = args.index("--")
    cmd = ["cargo", "test", "-q", *args[:split]] + (["--no-run"] if no_run else args[split:])
    running = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = running.communicate(timeout=TIMEOUT_SECS)
        return running.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(running.pid, signal.SIGKILL)
        out, _ = running.communicate()
        return None, out
    finally:
        running = None


def excerpt(out):
    """What a failure report needs of a test's output: each panic's message
    (a few lines from "panicked at"), or the end of the output."""
    lines = out.strip().splitlines()
    panics = [i for i, line in enumerate(lines) if "panicked at" in line]
    if not panics:
        return "\n".join(lines[-30:])
    return "\n".join("\n".join(lines[i:i + 6]) for i in panics)


def check(tree, m):
    """'ok', or why the mutation is a failure."""
    # A proptest that fails under a mutation must not write its case into
    # the tree's regression files.
    env = dict(os.environ, PROPTEST_DISABLE_FAILURE_PERSISTENCE="1", **m.get("env", {}))
    with Edits(tree, m["edits"]):
        status, built = cargo_test(tree, m["test"], env, no_run=True)
        if status != 0:
            return "the mutated tree does not build (the mutation must change behaviour, not break the build):\n" \
                + built[-2000:]
        status, out = cargo_test(tree, m["test"], env)
    if status is None:
        return f"the test ran past {TIMEOUT_SECS} s and was killed"
    if sum(int(n) for n in re.findall(r"^running (\d+) tests?$", out, re.M)) == 0:
        return "no test ran (the test name in the catalogue is stale)"
    tail = excerpt(out)
    if m.get("outcome", "fails") == "holds":
        missing = [e for e in m["expect"] if e not in out]
        found = [f for f in m["forbid"] if f in out]
        if missing or found:
            return f"the README says this check is not needed alone, but the output lacks {missing} or has {found}:\n{tail}"
        return "ok"
    if status == 0:
        return "SURVIVED: the test passed with the check taken out"
    missing = [e for e in m["expect"] if e not in out]
    if missing:
        return f"the test failed, but not with {missing}:\n{tail}"
    return "ok"


def stop(signum, _frame):
    if running is not None:
        os.killpg(running.pid, signal.SIGKILL)
    sys.exit(128 + signum)


def main():
    mutations = load(sys.argv[1:])
    if not mutations:
        print("no mutation matches", sys.argv[1:])
        print("0 passed, 1 failed")
        return 1
    if os.geteuid() != 0:
        for m in mutations:
            print(f"SKIP  {m['name']}: needs root (its test loads eBPF programs)")
        print(f"0 passed, 0 failed, {len(mutations)} skipped")
        return 0
    # The files go back, and the tests go down, on SIGTERM (a CI timeout)
    # and SIGINT too: the exit unwinds through the context managers.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    passed = failed = 0
    for m in mutations:
        start = time.monotonic()
        try:
            outcome = check(ROOT, m)
        except (LookupError, OSError) as e:
            outcome = f"{type(e).__name__}: {e}"
        took = time.monotonic() - start
        if outcome == "ok":
            passed += 1
            print(f"ok    {m['name']} ({took:.0f} s): {m['claim']}", flush=True)
        else:
            failed += 1
            print(f"FAIL  {m['name']} ({took:.0f} s): {m['claim']}\n      {outcome}", flush=True)
    # The daemons in target/debug were last built from a mutated tree.
    rebuilt = subprocess.run(["cargo", "build", "-q", "-p", "bpf-loader", "-p", "resolver", "-p", "policyd"],
                             cwd=ROOT, capture_output=True, text=True)
    if rebuilt.returncode != 0:
        failed += 1
        print(f"FAIL  this tree's daemons in target/debug could not be built again:\n{rebuilt.stderr[-2000:]}")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
