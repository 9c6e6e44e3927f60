"""DP-SGD as trained, the framework-free half (common/harness/deployed.py):
the paired ratios of real examples per second (against the fixed DP step and
against standard training), the counters per logical step; and, through the
study's runner, its rounds, resume, fault labels and refusals. Fake benches
on a fake clock (exact arithmetic) and fake workers, no framework."""
import json
import math
import sys
from pathlib import Path

import pytest

from common.harness import deployed, runner
from common.harness.config import RunConfig, Timing
from tests.common.harness import fakes
from common.harness.pairing import measure_paired
from common.reference.sampling import Plan, epsilon
from tests.common.harness.test_pairing import Clock

TIMING = Timing(warmup_steps=1, repeats=4, window_s=1 / 32, min_steps=1)
P = 4


class FakeDeployed:
    """Logical steps of cycling sizes (real examples), each in ceil(n/P) padded
    physical batches of 1/64 s each: a deployed step's time follows its work."""

    PHYS_S = 1 / 64

    def __init__(self, clock: Clock, sizes=(5, 9, 3, 12), compile_s: float = 0.5, draws_per_step: int = 1) -> None:
        self.clock, self.cycle, self.compile_s, self.draws = clock, list(sizes), compile_s, draws_per_step
        self.c = dict.fromkeys(deployed.COUNTERS, 0)
        self.drawn: list[int] = []

    def step(self):
        n = self.cycle[self.c["logical_steps"] % len(self.cycle)]
        phys = max(1, math.ceil(n / P))
        self.clock.advance(self.compile_s if self.c["logical_steps"] == 0 else phys * self.PHYS_S)
        self.c["compiles"] += self.c["logical_steps"] == 0
        self.c["logical_steps"] += 1
        self.c["real_examples"] += n
        self.c["padded_examples"] += phys * P - n
        self.c["physical_steps"] += phys
        self.c["noise_draws"] += self.draws
        self.drawn.append(n)
        return n

    def bench(self) -> deployed.DeployedBench:
        return deployed.DeployedBench(self.step, lambda out: out, lambda: dict(self.c), lambda: list(self.drawn),
                                      {"fake": True})


class FakeFixed:
    """The fixed-batch reference: P examples per step, one physical batch's time (``step_s``)."""

    def __init__(self, clock: Clock, step_s: float = FakeDeployed.PHYS_S) -> None:
        self.clock, self.step_s = clock, step_s

    def step(self):
        self.clock.advance(self.step_s)
        return 0

    def sync(self, out):
        return out


def cfg(**kw) -> deployed.DeployedConfig:
    base = dict(framework="jax", impl="jax_privacy", strategy="pad", dataset_size=400, logical_batch=8,
                physical_batch=P, cycle=4, budget_s=60.0, timing=TIMING)
    return deployed.DeployedConfig(**{**base, **kw}).validate()


def test_paired_ratio_counts_real_examples_not_steps():
    """Padding costs time and does no work: the ratio is real examples/s over
    the fixed step's examples/s, here exactly (sum n) / (sum ceil(n/P) P)."""
    clock = Clock()
    fake = FakeDeployed(clock, sizes=(5,))  # 2 physical batches, 8 slots, 5 real: 5/8 of the fixed rate
    work = {"n": 0}

    def step():
        work["n"] += fake.step()

    _, paired = measure_paired(step, lambda o: o, lambda: FakeFixed(clock), TIMING, 60.0, clock=clock,
                               subject_work=lambda: work["n"], ref_work=P)
    assert paired["ratios"] and all(r == pytest.approx(5 / 8, rel=1e-12) for r in paired["ratios"])
    # without the work counter the ratio is of step times: one logical step vs one physical one
    clock2, fake2 = Clock(), FakeDeployed(Clock(), sizes=(5,))
    fake2.clock = clock2
    _, plain = measure_paired(fake2.step, lambda o: o, lambda: FakeFixed(clock2), TIMING, 60.0, clock=clock2)
    assert all(r == pytest.approx(1 / 2, rel=1e-12) for r in plain["ratios"])


