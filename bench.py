"""hashbench: adversarial robustness of deep-hashing image retrieval.

    python bench.py                                   # the default grid on FashionMNIST, then the leaderboard
    python bench.py --grid full --only attack=pgd,dhta --only bits=32
    python bench.py plan --grid paper                 # the cells a grid expands to, and which are stored
    python bench.py list                              # every plugin found, with its paper and defaults
    python bench.py leaderboard                       # render leaderboard/site from results/ only
    python bench.py COMMAND --help                    # run (the default), list, plan, leaderboard, stale, prune

The command line itself is ``benchmark.cli`` (also the ``hashbench`` console script); this script first makes
sure it runs in the project's environment.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
NEEDED = ("torch", "torchvision", "pandas", "pyarrow", "jinja2")


def ensure_environment() -> None:
    """Run in the project's environment: re-run with .venv's python when this one lacks the packages."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if not missing:
        return
    venv = ROOT / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve() and not os.environ.get("HASHBENCH_REEXEC"):
        os.environ["HASHBENCH_REEXEC"] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    hint = (f"{python} lacks them too: rebuild it with `make env`" if python.exists()
            else "build the environment with `make env` (once; see README), then run `.venv/bin/python bench.py ...`")
    sys.exit(f"bench.py: this Python ({sys.executable}) lacks {', '.join(missing)}; {hint}")


if __name__ == "__main__":
    ensure_environment()
    from benchmark.cli import main

    sys.exit(main())
