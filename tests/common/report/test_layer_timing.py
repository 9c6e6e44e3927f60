"""The per-layer fastclip table (common/report/layer_timing.py) from saved measurements."""
from __future__ import annotations

import json

import pytest

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


def _vit_record():
    seq = dict(_row("b0_fc1", "ghost", 0.0009, 0.0004), kind="seq_dense", positions=65, fan_in=128, features=256)
    single = [{"layer": "b0_ln0", "kind": "layernorm", "positions": 65, "fan_in": 128, "features": 128,
               "measured_s": {"standard": 0.00012, "fastclip": 0.00034}},
              {"layer": "pos", "kind": "embed", "positions": 65, "fan_in": 65, "features": 128,
               "measured_s": {"standard": 0.0021, "fastclip": 0.0043}}]
    return {"framework": "torch", "model": "vit", "batch_size": 64, "status": "ok", "layers": [seq],
            "single_layers": single}


def test_table_shows_the_vits_token_dense_rows_and_its_one_method_layers():
    text = "\n".join(layer_timing.table([_vit_record()]))
    # the main table, T = tokens; under 1 ms two decimals
    assert "| torch | vit | 64 | b0_fc1 | 65 | 128 | 256 | 8 | 3.0 | 0.90 | **0.40** | ghost ✓ | instantiate |" in text
    assert "Rows of kind seq_dense" in text
    main, single = text.split("### fastclip: layers with one method")
    assert "| Framework | Model | B | Kind | Layer | T | Standard (ms) | fastclip (ms) |" in single
    assert "| torch | vit | 64 | layernorm | b0_ln0 | 65 | 0.12 | 0.34 |" in single
    assert "| torch | vit | 64 | embed | pos | 65 | 2.1 | 4.3 |" in single


def test_a_run_without_vit_rows_renders_as_before():
    """No seq_dense row, no single_layers: no note and no second table; torch's first
    GroupNorm records (gn_layers) stay unrendered, as they always were (the committed
    WRN report: tests/common/report/test_golden.py)."""
    old = {"framework": "torch", "model": "wrn16_4", "batch_size": 64, "status": "ok",
           "layers": [_row("stem", "instantiate", 0.0037, 0.109)],
           "gn_layers": [{"layer": "s0b0_gn0", "positions": 1024, "channels": 16, "groups": 16,
                          "measured_s": {"standard": 0.001, "gn": 0.002}}]}
    text = "\n".join(layer_timing.table([old]))
    assert "seq_dense" not in text and "one method" not in text and "s0b0_gn0" not in text
    assert text.endswith("| **3.7** | 109.0 | instantiate ✓ | instantiate |\n")


def test_cells_pair_each_model_with_its_batch(tmp_path, capsys):
    assert layer_timing.parse_cells("vit:64, vit_p2:32") == [("vit", 64), ("vit_p2", 32)]
    for bad in ("vit", "vit:", ":64", "vit:x"):
        with pytest.raises(ValueError):
            layer_timing.parse_cells(bad)
    assert layer_timing.main([str(tmp_path), "--cells", "vit:sixty"]) == 2
    assert layer_timing.main([str(tmp_path), "--cells", "vit:0"]) == 2
    assert layer_timing.main([str(tmp_path), "--cells", "huge:64"]) == 2
    assert list(tmp_path.iterdir()) == [] and capsys.readouterr().err.count("error:") == 3

