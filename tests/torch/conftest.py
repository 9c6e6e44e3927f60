"""Shared by the torch suites: Opacus warns on every PrivacyEngine (secure RNG
off: fine for benchmarking) and torch warns that full backward hooks fire
though the input needs no grad; Opacus's functorch mode takes an
embedding's int64 indices for mixed precision (opacus/grad_sample/
functorch.py: input dtype != parameter dtype) and asks CPU autocast for
int64, which torch declines with a warning and runs in float32. All are
expected here."""
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE not in Path(item.fspath).parents:
            continue
        item.add_marker(pytest.mark.filterwarnings("ignore:Secure RNG turned off"))
        item.add_marker(pytest.mark.filterwarnings("ignore:Full backward hook is firing"))
        item.add_marker(pytest.mark.filterwarnings("ignore:In CPU autocast, but the target dtype is not supported"))
