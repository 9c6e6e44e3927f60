"""Framework-neutral core of dpbench: spec, configs, timing, records, runner, report.

Nothing in this package imports jax, torch or tensorflow.
"""
