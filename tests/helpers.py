"""Shared by the tests: where the repo is, and how to run a script the way a user does."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMALL_TEXT = (REPO / "input.txt").read_text(encoding="utf-8")[:20_000] if (REPO / "input.txt").exists() else None


def run(script, *args, timeout=300, env=None):
    """Run `python script args...` from the repo root; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *words):
    """A usage error: non-zero exit, no traceback, one line on stderr that names the problem."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])
