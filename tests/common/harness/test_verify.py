"""The parity table marks a wrong implementation as failing, on cases free of near-ties."""
import numpy as np
import pytest

from common.reference import float64 as reference
from common.harness import verify
from common.report import parity
from common.harness.adapter import Unsupported
from common.harness.config import PRESETS
from common.reference.exchange import Weights, init_weights, make_batch
from common.reference.spec import get_model
from tests.common.harness.fakes import SleepAdapter


class ReferenceAdapter(SleepAdapter):
    """Answers with the float64 reference itself, optionally wrong on purpose."""

    def __init__(self, wrong: str = ""):
        super().__init__()
        self.wrong = wrong

    def clipped_sum(self, impl, model, weights: Weights, x, y, clip_norm, microbatch_size=None, variant="",
                    devices=1):
        spec = get_model(model)
        self.devices_seen = getattr(self, "devices_seen", set()) | {devices}
        if impl == "standard":
            g = {k: v.sum(0) for k, v in reference.per_example_grads(spec, weights, x, y).items()}
        elif impl == self.wrong:  # forgets to clip
            g = reference.clipped_sum(spec, weights, x, y, np.inf)
        else:
            g = reference.clipped_sum(spec, weights, x, y, clip_norm)
        return {k: v.astype(np.float32) for k, v in g.items()}


def test_correct_passes_and_wrong_fails():
    rows = verify.verify_adapter(ReferenceAdapter(wrong="fastclip"), "jax", batch=4)
    by_impl = {(r["impl"], r["microbatch_size"]): r for r in rows}
    assert by_impl[("standard", None)]["passed"] and by_impl[("jax_privacy", 1)]["passed"]
    assert by_impl[("jax_privacy", 4)]["max_rel_error"] < 1e-6
    bad = by_impl[("fastclip", None)]
    assert not bad["passed"] and bad["max_rel_error"] > 0.01
    table = "\n".join(parity.render(rows))
    assert "| jax | fastclip | - | small |" in table and "FAIL" in table and "pass" in table


def test_parity_rows_name_the_device_their_sums_ran_on():
    """On a GPU the parity table is computed where the rows are timed; each row says so."""
    class OnGpu(ReferenceAdapter):
        def device(self):
            return "NVIDIA H100 80GB HBM3"

    rows = verify.verify_adapter(OnGpu(), "jax", batch=4)
    assert {r["device"] for r in rows} == {"NVIDIA H100 80GB HBM3"}
    assert "Computed on the run's device: jax on NVIDIA H100 80GB HBM3." in "\n".join(parity.render(rows))


def test_raising_impl_is_a_failing_row():
    class Broken(ReferenceAdapter):
        def clipped_sum(self, *a, **k):
            raise RuntimeError("kaboom")
    rows = verify.verify_adapter(Broken(), "jax", batch=4)
    assert all(not r["passed"] and "kaboom" in r["error"] for r in rows)


def test_data_parallel_rows_check_the_library_default_and_name_unsupported_impls():
    class NoDataParallel(ReferenceAdapter):
        def clipped_sum(self, impl, *a, devices=1, **k):
            if devices > 1 and impl == "jax_privacy":
                raise Unsupported("no data-parallel mode")
            return super().clipped_sum(impl, *a, devices=devices, **k)
    a = NoDataParallel(wrong="fastclip")
    rows = verify.verify_adapter(a, "jax", batch=4, devices=2)
    assert a.devices_seen == {2} and all(r["devices"] == 2 for r in rows)
    by_impl = {r["impl"]: r for r in rows}
    assert len(rows) == len(by_impl)  # one microbatch size each: the library's default
    assert by_impl["standard"]["passed"] and by_impl["fastclip"]["passed"] is False
    assert by_impl["jax_privacy"]["passed"] is None and by_impl["jax_privacy"]["microbatch_size"] is None
    one = verify.verify_adapter(ReferenceAdapter(), "jax", batch=4)
    table = "\n".join(parity.render(one + rows))
    assert "| jax | jax_privacy | - | small | 2 | - | 1e-04 | unsupported [1] |" in table
    assert "[1] unsupported: no data-parallel mode" in table
    assert "| jax | standard | - | small | 1 |" in table and "| Devices |" in table
    assert "| Devices |" not in "\n".join(parity.render(one))


@pytest.mark.parametrize("model", sorted({m for p in PRESETS.values() for m in p.models} | set(verify.CASES)))
def test_every_parity_case_is_free_of_near_ties(model):
    """A float32 rounding that flips a max-pool or ReLU near-tie fails parity
    with no wrong gradient (WRN B 4 seed 0: 2.7e-2 in JAX); every run's case
    keeps both margins, has an example on each side of the median clip, and is
    the one verify uses."""
    batch, seed = verify.CASES[model]
    spec = get_model(model)
    w, (x, _) = init_weights(spec, seed), make_batch(spec, batch, seed)
    assert batch >= 2
    assert reference.min_pool_gap(spec, w, x) > reference.MIN_POOL_GAP
    assert reference.min_relu_gap(spec, w, x) > reference.MIN_RELU_GAP
    assert verify.parity_case(model) == (batch, seed) and verify.BATCH[model] == batch


def test_rows_say_the_recorded_case_and_a_tied_one_is_refused(monkeypatch):
    rows = verify.verify_adapter(ReferenceAdapter(), "jax")
    assert all(r["passed"] for r in rows)
    assert {(r["batch_size"], r["seed"]) for r in rows} == {verify.CASES["small"]}
    assert "small B 8 seed 4: a seed with no max-pool or ReLU near-tie" in "\n".join(parity.render(rows))
    monkeypatch.setitem(verify.CASES, "small", (8, 0))  # a max-pool gap and a ReLU input 3.4e-8 from a tie
    with pytest.raises(ValueError, match="no tie-free seed"):
        verify.verify_adapter(ReferenceAdapter(), "jax")


def test_a_run_checks_the_rows_it_measures_on_each_model():
    """The parity stage checks, per model, the rows the run measures there (the ViT sweep's
    models run a few rows): the runner's plan names them, the worker checks only those."""
    from common.harness.config import expand
    from common.harness.runner import parity_rows
    plan = parity_rows(expand(["jax", "tf"], "vit"))
    assert plan[("tf", "vit_p2")] == {"standard:graph", "tfp_dpmodel:graph", "fastclip:graph"}
    assert {"tfp_vectorized:xla", "tfp_microbatch:graph"} <= plan[("tf", "vit")]  # every row at vit B 64
    rows = verify.verify_adapter(ReferenceAdapter(), "jax", batch=4, only={"standard:", "fastclip:"})
    assert {r["impl"] for r in rows} == {"standard", "fastclip"}
    assert {r["impl"] for r in verify.verify_adapter(ReferenceAdapter(), "jax", batch=4)} > {"standard", "fastclip"}
