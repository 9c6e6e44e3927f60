"""In-process JAX tests run under the study's XLA flags for JAX workers
(``common.harness.threads.jax_xla_flags()``: what ``worker_env`` gives every timed
row; ``DPBENCH_XLA_FLAGS=`` runs the suite under XLA's defaults instead), set
before JAX starts its backend. Not for correctness: for what is tested.

- The flag is not needed for correctness (jax 0.10.2, measured): under XLA's
  defaults (YNNPACK fusions on) the medium model's clipped sums match the
  float64 reference to 5.7e-7 (standard 2.8e-6) at a seed without max-pool
  near-ties; the ~1e-2 once blamed on the fusions is the tie of the medium
  model at seed 0 (gap 3.4e-8 of the layer's largest pre-activation), which
  the fusions break the other way (ties.py). The parity cases are seeded
  tie-free, and test_xla_flags.py checks the small model (the only one the
  ``xla-default`` variant is timed on) in child processes under both
  settings the study times: the workers' flags and XLA's defaults.
- It is where the tests look at compiled code: the in-process HLO analyses
  (test_explain) and the timed steps are then the ones the study's rows
  compile (with the fusions on, XLA hands other ops to YNNPACK).
- It is also faster here: the per-example convolutions of jax-privacy are ~5x
  slower in YNNPACK's fusions (small model, B=64: 29 vs 135-153 samples/s).

Child processes the tests start (runner, worker, explain CLI) get their
flags from ``threads.worker_env``, as in the study.

The session also gets JAX's persistent compilation cache in a temporary folder
(removed at exit), inherited by those children through the environment: the
suite builds the same steps many times (each ``make_step`` is a new function,
so JAX's in-memory cache misses; the runner's and worker's children compile
again what the in-process tests compiled), and XLA:CPU compiles are most of
its time. It caches executables only: the key hashes the lowered module, the
compile options, the XLA flags and jaxlib's version (jax/_src/cache_key.py), so
a hit is the executable a fresh compile of that module would give (XLA:CPU
supports the cache in jax 0.10.2: jax/_src/compilation_cache.py). Thresholds 0:
most of the suite's compiles take under the default 1 s, and all repeat.
"""
import atexit
import os
import shutil
import tempfile

from common.harness.threads import jax_xla_flags

_FLAGS = jax_xla_flags()
if _FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAGS}".strip()

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="dpbench-jax-tests-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
