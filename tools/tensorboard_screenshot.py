"""The TensorBoard screenshot of docs/trackers.md: a ``reduce`` logged with ``--log tensorboard``,
served by a local ``tensorboard --logdir`` this script starts and stops, photographed by headless
Chromium.

    python tools/tensorboard_screenshot.py --work /tmp/tb-shot --out docs/trackers-tensorboard.png

``--work`` keeps the reduce (its store, runs and event files): a second call resumes it (nothing
is trained again) and only takes the picture. Needs the tensorboard extra and Debian's
``chromium`` (``apt-get install chromium``). The page is TensorBoard's own web app, so Chromium
is given virtual time (``--virtual-time-budget``) to run its JavaScript before the capture.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every template of MobileNet fitted to 20K parameters on the embedded digits: small enough to
# train in minutes on a CPU, and its candidates' curves part visibly.
REDUCE = ["reduce", *"--model mobilenet --budget params=20K --dataset digits --device cpu --no-export".split()]
# The Scalars dashboard, the candidates' curves first (no smoothing, every point in the chart).
VIEW = "#scalars&tagFilter=%5E(val_acc%7Ctest_acc%7Ctrain_loss)%24&_smoothingWeight=0"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Until the server answers ``url`` (it reads the event files first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"tensorboard exited with {server.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"tensorboard did not answer {url} within {timeout:.0f} s")


def _shoot(url: str, png: Path, size: str, budget_ms: int) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("no chromium on PATH: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        subprocess.run(
            [
                chromium,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                f"--window-size={size}",
                f"--virtual-time-budget={budget_ms}",
                f"--screenshot={png}",
                url,
            ],
            check=True,
            timeout=300,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder of the reduce and its event files")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "trackers-tensorboard.png")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--view", default=VIEW, help="the TensorBoard page (URL fragment) to photograph")
    p.add_argument("--size", default="1400,900", help="the window, WIDTH,HEIGHT")
    p.add_argument("--budget-ms", type=int, default=20000, help="virtual time for the web app to draw")
    args = p.parse_args(argv)
    logs = args.work / "tb"
    reduce = [*REDUCE, "--epochs", str(args.epochs), "--out", str(args.work / "reduce")]
    subprocess.run(
        [sys.executable, "-m", "filter_templates", *reduce, "--log", "tensorboard", "--log-dir", str(logs)],
        check=True,
        cwd=ROOT,
    )
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logs), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/"
        _wait_for(base + "data/runs", server)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _shoot(base + args.view, args.out.resolve(), args.size, args.budget_ms)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    print(f"{args.out}: {args.out.stat().st_size:,} bytes, from {base + args.view}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
