"""Tests of the hardware library (compiler/perf/hardware.py and conf/hardware/*.yaml)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

import compiler.perf.hardware as hwmod
from compiler.perf.hardware import DTYPES, OP_CLASSES, ClassEfficiency, Efficiency, Hardware, HardwareError, available_hardware, hardware_by_name, hardware_dir, load_hardware, load_hardware_file, normalize_dtype
from compiler.perf.hardware_yaml import efficiency_to_yaml_dict, update_efficiency_yaml, write_hardware_yaml

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {"a10", "a6000", "l4", "l40s", "rtx4090", "a100_40g", "a100_80g", "h100_sxm",
            "h100_pcie", "h200", "b200", "mi300x", "cpu", "snapdragon_8g3"}
NVIDIA_TENSOR = ("a10", "a6000", "l4", "l40s", "rtx4090", "a100_40g", "a100_80g", "h100_sxm",
                 "h100_pcie", "h200", "b200")


def raw(name: str) -> dict:
    """The YAML of one device as plain data (what Hydra would hand over)."""
    return yaml.safe_load((hardware_dir() / f"{name}.yaml").read_text())


@pytest.fixture(scope="module")
def lib() -> dict[str, Hardware]:
    return {n: hardware_by_name(n) for n in available_hardware()}


# ----------------------------------------------------------------------------- library

def test_library_dir_is_the_repo_conf():
    assert hardware_dir() == REPO / "conf" / "hardware"


def test_required_devices_present():
    missing = REQUIRED - set(available_hardware())
    assert not missing, f"missing hardware yaml: {sorted(missing)}"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_yaml_loads(name):
    hw = load_hardware_file(hardware_dir() / f"{name}.yaml")
    assert hw.name == name
    assert hw.peak("fp32") > 0 and hw.memory_bandwidth > 0 and hw.memory_bytes > 0
    assert set(hw.efficiency.classes) == set(OP_CLASSES)
    if hw.kind == "gpu":  # every GPU's block comes from the Hopper calibration (transfer.py)
        assert hw.calibration is not None and hw.calibration.source in ("calibrated", "transferred", "literature")
        assert hw.architecture
    else:
        assert hw.efficiency.source == "uncalibrated default" and hw.calibration is None


def test_every_number_in_yaml_has_a_source_comment():
    # Each numeric leaf under the peaks / memory / onchip / interconnect keys carries a comment.
    for name in sorted(REQUIRED):
        text = (hardware_dir() / f"{name}.yaml").read_text()
        # a calibrated efficiency block cites its measurements in its `source:` line instead
        if "# efficiency: written by" in text:  # generated blocks (efficiency, calibration) follow
            text = text.split("\nefficiency:")[0]
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("#") or ":" not in s or s.startswith(("gemm", "attention", "elementwise",
                                                                     "reduction", "copy")):
                continue
            key, _, rest = s.partition(":")
            value = rest.split("#")[0].strip()
            try:
                float(value)
            except ValueError:
                continue
            if key in ("launch_overhead_us",):
                continue
            assert "#" in rest, f"{name}.yaml: '{key}' has no source comment"


def test_domain_ridge_points(lib):
    assert lib["a10"].ridge_point("fp16") == pytest.approx(208, abs=2)
    assert lib["a100_80g"].ridge_point("fp16") == pytest.approx(153, abs=2)


def test_h100_sxm_numbers(lib):
    h = lib["h100_sxm"]
    assert h.peak("fp16") == pytest.approx(989.4e12)
    assert h.peak("bf16") == pytest.approx(989.4e12)
    assert h.peak("fp16", sparse=True) == pytest.approx(1978.9e12)
    assert h.peak("fp8") == pytest.approx(1978.9e12)
    assert h.peak("tf32") == pytest.approx(494.7e12)
    assert h.peak("fp32") == pytest.approx(66.9e12)
    assert h.memory_bytes == 80 * 2**30
    assert h.memory_bandwidth == pytest.approx(3.35e12, rel=0.01)
    assert h.onchip.l2_bytes == 50 * 2**20
    assert h.onchip.sm_count == 132
    assert h.onchip.smem_per_sm_bytes == 228 * 1024
    assert h.interconnect.bandwidth == pytest.approx(450e9)
    # measured on an H100 inside a CUDA graph (compiler/perf/calibration/data/h100_sxm.json)
    assert h.efficiency.source.startswith("calibrated on h100_sxm+h200 (joint Hopper fit")
    assert h.calibration.source == "calibrated" and "h100_sxm" in h.calibration.from_devices
    assert 0.5e-6 <= h.efficiency.launch_overhead_s <= 5e-6


def test_sparse_at_least_dense_everywhere(lib):
    for name, hw in lib.items():
        for d, sp in hw.sparse_peak_flops.items():
            assert sp >= hw.peak_flops[d], (name, d)


@pytest.mark.parametrize("name", NVIDIA_TENSOR)
def test_nvidia_fp16_sparse_is_twice_dense(lib, name):
    hw = lib[name]
    assert hw.supports("fp16", sparse=True)
    assert hw.peak("fp16", sparse=True) / hw.peak("fp16") == pytest.approx(2.0, rel=0.01)


def test_h200_vs_h100(lib):
    assert lib["h200"].memory_bandwidth > lib["h100_sxm"].memory_bandwidth
    assert lib["h200"].memory_bytes > lib["h100_sxm"].memory_bytes
    assert lib["h200"].peak("fp16") == lib["h100_sxm"].peak("fp16")


def test_a100_variants_differ_only_in_memory(lib):
    a, b = lib["a100_40g"], lib["a100_80g"]
    assert a.peak_flops == b.peak_flops
    assert b.memory_bandwidth == pytest.approx(2.039e12)
    assert a.memory_bandwidth == pytest.approx(1.555e12)


def test_unknown_name_lists_valid_names():
    with pytest.raises(HardwareError) as ei:
        hardware_by_name("h100_sxm5")
    msg = str(ei.value)
    assert "h100_sxm5" in msg
    for n in ("a10", "h100_sxm", "cpu", "snapdragon_8g3"):
        assert n in msg


def test_hardware_error_is_a_config_error_exiting_2():
    from compiler.errors import EXIT_BAD_INPUT, ConfigError
    assert issubclass(HardwareError, ConfigError) and issubclass(HardwareError, ValueError)
    assert HardwareError("x").exit_code == EXIT_BAD_INPUT


def test_path_like_name_is_rejected():
    with pytest.raises(HardwareError):
        hardware_by_name("../hardware/h100_sxm")


# ----------------------------------------------------------------------------- peak() fallback

def test_int4_fallback_on_hopper(lib):
    h = lib["h100_sxm"]
    assert not h.supports("int4")
    assert h.compute_dtype("int4") == "int8"
    assert h.peak("int4") == h.peak("int8")
    assert h.peak("int4", sparse=True) == h.peak("int8", sparse=True)


def test_int4_native_on_ampere(lib):
    a = lib["a100_80g"]
    assert a.compute_dtype("int4") == "int4"
    assert a.peak("int4") == pytest.approx(2 * a.peak("int8"))


def test_other_fallbacks(lib):
    cpu, soc, a10 = lib["cpu"], lib["snapdragon_8g3"], lib["a10"]
    assert cpu.peak("tf32") == cpu.peak("fp32")           # tf32 -> fp32
    assert cpu.peak("fp8") == cpu.peak("fp16")            # fp8 -> fp16
    assert cpu.peak("int4") == cpu.peak("int8")           # int4 -> int8
    assert cpu.peak("bf16", sparse=True) == cpu.peak("bf16")  # no sparse units: dense
    assert a10.compute_dtype("fp8") == "fp16"             # Ampere has no fp8
    assert soc.compute_dtype("int4") == "fp16"            # int4 -> (no int8) -> fp16
    assert soc.compute_dtype("bf16") == "fp32"            # bf16 never computes in fp16


def test_dtype_aliases_and_unknown(lib):
    h = lib["h100_sxm"]
    assert normalize_dtype("float16") == "fp16"
    assert normalize_dtype("torch.bfloat16") == "bf16"
    assert normalize_dtype("float8_e4m3fn") == "fp8"
    assert h.peak("half") == h.peak("fp16")
    with pytest.raises(HardwareError, match="fp64"):
        h.peak("fp64")


def test_attainable_roofline(lib):
    h = lib["a10"]
    assert h.attainable_flops("fp16", 1.0) == pytest.approx(600e9)
    assert h.attainable_flops("fp16", 1e6) == h.peak("fp16")
    ce = h.efficiency.for_class("gemm")
    assert ce.attainable_compute(1.0, ce.flops_half) == pytest.approx(ce.compute / 2)
    assert ce.attainable_bandwidth(1.0, ce.bytes_half) == pytest.approx(ce.memory / 2)
    with pytest.raises(HardwareError):
        h.efficiency.for_class("conv")


# ----------------------------------------------------------------------------- validation

def _err(data) -> str:
    with pytest.raises(HardwareError) as ei:
        load_hardware(data, source="conf/hardware/test.yaml")
    return str(ei.value)


def test_typo_field_rejected():
    d = raw("h100_sxm")
    d["memory_bandwdth_gbs"] = d.pop("memory_bandwidth_gbs")
    msg = _err(d)
    assert "memory_bandwdth_gbs" in msg and "memory_bandwidth_gbs" in msg
    assert "conf/hardware/test.yaml" in msg


def test_nested_typo_rejected():
    d = raw("h100_sxm")
    d["onchip"]["l2_mb"] = d["onchip"].pop("l2_mib")
    assert "onchip.l2_mb" in _err(d)


def test_missing_field_rejected():
    d = raw("h100_sxm")
    del d["interconnect"]["num_devices_per_node"]
    assert "interconnect.num_devices_per_node" in _err(d)


def test_negative_bandwidth_rejected():
    d = raw("h100_sxm")
    d["memory_bandwidth_gbs"] = -3352
    msg = _err(d)
    assert "memory_bandwidth_gbs" in msg and "positive" in msg


def test_efficiency_above_one_rejected():
    d = raw("h100_sxm")
    d["efficiency"]["classes"]["gemm"]["compute"] = 1.5
    msg = _err(d)
    assert "efficiency.classes.gemm.compute" in msg and "(0, 1]" in msg


def test_zero_efficiency_rejected():
    d = raw("h100_sxm")
    d["efficiency"]["classes"]["copy"]["memory"] = 0
    assert "efficiency.classes.copy.memory" in _err(d)


def test_unknown_dtype_rejected():
    d = raw("h100_sxm")
    d["peak_tflops"]["fp6"] = 4500
    msg = _err(d)
    assert "peak_tflops.fp6" in msg and "int4" in msg and "fp4" in msg


def test_unknown_op_class_rejected():
    d = raw("h100_sxm")
    d["efficiency"]["classes"]["gem"] = d["efficiency"]["classes"].pop("gemm")
    msg = _err(d)
    assert "efficiency.classes.gem" in msg and "gemm" in msg


def test_missing_op_class_rejected():
    d = raw("h100_sxm")
    del d["efficiency"]["classes"]["copy"]
    assert "efficiency.classes.copy" in _err(d)


def test_sparse_below_dense_rejected():
    d = raw("h100_sxm")
    d["sparse_peak_tflops"]["fp16"] = 500
    assert "sparse_peak_tflops.fp16" in _err(d)


def test_sparse_more_than_twice_dense_rejected():
    # A dense value halved twice (or a sparse number from a different clock) gives > 2x.
    d = raw("h100_sxm")
    d["peak_tflops"]["fp16"] = 494.7
    d["peak_tflops"]["bf16"] = 494.7
    msg = _err(d)
    assert "sparse_peak_tflops.fp16" in msg and "2x" in msg


def test_narrow_dtype_slower_than_wide_rejected():
    d = raw("h100_sxm")
    d["peak_tflops"]["fp8"] = 500  # below fp16 989.4: typo or mixup
    assert "peak_tflops.fp8" in _err(d)


def test_base_units_in_unit_keyed_field_rejected():
    d = raw("h100_sxm")
    d["peak_tflops"]["fp32"] = 66.9e12  # FLOP/s written into a TFLOP/s key
    msg = _err(d)
    assert "peak_tflops.fp32" in msg and "TFLOP/s" in msg


def test_missing_fp32_rejected():
    d = raw("h100_sxm")
    del d["peak_tflops"]["fp32"]
    assert "peak_tflops.fp32" in _err(d)


def test_bad_number_and_kind_rejected():
    d = raw("h100_sxm")
    d["memory_gib"] = "eighty"
    assert "memory_gib" in _err(d)
    d = raw("h100_sxm")
    d["kind"] = "tpu"
    assert "kind" in _err(d)
    d = raw("h100_sxm")
    d["onchip"]["sm_count"] = 13.5
    assert "onchip.sm_count" in _err(d)


def test_numbers_as_strings_accepted():
    d = raw("h100_sxm")
    d["peak_tflops"]["fp16"] = "989.4"
    d["memory_bandwidth_gbs"] = "3.352e3"
    hw = load_hardware(d)
    assert hw == hardware_by_name("h100_sxm")


def test_interconnect_zero_only_for_single_device():
    d = raw("h100_sxm")
    d["interconnect"]["bandwidth_gbs"] = 0
    assert "interconnect.bandwidth_gbs" in _err(d)
    d["interconnect"]["num_devices_per_node"] = 1
    assert load_hardware(d).interconnect.bandwidth == 0


def test_name_must_match_file_stem(tmp_path):
    d = raw("a10")
    p = tmp_path / "my_a10.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(HardwareError, match="my_a10"):
        load_hardware_file(p)


def test_yaml_syntax_error_is_hardware_error(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: broken\npeak_tflops: {fp32: 1\n")
    with pytest.raises(HardwareError, match="broken.yaml"):
        load_hardware_file(p)


def test_direct_construction_is_validated(lib):
    h = lib["a10"]
    with pytest.raises(HardwareError, match="memory_bandwidth_gbs"):
        dataclasses.replace(h, memory_bandwidth=0.0)
    with pytest.raises(HardwareError, match="compute"):
        dataclasses.replace(h.efficiency, classes={
            **h.efficiency.classes, "gemm": ClassEfficiency(1.5, 0.8, 0.0, 0.0)})


def test_hardware_is_frozen_and_hashable(lib):
    h = lib["h100_sxm"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.memory_bandwidth = 1.0
    with pytest.raises(TypeError):
        h.peak_flops["fp16"] = 1.0
    assert {h: 1}[hardware_by_name("h100_sxm")] == 1


# ----------------------------------------------------------------------------- Hydra / OmegaConf

def test_accepts_dictconfig():
    from omegaconf import OmegaConf
    cfg = OmegaConf.create(raw("l4"))
    assert load_hardware(cfg) == hardware_by_name("l4")


def test_hydra_composes_hardware_group():
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(hardware_dir().parent), version_base="1.3"):
        cfg = compose(config_name=None, overrides=["+hardware=h200"])
    assert load_hardware(cfg.hardware) == hardware_by_name("h200")


# ----------------------------------------------------------------------------- writing

@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_round_trip_write_load(lib, tmp_path, name):
    hw = lib[name]
    p = write_hardware_yaml(hw, tmp_path / f"{name}.yaml")
    assert load_hardware_file(p) == hw


def test_round_trip_arbitrary_floats(lib, tmp_path):
    h = lib["h100_sxm"]
    classes = {c: ClassEfficiency(0.7312345678901234, 0.9012345678901234, 1.23456789e9 / 3,
                                  7.7777777e6 / 7) for c in OP_CLASSES}
    eff = Efficiency("fit: test", 4.321987654321e-6, classes)
    h2 = dataclasses.replace(h, efficiency=eff, memory_bandwidth=3.351234567890123e12)
    back = load_hardware_file(write_hardware_yaml(h2, tmp_path / "h100_sxm.yaml"))
    assert back.efficiency.source == "fit: test"
    assert back.memory_bandwidth == pytest.approx(h2.memory_bandwidth, rel=1e-14)
    for c in OP_CLASSES:
        for f in ("compute", "memory", "flops_half", "bytes_half"):
            assert getattr(back.efficiency.classes[c], f) == pytest.approx(
                getattr(eff.classes[c], f), rel=1e-14)
    # and a second trip is exact
    assert load_hardware_file(write_hardware_yaml(back, tmp_path / "h100_sxm.yaml")) == back


def test_efficiency_to_yaml_dict_units(lib):
    e = efficiency_to_yaml_dict(lib["a100_80g"].efficiency)  # SI inside, YAML units outside
    raw = yaml.safe_load((hardware_dir() / "a100_80g.yaml").read_text())["efficiency"]
    assert 0.5 < e["launch_overhead_us"] < 5  # microseconds, not seconds
    assert e["launch_overhead_us"] == pytest.approx(raw["launch_overhead_us"], rel=1e-12)
    assert set(e["classes"]) == set(OP_CLASSES)
    for c in OP_CLASSES:
        for k in ("compute", "memory", "flops_half_gflop", "bytes_half_mb"):
            assert e["classes"][c][k] == pytest.approx(raw["classes"][c][k], rel=1e-12)


def test_update_efficiency_keeps_comments(tmp_path):
    src = (hardware_dir() / "h100_sxm.yaml").read_text()
    p = tmp_path / "h100_sxm.yaml"
    p.write_text(src)
    before = hardware_by_name("h100_sxm")
    classes = {c: ClassEfficiency(0.71, 0.88, 3e9, 8e6) for c in OP_CLASSES}
    eff = Efficiency("calibrated on H100 SXM (test)", 5.5e-6, classes)
    hw = update_efficiency_yaml(p, eff)
    text = p.read_text()
    assert hw.efficiency == eff
    assert load_hardware_file(p) == dataclasses.replace(before, efficiency=eff)
    assert "H100 Tensor Core GPU Architecture whitepaper v1.04" in text  # comments kept
    assert "uncalibrated default" not in text
    assert text.count("efficiency:") == 1 + text.count("# efficiency:")
    # a second update replaces, not appends
    eff2 = dataclasses.replace(eff, source="second fit")
    update_efficiency_yaml(p, eff2)
    text2 = p.read_text()
    assert "second fit" in text2 and "(test)" not in text2
    assert text2.count("# efficiency: written by") == 1
    assert load_hardware_file(p).efficiency == eff2


def test_update_efficiency_in_the_middle_of_a_file(tmp_path):
    d = raw("a10")
    eff_block = d.pop("efficiency")
    text = "# header\n" + yaml.safe_dump({"efficiency": eff_block}, sort_keys=False)
    text += "# comment of the next key\n" + yaml.safe_dump(d, sort_keys=False)
    p = tmp_path / "a10.yaml"
    p.write_text(text)
    eff = Efficiency("mid", 3e-6, {c: ClassEfficiency(0.5, 0.5, 0.0, 0.0) for c in OP_CLASSES})
    update_efficiency_yaml(p, eff)
    out = p.read_text()
    assert "# comment of the next key" in out and out.startswith("# header")
    assert load_hardware_file(p).efficiency == eff


def test_update_efficiency_refuses_invalid(tmp_path):
    p = tmp_path / "a10.yaml"
    p.write_text((hardware_dir() / "a10.yaml").read_text())
    bad = copy.deepcopy(raw("a10"))
    bad["name"] = "other"
    p2 = tmp_path / "other_name.yaml"
    p2.write_text(yaml.safe_dump(bad))
    eff = hardware_by_name("a10").efficiency
    with pytest.raises(HardwareError):
        update_efficiency_yaml(p2, eff)
    assert yaml.safe_load(p2.read_text())["name"] == "other"  # untouched


# ----------------------------------------------------------------------------- conf location

def test_conf_lookup_prefers_package_conf(tmp_path, monkeypatch):
    pkg = tmp_path / "compiler"
    (pkg / "conf" / "hardware").mkdir(parents=True)
    (tmp_path / "conf" / "hardware").mkdir(parents=True)
    (pkg / "conf" / "hardware" / "inner.yaml").write_text("")
    (tmp_path / "conf" / "hardware" / "outer.yaml").write_text("")
    from compiler import resources
    monkeypatch.setattr(resources, "PACKAGE_DIR", pkg)
    monkeypatch.setattr(resources, "REPO_ROOT", tmp_path)
    assert available_hardware() == ["inner"]
    (pkg / "conf" / "hardware" / "inner.yaml").unlink()
    (pkg / "conf" / "hardware").rmdir()
    assert available_hardware() == ["outer"]


def test_dtypes_constant():
    assert DTYPES == ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4", "fp4")