def test_measure_reports_rates_padding_draws_and_first_cycle():
    clock = Clock()
    fake = FakeDeployed(clock)
    out = deployed.measure(cfg(), lambda c: fake.bench(), lambda ref: FakeFixed(clock), clock=clock)
    sizes = (5, 9, 3, 12)
    slots = sum(math.ceil(n / P) * P for n in sizes)
    assert out["first_cycle"]["logical_steps"] == 4 and out["compiles"] == 1 and out["steady_compiles"] == 0
    assert out["first_cycle_s"] == pytest.approx(0.5 + (3 + 1 + 3) / 64)
    assert out["noise_draws_per_logical"] == 1
    # the steady state covers whole cycles only by chance: its padding share is its own counters'
    s = out["steady"]
    assert out["padding_share"] == pytest.approx(s["padded_examples"] / (s["padded_examples"] + s["real_examples"]))
    assert 0 < out["padding_share"] < 1 - sum(sizes) / slots + 0.3
    # every pair's rate: real examples of its window over its time, against P per physical step
    for p in out["paired"]["pairs"]:
        assert p["subject_work"] > 0
    assert out["fixed_examples_per_s"] == pytest.approx(P * 64)
    assert 0 < out["real_examples_per_s"] < out["fixed_examples_per_s"]
    assert out["sizes"][:4] == list(sizes)
    # memory read before the reference was built: RSS above the baseline, where /proc says
    assert out["peak_rss_bytes"] is None or out["peak_rss_bytes"] >= 0
    assert out["mem_source"].startswith("rss_") and "first_cycle_peak_rss_bytes" in out


def test_measure_pairs_the_deployed_step_with_standard_training_too():
    """The second pairing's reference is the framework's standard step at B = P (built from
    ``standard_reference``): here twice as fast as the fixed DP step, so every pair's % of standard
    is exactly half the deployed window's % of the fixed step (a window's real examples over its time)."""
    clock = Clock()
    built: list[RunConfig] = []

    def build_ref(ref: RunConfig) -> FakeFixed:
        built.append(ref)
        return FakeFixed(clock, FakeDeployed.PHYS_S / (2 if ref.impl == "standard" else 1))

    out = deployed.measure(cfg(), lambda c: FakeDeployed(clock, sizes=(5,)).bench(), build_ref, clock=clock)
    assert [(r.impl, r.batch_size, r.microbatch_size) for r in built] == [("jax_privacy", P, None),
                                                                          ("standard", P, None)]
    assert out["paired"]["ratios"] and out["paired_standard"]["ratios"]
    assert all(r == pytest.approx(5 / 8, rel=1e-12) for r in out["paired"]["ratios"])
    assert all(r == pytest.approx(5 / 16, rel=1e-12) for r in out["paired_standard"]["ratios"])
    assert out["standard_examples_per_s"] == pytest.approx(P * 128) and out["fixed_examples_per_s"] == pytest.approx(P * 64)
    assert out["paired_standard"]["ref"]["impl"] == "standard"
    tf = cfg(framework="tf", impl="tfp", strategy="variable").standard_reference()
    assert (tf.impl, tf.variant, tf.microbatch_size, tf.batch_size) == ("standard", "graph", None, P)


def test_measure_sees_a_second_noise_draw():
    clock = Clock()
    out = deployed.measure(cfg(), lambda c: FakeDeployed(clock, draws_per_step=3).bench(),
                           lambda ref: FakeFixed(clock), clock=clock)
    assert out["noise_draws_per_logical"] == 3


def test_reference_is_the_same_impl_fixed_at_the_physical_batch():
    c = cfg(framework="torch", impl="opacus", strategy="variable")
    ref = c.reference()
    assert (ref.impl, ref.batch_size, ref.model) == ("opacus_hooks", P, c.model)
    tf = cfg(framework="tf", impl="tfp", strategy="variable").reference()
    assert (tf.impl, tf.variant, tf.microbatch_size) == ("tfp_vectorized", "graph", 1)


def test_truncation_is_accounted_and_only_where_the_strategy_truncates():
    pad, trunc = cfg(), cfg(strategy="truncate")
    assert pad.cap is None and trunc.cap == deployed.truncation_cap(8, P) == 16  # 8 + 2 sqrt 8 = 13.7 -> 16
    steps = deployed.EPOCHS * 50
    assert deployed.privacy(pad)["epsilon"] == pytest.approx(epsilon(Plan(400, 0.02, P), 1.0, steps, deployed.DELTA))
    assert deployed.privacy(trunc)["epsilon"] != deployed.privacy(pad)["epsilon"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="unknown deployed row"):
        cfg(strategy="nope")
    with pytest.raises(ValueError, match="L <= N"):
        cfg(logical_batch=500)
    with pytest.raises(ValueError, match="unknown framework"):
        deployed.configs(["mxnet"])


