"""The allocator setting: one malloc environment for every framework, a configuration dimension, recorded."""
import pytest

from common.harness import records, threads
from common.harness.config import RunConfig, expand
from common.harness.runner import base_record
from common.harness.threads import ALLOCATORS, DEFAULT_ALLOCATOR, worker_env
from tests.common.harness.test_records import ok_record


def test_keep_sets_the_same_malloc_settings_for_every_framework():
    envs = {fw: worker_env(2, fw, base={}, allocator="keep") for fw in ("jax", "torch", "tf")}
    for env in envs.values():
        assert env["MALLOC_MMAP_MAX_"] == "0" and int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2**32
        assert {k: env[k] for k in env if k.startswith("MALLOC_")} == ALLOCATORS["keep"]


def test_glibc_drops_inherited_malloc_settings_so_the_record_is_what_ran():
    env = worker_env(2, "torch", base={"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "2", "HOME": "/h"},
                     allocator="glibc")
    assert not [k for k in env if k.startswith("MALLOC_")] and env["HOME"] == "/h"
    assert threads.recorded(2, env)["env"].get("MALLOC_MMAP_MAX_") is None
    with pytest.raises(ValueError, match="unknown allocator"):
        worker_env(2, "torch", base={}, allocator="jemalloc")


def test_the_default_is_keep_and_every_record_carries_it():
    assert DEFAULT_ALLOCATOR == "keep" and RunConfig("torch", "standard", "small", 8).allocator == "keep"
    cfg = RunConfig("torch", "standard", "small", 8)
    rec = base_record(cfg, "run", "abc", worker_env(0, "torch", allocator=cfg.allocator))
    assert rec["allocator"] == "keep"
    assert rec["threads"]["env"]["MALLOC_MMAP_MAX_"] == "0"  # what was in force
    assert records.settings(rec)["malloc"] == ALLOCATORS["keep"]


def test_an_allocator_ab_expands_each_configuration_into_a_back_to_back_pair():
    cfgs = expand(["torch"], "quick", impls=["standard", "fastclip"], allocators=["keep", "glibc"])
    assert [(c.impl, c.allocator) for c in cfgs] == [("standard", "keep"), ("standard", "glibc"),
                                                     ("fastclip", "keep"), ("fastclip", "glibc")]
    assert len({c.key() for c in cfgs}) == 4
    assert {c.allocator for c in expand(["torch"], "quick", impls=["standard"])} == {DEFAULT_ALLOCATOR}
    with pytest.raises(ValueError, match="unknown allocator"):
        expand(["torch"], "quick", allocators=["tcmalloc"])
    with pytest.raises(ValueError, match="unknown allocator"):
        RunConfig("torch", "standard", "small", 8, allocator="tcmalloc").validate()


def test_records_before_schema_4_read_as_glibc_and_the_key_holds_the_allocator():
    old = ok_record(schema_version=3)
    del old["allocator"]
    assert records.validate(old)["allocator"] == "glibc"
    assert records.config_key(ok_record(allocator="glibc")) != records.config_key(ok_record())
    assert records.config_key(ok_record()) == RunConfig("jax", "standard", "small", 8).key()
