"""Each framework's tests run in that framework's environment (./run_all.sh --test).

A plain ``pytest`` in one environment collects only the suites whose framework
imports there; ``run_all.sh --test`` runs every suite in its own venv, and a
suite that collects nothing fails there (pytest exit 5).
"""
import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_NEEDS = {"jax": "jax_privacy", "torch": "opacus", "tf": "tensorflow_privacy"}
collect_ignore_glob = [f"{d}/*" for d, mod in _NEEDS.items() if importlib.util.find_spec(mod) is None]
