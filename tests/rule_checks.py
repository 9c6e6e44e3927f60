"""What every framework's fastclip registry test needs (framework-free, shared by
tests/{jax,torch,tf}/test_*fastclip.py)."""
from __future__ import annotations


def quadrupled(rule: type) -> type:
    """``rule`` (a port's ``fastclip.Rule`` class) with its squared norms times 4:
    what fastclip computes with it registered shows whose norms it took."""
    class Quadrupled(rule):
        def norms(self, *args):
            sq, state = super().norms(*args)
            return 4 * sq, state
    return Quadrupled
