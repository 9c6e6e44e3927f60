"""Machine identity parsing (fabricated /proc/cpuinfo and lscpu texts), the canary, and main()."""
import json
import math

from common.harness import machine

XEON_FLAGS = ("fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c hypervisor avx2 avx512f avx512dq "
              "avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8")
XEON_CPUINFO = f"""processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 8
flags\t\t: {XEON_FLAGS}

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: SECOND BLOCK MUST NOT BE READ
flags\t\t: fpu
"""
XEON_LSCPU = f"""Architecture:            x86_64
Vendor ID:               GenuineIntel
Model name:              Intel(R) Xeon(R) Processor
Flags:                   {XEON_FLAGS}
Hypervisor vendor:       KVM
Virtualization type:     full
L1d cache:               96 KiB (2 instances)
L2 cache:                4 MiB (2 instances)
L3 cache:                105 MiB (1 instance)
"""
EPYC_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
stepping\t: 1
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx hypervisor avx2 sha_ni vaes
"""


def test_xeon_with_avx512_and_lscpu():
    ident = machine.identity(cpuinfo=XEON_CPUINFO, lscpu=XEON_LSCPU)
    assert ident["cpu_model"] == "Intel(R) Xeon(R) Processor"
    assert (ident["vendor"], ident["family"], ident["model"], ident["stepping"]) == ("GenuineIntel", "6", "143", "8")
    assert ident["vector_extensions"] == ["amx_bf16", "amx_int8", "amx_tile", "avx", "avx2", "avx512_bf16",
                                          "avx512_vnni", "avx512bw", "avx512f", "avx512vl", "fma", "sse4_2"]
    assert "avx512f" in ident["vector_extensions"]
    assert ident["hypervisor"] == "KVM"
    assert ident["cache"] == {"L2": "4 MiB (2 instances)", "L3": "105 MiB (1 instance)"}
    assert ident["cores"] >= 1 and ident["usable_cpus"] >= 1
    assert set(ident) == set(machine.IDENTITY_KEYS)


def test_epyc_without_avx512_or_lscpu():
    ident = machine.identity(cpuinfo=EPYC_CPUINFO, lscpu=None)
    assert (ident["cpu_model"], ident["vendor"]) == ("AMD EPYC", "AuthenticAMD")
    assert ident["vector_extensions"] == ["avx", "avx2", "fma", "sse4_2"]
    assert "avx512f" not in ident["vector_extensions"]
    assert ident["hypervisor"] == "present"  # from the cpuinfo flag, no lscpu
    assert ident["cache"] is None


def test_missing_or_empty_cpuinfo_gives_none_fields():
    for text in (None, "", "garbage without colons\n\n"):
        ident = machine.identity(cpuinfo=text, lscpu=None)
        assert set(ident) == set(machine.IDENTITY_KEYS)
        for key in ("cpu_model", "vendor", "family", "model", "stepping", "vector_extensions", "hypervisor",
                    "cache"):
            assert ident[key] is None, key


def test_identity_of_this_machine_does_not_raise():
    ident = machine.identity()
    assert set(machine.IDENTITY_KEYS) <= set(ident)


def test_canary_tiny_gives_positive_finite_times():
    res = machine.canary(repeats=2, n=32)
    assert res["repeats"] == 2
    for key in ("gemm_s", "conv_s", "gemm_gflops"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["numpy_threads"] is None or isinstance(res["numpy_threads"], list)


def test_main_keeps_start_phase_when_end_is_written(tmp_path, monkeypatch):
    calls = iter([{"gemm_s": 1.0, "tag": "first"}, {"gemm_s": 2.0, "tag": "second"}])
    monkeypatch.setattr(machine, "canary", lambda: next(calls))  # timing itself is tested above
    out = tmp_path / "machine.json"
    assert machine.main([str(out), "--phase", "start"]) == 0
    assert machine.main([str(out), "--phase", "end"]) == 0
    data = json.loads(out.read_text())
    assert data["canary"] == {"start": {"gemm_s": 1.0, "tag": "first"}, "end": {"gemm_s": 2.0, "tag": "second"}}
    assert set(machine.IDENTITY_KEYS) <= set(data["machine"])
    assert [p.name for p in tmp_path.iterdir()] == ["machine.json"]  # no temp file left behind
