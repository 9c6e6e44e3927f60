from common.harness import threads


def test_same_intra_op_threads_for_every_framework():
    envs = {fw: threads.worker_env(3, fw, base={}) for fw in ("jax", "torch", "tf")}
    for env in envs.values():
        assert env["OMP_NUM_THREADS"] == env["TF_NUM_INTRAOP_THREADS"] == "3"
        assert env["TF_NUM_INTEROP_THREADS"] == "1"
    assert envs["jax"]["XLA_FLAGS"] == threads.JAX_XLA_FLAGS
    assert envs["tf"]["XLA_FLAGS"] == ""  # TF's XLA rejects the unknown flag


def test_xla_flag_override_and_record(monkeypatch):
    monkeypatch.setenv("DPBENCH_XLA_FLAGS", "")
    env = threads.worker_env(0, "jax", base={"XLA_FLAGS": "--foo"})
    assert env["XLA_FLAGS"] == "--foo"
    rec = threads.recorded(0, env)
    assert rec["intra_op"] == threads.resolve(0) >= 1 and rec["env"]["XLA_FLAGS"] == "--foo"
