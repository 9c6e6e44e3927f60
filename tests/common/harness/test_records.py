import json

import pytest

from common.harness import records
from common.harness.config import RunConfig
from common.harness.runner import base_record
from common.harness.threads import worker_env


def ok_record(**kw):
    rec = base_record(RunConfig("jax", "standard", "small", 8), "run", "abc", worker_env(0))
    rec.update(status="ok", framework_version="0", device="cpu", compile_s=1.0, step_s_median=0.1,
               throughput_sps=80.0, window_s=[0.2, 0.2], elapsed_s=2.0)
    rec.update(kw)
    if "global_batch_size" not in kw and isinstance(rec["batch_size"], int):
        rec["global_batch_size"] = rec["batch_size"] * rec["devices"]
    return rec


def test_records_before_schema_3_read_as_one_device():
    old = ok_record(schema_version=2)
    del old["devices"], old["global_batch_size"]
    back = records.validate(old)
    assert (back["devices"], back["global_batch_size"]) == (1, 8)
    assert records.config_key(back) == records.config_key(ok_record())


def test_global_batch_must_be_batch_times_devices():
    assert records.validate(ok_record(devices=2))["global_batch_size"] == 16
    with pytest.raises(records.RecordError, match="global batch"):
        records.validate(ok_record(devices=2, global_batch_size=8))
    with pytest.raises(records.RecordError, match="global batch"):
        records.validate(ok_record(devices=0))


def test_devices_are_part_of_the_configuration_key():
    assert records.config_key(ok_record(devices=2)) != records.config_key(ok_record())
    assert records.config_key(ok_record(devices=2)) == RunConfig("jax", "standard", "small", 8, devices=2).key()


def test_unsupported_is_a_status_with_a_reason():
    assert records.validate(ok_record(status="unsupported", error="no data-parallel mode"))["status"] == "unsupported"
    with pytest.raises(records.RecordError, match="error text"):
        records.validate(ok_record(status="unsupported", error=None))


def test_round_trip(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = ok_record()
    records.append(path, rec)
    records.append(path, ok_record(batch_size=16))
    back = records.read(path)
    assert back == [json.loads(json.dumps(rec)), json.loads(json.dumps(ok_record(batch_size=16)))]


@pytest.mark.parametrize("change,msg", [
    ({"status": "weird"}, "status"), ({"throughput_sps": None}, "lacks measurements"),
    ({"batch_size": "8"}, "batch_size"), ({"status": "error", "error": None}, "error text"),
    ({"mode": "fast"}, "mode"), ({"schema_version": 0}, "schema_version")])
def test_invalid_records_rejected(change, msg):
    with pytest.raises(records.RecordError, match=msg):
        records.validate(ok_record(**change))
    rec = ok_record()
    del rec["threads"]
    with pytest.raises(records.RecordError, match="lacks fields"):
        records.validate(rec)


def test_torn_last_line_is_skipped_and_earlier_records_survive(tmp_path):
    path = tmp_path / "r.jsonl"
    records.append(path, ok_record())
    with open(path, "a") as f:
        f.write('{"schema_version": 1, "run_')  # a writer killed mid-line
    assert len(records.read(path)) == 1
    records.append(path, ok_record(batch_size=4))  # appending after a torn line still works
    assert [r["batch_size"] for r in records.read(path)] == [8, 4]
