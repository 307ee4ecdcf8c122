#!/usr/bin/env python3
"""Mutation checks: each security check the README says a test proves is
taken out of the code, one at a time, and the test that proves it must then
fail, with the failure the claim names. A mutation the test survives is a
test that no longer sees what the README says it sees.

    tests/mutations/run.py [NAME...]     every mutation in catalogue.toml,
                                         or those whose names contain NAME

Each mutation edits the working tree (exact text, found exactly once, so a
stale entry fails loudly rather than testing nothing), builds, runs its test
and puts the file back, also when interrupted. The tests it runs need root
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


def load(only):
    with open(CATALOGUE, "rb") as f:
        mutations = tomllib.load(f)["mutation"]
    if only:
        mutations = [m for m in mutations if any(o in m["name"] for o in only)]
    return mutations


class Edits:
    """The mutation's edits applied to the tree; the files' bytes as they
    were come back on exit, whatever happens in between."""

    def __init__(self, edits):
        self.edits = edits
        self.saved = {}

    def __enter__(self):
        for e in self.edits:
            path = ROOT / e["file"]
            text = path.read_text()
            found = text.count(e["find"])
            if found != 1:
                self.__exit__()
                raise LookupError(f"{e['file']}: the text to mutate is there {found} times, not once: the catalogue is stale")
            self.saved.setdefault(path, text)
            path.write_text(text.replace(e["find"], e["replace"]))
        return self

    def __exit__(self, *_):
        for path, text in self.saved.items():
            path.write_text(text)
        self.saved.clear()


def cargo_test(args, env, no_run=False):
    cmd = ["cargo", "test", "-q"] + args[: args.index("--")] + (["--no-run"] if no_run else []) \
        + ([] if no_run else args[args.index("--"):])
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def check(m):
    """'killed', or why the mutation is a failure."""
    # A proptest that fails under a mutation must not write its case into
    # the tree's regression files.
    env = dict(os.environ, PROPTEST_DISABLE_FAILURE_PERSISTENCE="1", **m.get("env", {}))
    with Edits(m["edits"]):
        built = cargo_test(m["test"], env, no_run=True)
        if built.returncode != 0:
            return "the mutated tree does not build (the mutation must change behaviour, not break the build):\n" \
                + built.stderr[-2000:]
        run = cargo_test(m["test"], env)
    out = run.stdout + run.stderr
    if sum(int(n) for n in re.findall(r"^running (\d+) tests?$", out, re.M)) == 0:
        return "no test ran (the test name in the catalogue is stale)"
    if run.returncode == 0:
        return "SURVIVED: the test passed with the check taken out"
    missing = [e for e in m["expect"] if e not in out]
    if missing:
        tail = "\n".join(out.strip().splitlines()[-30:])
        return f"the test failed, but not with {missing}:\n{tail}"
    return "killed"


def main():
    mutations = load(sys.argv[1:])
    if not mutations:
        print("no mutation matches", sys.argv[1:])
        print("0 passed, 1 failed")
        return 1
    # Put the tree back on SIGTERM too (a CI timeout): Edits' exit runs as
    # the exception unwinds.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    passed = failed = skipped = 0
    for m in mutations:
        start = time.monotonic()
        if os.geteuid() != 0:
            print(f"SKIP  {m['name']}: needs root (its test loads eBPF programs)")
            skipped += 1
            continue
        try:
            outcome = check(m)
        except LookupError as e:
            outcome = str(e)
        took = time.monotonic() - start
        if outcome == "killed":
            passed += 1
            print(f"ok    {m['name']} ({took:.0f} s): {m['claim']}", flush=True)
        else:
            failed += 1
            print(f"FAIL  {m['name']} ({took:.0f} s): {m['claim']}\n      {outcome}", flush=True)
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