FAKES = str(Path(fakes.__file__))


def fake_cmd(mode, calls=None, stop_at=None):
    """The runner's worker command, a fake worker in ``mode`` (tests/common/harness/fakes.py); ``calls``
    logs each launch's label, and the ``stop_at``-th launch is interrupted as a Ctrl-C would."""
    def cmd(c, cfg_path, result):
        if calls is not None:
            calls.append(c.label())
            if stop_at is not None and len(calls) == stop_at:
                raise KeyboardInterrupt
        return [sys.executable, FAKES, mode, cfg_path, result]
    return cmd


def test_a_sigkilled_deployed_worker_is_labelled_by_the_cgroup_like_a_study_worker(monkeypatch):
    """One run_config for both kinds: SIGKILL without an OOM kill in the cgroup is "killed", with one "oom"."""
    study = RunConfig("jax", "standard", "small", 8, budget_s=20.0)
    for c in (cfg(), study):
        rec = runner.run_config(c, "r", "abc", fake_cmd("killed"))
        assert rec["status"] == "killed" and "not an OOM kill" in rec["error"], c
    timeout = runner.run_config(cfg(budget_s=1.0), "r", "abc", fake_cmd("sleep"))
    assert timeout["status"] == "timeout" and timeout["row_kind"] == deployed.PRESET
    counts = iter([5, 6, 5, 6])  # the cgroup's oom_kill count rose during each launch
    monkeypatch.setattr(runner.launcher, "cgroup_oom_kills", lambda: next(counts))
    for c in (cfg(), study):
        rec = runner.run_config(c, "r", "abc", fake_cmd("killed"))
        assert rec["status"] == "oom" and "OOM killer" in rec["error"], c


def test_deployed_rounds_resume_per_round_and_survive_a_torn_line(tmp_path):
    """Two rounds, the second in reverse order; Ctrl-C at round 2's second launch keeps round 1 and
    round 2's first row; --resume runs only what is missing; a torn last line costs nothing."""
    cfgs = deployed.configs(["jax"], rates=((8, 4),), dataset_size=400)
    calls: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(cfgs, tmp_path, worker_cmd=fake_cmd("ok", calls, stop_at=len(cfgs) + 2), progress=False,
                         commit="abc", rounds=2)
    recs = deployed.read(tmp_path)
    assert [(r["strategy"], r["round"]) for r in recs] == [(c.strategy, 1) for c in cfgs] + [(cfgs[-1].strategy, 2)]
    with open(tmp_path / deployed.FILE, "a") as f:  # a crash mid-write
        f.write('{"schema": 1, "status": "o')
    assert len(deployed.read(tmp_path)) == len(cfgs) + 1
    calls.clear()
    runner.run_study(cfgs, tmp_path, resume=True, worker_cmd=fake_cmd("ok", calls), progress=False, commit="abc",
                     rounds=2)
    assert calls == [c.label() for c in reversed(cfgs[:-1])]
    pairs = [(deployed.key(r), r["round"]) for r in deployed.read(tmp_path)]
    assert len(pairs) == len(set(pairs)) == 2 * len(cfgs)


def test_the_runner_cli_refuses_bad_deployed_input_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    for args, msg in ((["--frameworks", "jax,mxnet"], "unknown framework"),
                      (["--models", "medium"], "--preset deployed takes no --models"),
                      (["--budget-s", "-1"], "budget must be positive")):
        assert runner.main(["--preset", "deployed", "--out", str(out), "--dry-run", *args]) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and not out.exists()
    out.mkdir()
    (out / deployed.FILE).write_text(json.dumps({"schema": 1, "status": "ok"}) + "\n")
    assert runner.main(["--preset", "deployed", "--out", str(out), "--frameworks", "jax"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert runner.main(["--preset", "deployed", "--out", str(tmp_path / "x"), "--frameworks", "jax", "--dry-run"]) == 0
    assert "jax jax_privacy/pad L=256 P=64" in capsys.readouterr().out
