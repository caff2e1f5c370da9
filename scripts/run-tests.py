#!/usr/bin/env python3
"""Runs the workspace's test binaries two at a time (CI's test stage).

    scripts/run-tests.py [--jobs N] [--times FILE] -- CARGO_TEST_ARGS...

`cargo test` runs one test binary after another, and each keeps the two
cores of this project's CI machines only ~1.5 busy on average (a
single-threaded lavapipe test here, a child process there). This builds
the same binaries (`cargo test ARGS --no-run`), then runs them as cargo
would (from their package's folder, with cargo's variables and library
path), N at a time, longest first by the durations the last run recorded
in FILE (unknown ones first). The doc tests run as one more job through
`cargo test --doc`. Each binary's output is printed whole when it ends;
every binary runs even after one fails, and the run fails if any did.
The recorded durations only order the jobs: no result is taken from them.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def say(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


def test_binaries(cargo_args: list[str]) -> tuple[list[dict], list[str]]:
    """Builds the tests; returns the binaries and the build scripts' library folders."""
    proc = subprocess.run(
        ["cargo", "test", *cargo_args, "--no-run", "--message-format=json-render-diagnostics"],
        stdout=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(proc.returncode)
    binaries, lib_dirs = [], []
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
            binaries.append(
                {
                    "name": f"{msg['target']['name']} ({os.path.basename(os.path.dirname(msg['manifest_path']))})",
                    "exe": msg["executable"],
                    "manifest": msg["manifest_path"],
                }
            )
        elif msg.get("reason") == "build-script-executed":
            for p in msg.get("linked_paths", []):
                lib_dirs.append(p.split("=", 1)[-1])
    return binaries, lib_dirs


def package_env(package: dict) -> dict:
    """The variables cargo sets for a test of `package` (cargo metadata's entry)."""
    return {
        "CARGO_MANIFEST_DIR": os.path.dirname(package["manifest_path"]),
        "CARGO_MANIFEST_PATH": package["manifest_path"],
        "CARGO_PKG_NAME": package["name"],
        "CARGO_PKG_VERSION": package["version"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=lambda v: max(1, int(v)), default=2)
    ap.add_argument("--times", help="durations of the last run (read, then rewritten)")
    ap.add_argument("cargo_args", nargs="*")
    args = ap.parse_args()

    binaries, lib_dirs = test_binaries(args.cargo_args)
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version=1", "--no-deps", "--locked"],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
    )
    packages = {p["manifest_path"]: p for p in meta["packages"]}
    target = meta["target_directory"]
    # As cargo: the build scripts' library folders inside the target dir,
    # then the profile's deps folder (where the binaries are) and the
    # profile folder, ahead of whatever the caller had.
    search = [d for d in lib_dirs if d.startswith(target)]
    for deps in dict.fromkeys(os.path.dirname(b["exe"]) for b in binaries):
        search += [deps, os.path.dirname(deps)]
    if os.environ.get("LD_LIBRARY_PATH"):
        search.append(os.environ["LD_LIBRARY_PATH"])
    base_env = dict(os.environ, LD_LIBRARY_PATH=":".join(search))
    cargo = os.environ.get("CARGO", "cargo")
    base_env["CARGO"] = cargo

    jobs = [
        {
            "name": b["name"],
            "cmd": [b["exe"]],
            "cwd": os.path.dirname(b["manifest"]),
            "env": dict(base_env, **package_env(packages[b["manifest"]])),
        }
        for b in binaries
    ]
    jobs.append(
        {
            "name": "doc tests",
            "cmd": ["cargo", "test", *args.cargo_args, "--doc"],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
        }
    )
    last = {}
    if args.times and os.path.exists(args.times):
        try:
            with open(args.times) as f:
                last = json.load(f)
        except (OSError, ValueError):
            last = {}
    # Longest first; a binary the last run did not record first of all.
    jobs.sort(key=lambda j: -last.get(j["name"], float("inf")))

    say(f"{len(jobs)} test jobs, {args.jobs} at a time")
    t0 = time.monotonic()
    running, waiting, done, failed = [], list(jobs), {}, []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            j = waiting.pop(0)
            j["log"] = tempfile.TemporaryFile()
            j["start"] = time.monotonic()
            j["proc"] = subprocess.Popen(
                j["cmd"], cwd=j["cwd"], env=j["env"], stdout=j["log"], stderr=subprocess.STDOUT
            )
            running.append(j)
        time.sleep(0.2)
        for j in [j for j in running if j["proc"].poll() is not None]:
            running.remove(j)
            secs = time.monotonic() - j["start"]
            done[j["name"]] = round(secs, 1)
            rc = j["proc"].returncode
            j["log"].seek(0)
            sys.stdout.write(f"\n===== {j['name']}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {secs:.0f} s\n")
            sys.stdout.flush()
            # The bytes as the binary wrote them (a test may print any).
            sys.stdout.buffer.write(j["log"].read())
            sys.stdout.buffer.flush()
            j["log"].close()
            if rc != 0:
                failed.append(j["name"])
    if args.times:
        with open(args.times, "w") as f:
            json.dump(done, f, indent=1, sort_keys=True)
    say(f"test jobs done in {time.monotonic() - t0:.0f} s")
    if failed:
        say("failed: " + ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
