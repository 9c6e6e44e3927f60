"""The per-layer fastclip table (common/report/layer_timing.py) from saved measurements."""
from __future__ import annotations

import json

from common.report import layer_timing, build as report
from common.harness import records
from tests.common.report.test_report import rec


def _row(layer, chosen, inst, ghost):
    return {"layer": layer, "positions": 1024, "fan_in": 27, "features": 32, "chunk": 8, "chosen": chosen,
            "reason": "lower estimated time", "literature": "instantiate",
            "estimated_s": {"instantiate": 0.001, "ghost": 0.05},
            "measured_s": {"standard": 0.003, "instantiate": inst, "ghost": ghost}}


def test_table_marks_the_choice_and_whether_measurement_agrees():
    res = [{"model": "small", "batch_size": 64, "status": "ok",
            "layers": [_row("conv0", "instantiate", 0.0037, 0.109), _row("conv1", "instantiate", 0.030, 0.025)]},
           {"model": "medium", "batch_size": 256, "status": "timeout", "error": "ran past 900 s"}]
    text = "\n".join(layer_timing.table(res))
    assert "| jax | small | 64 | conv0 | 1024 | 27 | 32 | 8 | 3.0 | **3.7** | 109.0 | instantiate ✓ | instantiate |" in text
    assert "| **30.0** | 25.0 | instantiate (measured faster: ghost) |" in text
    assert "| jax | medium | 256 | timeout: ran past 900 s |" in text
    torch_row = [{"framework": "torch", "model": "small", "batch_size": 64, "status": "ok",
                  "layers": [_row("conv0", "instantiate", 0.002, 0.1)]}]
    assert "| torch | small | 64 | conv0 |" in "\n".join(layer_timing.table(torch_row))
    tf_row = [{"framework": "tf", "model": "small", "batch_size": 64, "status": "ok",
               "layers": [dict(_row("conv0", "instantiate", 0.002, 0.1), variant="xla")]}]
    assert "| tf (xla) | small | 64 | conv0 |" in "\n".join(layer_timing.table(tf_row))


def test_report_includes_saved_layer_timings(tmp_path):
    records.append(tmp_path / "records.jsonl", rec("jax", "standard", 32, None, 1.0))
    (tmp_path / layer_timing.FILE).write_text(json.dumps(
        [{"model": "small", "batch_size": 64, "status": "ok", "layers": [_row("conv0", "ghost", 0.2, 0.1)]}]))
    text = report.write_report(tmp_path).read_text()
    assert "## fastclip: per-layer method" in text and "ghost ✓" in text


def test_bad_input_writes_nothing(tmp_path, capsys):
    assert layer_timing.main([str(tmp_path), "--batch-sizes", "0"]) == 2
    assert layer_timing.main([str(tmp_path / "missing")]) == 2
    assert layer_timing.main([str(tmp_path), "--models", "huge"]) == 2
    assert layer_timing.main([str(tmp_path), "--frameworks", "mxnet"]) == 2  # no such port
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.count("error:") == 4


def test_medians_interleave_rounds_and_sync_every_call():
    calls, synced = [], []
    fns = {"a": lambda: calls.append("a") or "A", "b": lambda: calls.append("b") or "B"}
    out = layer_timing.medians(fns, 3, synced.append)
    assert calls == ["a", "b"] * 4  # one untimed call each, then 3 interleaved rounds
    assert synced == ["A", "B"] * 4 and set(out) == {"a", "b"} and min(out.values()) >= 0
