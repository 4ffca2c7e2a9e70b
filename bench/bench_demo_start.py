"""How long `mssante demo` takes from launch to "every listener accepts" (demo.json written).

Usage: .venv/bin/python bench/bench_demo_start.py [--runs N]

Measures a fresh build (test PKI copied, database migrated, mailboxes created with argon2
hashes) and a restart on the existing directory. The issue's target is under 5 seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MSSANTE = str(Path(sys.executable).with_name("mssante"))


def _port_base() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1]) - 80


def start_once(directory: Path, extra: list[str]) -> float:
    began = time.perf_counter()
    proc = subprocess.Popen(
        [MSSANTE, "demo", "--dir", str(directory), "--port-base", str(_port_base()), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = directory / "demo.json"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"demo exited early: {proc.stderr.read() if proc.stderr else ''}")
            if state.is_file():
                try:
                    if json.loads(state.read_text()).get("pid") == proc.pid:
                        return time.perf_counter() - began
                except json.JSONDecodeError:
                    pass  # being written
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    fresh: list[float] = []
    restart: list[float] = []
    for _ in range(args.runs):
        work = Path(tempfile.mkdtemp(prefix="mssante-bench-"))
        try:
            fresh.append(start_once(work / "demo", []))
            restart.append(start_once(work / "demo", []))
        finally:
            shutil.rmtree(work, ignore_errors=True)
    for name, values in (("fresh build + start", fresh), ("restart", restart)):
        print(
            f"{name:<22} median {statistics.median(values):.2f} s   "
            f"min {min(values):.2f} s   max {max(values):.2f} s   ({len(values)} runs)"
        )


if __name__ == "__main__":
    main()
