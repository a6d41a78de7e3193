"""report.md / report.html / plots, built from a real pipeline run on the default tiny model."""
from __future__ import annotations

import base64
import copy
import io
import json
import re
from html.parser import HTMLParser

import pytest

import compiler.driver.app
from reports import plots
from reports.html import render_html
from reports.markdown import class_breakdown, fmt_time, op_groups, render_markdown

PHASES = ("prefill", "decode")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One pipeline run: (report dict as returned, report.json reloaded, output dir)."""
    from hydra import compose, initialize_config_dir
    from compiler.driver.pipeline import run as pipeline_run
    out = tmp_path_factory.mktemp("report")
    with initialize_config_dir(config_dir=str(compiler.driver.app.config_dir()), version_base=None):
        cfg = compose("config", overrides=["emit.enabled=false", "report.html=true", "slo.ttft_ms=100",
                                           "workload.batch=2"])
    report = pipeline_run(cfg, str(out), show_progress=False)
    with open(out / "report.json", encoding="utf-8") as f:
        loaded = json.load(f)
    return report, loaded, out


@pytest.fixture(scope="module")
def rendered(run):
    """The figures rendered once more, in this process (PNG bytes by name)."""
    return plots.render_all(run[1])


def _pngs_in(page: str) -> dict[str, bytes]:
    return {m.group(1): base64.b64decode(m.group(2))
            for m in re.finditer(r'<figure id="plot-([a-z_]+)"><img [^>]*src="data:image/png;base64,([^"]+)"', page)}


def _expected_time(v: float) -> str:
    """4 significant digits in s / ms / µs, written independently of reports.markdown.fmt_time."""
    for scale, unit in ((1, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if v >= scale:
            return f"{v / scale:.4g} {unit}"
    return f"{v * 1e9:.4g} ns"


# ---------------------------------------------------------------------------------------------
# Markdown


def test_markdown_headline_numbers_come_from_the_json(run):
    _, r, out = run
    md = (out / "report.md").read_text(encoding="utf-8")
    lat = r["latency"]
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        assert f"**{label}**: {_expected_time(lat[key])}" in md
    assert f"**End-to-end**: {fmt_time(lat['e2e_s'])}" in md
    assert f"{r['latency']['throughput_tok_s']:,.0f} tok/s" in md or f"{r['latency']['throughput_tok_s']:.4g} tok/s" in md
    cap = r["capacity"]
    assert f"max batch {'≥ ' if cap['limited_by'] == 'search range' else ''}{cap['max_batch']} sequences" in md
    assert "max_batch_slo" in cap and f"under the SLO (TTFT ≤ 100 ms): max batch {cap['max_batch_slo']}" in md
    assert r["hardware"]["efficiency_source"] in md
    assert "not emitted — emit.enabled=false" in md
    for p in r["passes"]:
        assert f"| {p['name']} |" in md
    for phase in PHASES:
        assert f"## {phase.capitalize()} (B=2, S=" in md
    assert "How to read the roofline" in md
    assert "http" not in md


def test_markdown_top_ops_and_class_tables_match_the_ops(run):
    _, r, out = run
    md = (out / "report.md").read_text(encoding="utf-8")
    for phase in PHASES:
        ph = r["phases"][phase]
        groups = op_groups(r, phase)
        assert sum(g["count"] for g in groups) == len(ph["ops"])
        assert sum(g["total_time_s"] for g in groups) == pytest.approx(ph["time_s"], rel=1e-9)
        # every op of a group has the same cost, and the biggest group leads the table
        by_name = {o["name"]: o for o in ph["ops"]}
        for g in groups:
            assert {(by_name[n]["flops"], by_name[n]["bytes"], by_name[n]["time_s"]) for n in g["names"]} == \
                {(g["flops"], g["bytes"], g["time_s"])}
        top = groups[0]
        assert f"| 1 | {top['op']} | {top['count']} |" in md
        # the class table agrees with the JSON's own per-class sums
        classes = {c["class"]: c["time_s"] for c in class_breakdown(r, phase)}
        assert classes == pytest.approx(ph["time_by_class_s"], rel=1e-9)
        for c, t in ph["time_by_class_s"].items():
            assert f"| {c} | " in md and fmt_time(t) in md


def test_files_on_disk_are_the_renderings_of_report_json(run, rendered):
    """What the pipeline wrote equals rendering report.json as read back: the renderers see only
    the JSON contract, and rendering is deterministic (same input -> same bytes)."""
    report, r, out = run
    md = render_markdown(r)
    assert md == render_markdown(r) == render_markdown(report)
    assert (out / "report.md").read_text(encoding="utf-8") == md
    assert (out / "report.html").read_text(encoding="utf-8") == render_html(r, plots=rendered)


# ---------------------------------------------------------------------------------------------
# HTML


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_self_contained_with_its_plots(run):
    """The four figures every report has, plus the per-layer one of a decoder with layers, each an
    inline PNG (no fetches, no scripts) whose size matches its tag."""
    _, r, out = run
    page = (out / "report.html").read_text(encoding="utf-8")
    p = _Collect()
    p.feed(page)
    for tag, attrs in p.tags:
        for k in ("src", "href"):
            v = attrs.get(k)
            assert v is None or v.startswith("data:image/png;base64,") or v.startswith("#"), (tag, k, v[:60])
        assert tag not in ("script", "link", "iframe", "object")
    assert not re.search(r"(src|href)\s*=\s*['\"]?\s*(https?:)?//", page)
    assert "url(" not in page  # no CSS fetches
    imgs = [a for t, a in p.tags if t == "img"]
    assert len(plots.PLOTS) == 4
    assert any(ph.get("layers") for ph in r["phases"].values())   # the default model: a decoder's layers
    assert len(imgs) == len(plots.PLOTS) + 1 == page.count("data:image/png;base64,") == 5
    ids = [a["id"] for t, a in p.tags if t == "figure"]
    assert ids == [f"plot-{n}" for n in ("memory", "throughput_vs_batch", "roofline", "time_by_class", "layers")]
    import matplotlib.image
    for a in imgs:
        png = base64.b64decode(a["src"].split(",", 1)[1])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
        assert img.shape[:2] == (int(a["height"]), int(a["width"]))
    # the same numbers as the Markdown
    assert f"<dt>TTFT</dt><dd>{_expected_time(r['latency']['ttft_s'])}" in page
    assert r["model"]["name"] in page and r["hardware"]["name"] in page


def test_png_bytes_are_deterministic(run, rendered):
    """The PNGs the pipeline embedded equal the ones rendered again here, byte for byte."""
    _, _, out = run
    embedded = _pngs_in((out / "report.html").read_text(encoding="utf-8"))
    assert sorted(embedded) == sorted(rendered) == sorted(plots.PLOTS + ("layers",))
    for name in rendered:
        assert embedded[name] == rendered[name], name
        assert b"Software" not in rendered[name]  # no matplotlib version stamp


# ---------------------------------------------------------------------------------------------
# plots read as data


def test_roofline_points_are_the_ops(run):
    _, r, _ = run
    fig = plots.fig_roofline(r)
    for phase in PHASES:
        ops = r["phases"][phase]["ops"]
        pts = plots.roofline_points(r, phase)
        with_flops = [o for o in ops if o["flops"]]
        assert sum(p["count"] for p in pts) == len(with_flops)
        shares = sum(p["share"] for p in pts) + sum(o["time_s"] for o in ops if not o["flops"]) / r["phases"][phase]["time_s"]
        assert shares == pytest.approx(1.0, rel=1e-9)
        coll = [c for ax in fig.axes for c in ax.collections if c.get_gid() == f"roofline-points-{phase}"]
        assert len(coll) == 1
        xy = coll[0].get_offsets()
        assert len(xy) == len(pts)
        # every plotted point sits where (one of) its ops is: intensity, attainable FLOP/s
        by_name = {o["name"]: o for o in ops}
        for (x, y), p in zip(xy, pts):
            first = by_name[p["groups"][0]["names"][0]]
            assert (x, y) == pytest.approx((first["intensity"], first["attainable_flops"]), rel=1e-9)
        # and no point is above the roof of its dtype
        bw = r["hardware"]["memory_bandwidth"]
        for p in pts:
            peak = r["hardware"]["peak_flops"][p["dtype"]]
            assert p["attainable_flops"] <= min(peak, p["intensity"] * bw) * (1 + 1e-9)


def test_memory_and_batch_plots_show_the_report_values(run):
    _, r, _ = run
    mem, cap = r["memory"], r["capacity"]
    fig = plots.fig_memory(r)
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches[:4]]  # weights, KV, activations, reserve (GB)
    parts = [mem[k] for k in ("weights_bytes", "kv_cache_bytes", "activation_peak_bytes", "runtime_reserve_bytes")]
    assert widths == pytest.approx([v / 1e9 for v in parts], rel=1e-9)
    assert sum(widths) == pytest.approx(mem["total_bytes"] / 1e9, rel=1e-9)
    assert any(line.get_xdata()[0] == pytest.approx(mem["capacity_bytes"] / 1e9) for line in ax.lines)

    fig = plots.fig_throughput_vs_batch(r)
    tpot_ax, thr_ax = fig.axes[:2]
    sweep = r["throughput_vs_batch"]
    for ax, key, scale in ((tpot_ax, "tpot_s", 1e3), (thr_ax, "throughput_tok_s", 1.0)):
        curve = ax.lines[0]
        assert list(curve.get_xdata()) == [s["batch"] for s in sweep]
        assert list(curve.get_ydata()) == pytest.approx([s[key] * scale for s in sweep])
        marks = {line.get_label(): line.get_xdata()[0] for line in ax.lines if line.get_label().startswith("max batch")}
        assert marks[f"max batch {'≥ ' if cap['limited_by'] == 'search range' else ''}{cap['max_batch']} ({cap['limited_by']})"] == cap["max_batch"]
        assert marks[f"max batch under SLO {cap['max_batch_slo']}"] == cap["max_batch_slo"]


def test_time_by_class_bars_sum_to_phase_time(run):
    _, r, _ = run
    fig = plots.fig_time_by_class(r)
    for ax, phase in zip(fig.axes, PHASES):
        ph = r["phases"][phase]
        scale = 1e3 if 1e-3 <= ph["time_s"] < 1 else (1.0 if ph["time_s"] >= 1 else 1e6)
        assert sum(p.get_width() for p in ax.patches) / scale == pytest.approx(ph["time_s"], rel=1e-9)


def test_a_model_that_does_not_fit_still_renders(run):
    """Weights beyond capacity (llama2_70b on one A100): max batch 0, nothing in the sweep fits."""
    _, r, _ = run
    r = copy.deepcopy(r)
    r["memory"]["weights_bytes"] = 1.4e11
    r["memory"]["total_bytes"] = sum(r["memory"][k] for k in ("weights_bytes", "kv_cache_bytes",
                                                                 "activation_peak_bytes", "runtime_reserve_bytes"))
    r["capacity"].update(max_batch=0, limited_by="memory", max_batch_slo=0)
    for s in r["throughput_vs_batch"]:
        s["fits"] = False
    md = render_markdown(r)
    assert "does not fit even at batch 1" in md and "— does not fit" in md
    for name in ("memory", "throughput_vs_batch"):
        assert plots.render(r, name)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quant_run(tmp_path_factory):
    """gpt2_tiny with quant=w4a16 and sparsity=nm on cpu_2vcpu (2:4 refused there), accuracy on 3 samples."""
    from hydra import compose, initialize_config_dir
    from compiler.driver.pipeline import run as pipeline_run
    out = tmp_path_factory.mktemp("quant_report")
    with initialize_config_dir(config_dir=str(compiler.driver.app.config_dir()), version_base=None):
        cfg = compose("config", overrides=["model=gpt2_tiny", "hardware=cpu_2vcpu", "quant=w4a16", "sparsity=nm",
                                           "accuracy.samples=3", "report.html=true", "workload.batch=2"])
    pipeline_run(cfg, str(out), show_progress=False)
    with open(out / "report.json", encoding="utf-8") as f:
        return json.load(f), out


def test_compression_section_and_plot_show_the_report_values(quant_run):
    from compiler.perf import kernel_families as kf
    from reports.compression import ratio_at
    r, out = quant_run
    c = r["compression"]
    (k,) = c["kernels"]
    assert k["kernel"].startswith("onnxruntime MatMulNBits 4-bit") and k["ratio_vs_dense"]["dense"] == "dense_fp32"
    md = (out / "report.md").read_text(encoding="utf-8")
    sec = md.split("## Compression", 1)[1].split("\n## ", 1)[0]
    assert k["kernel"] in sec and f"{c['sparsity']['pruned']} layers pruned, {c['sparsity']['refused']} refused" in sec
    assert "no 2:4 sparse kernel" in sec
    a = r["accuracy"]
    assert a["measured"] and f"{a['metric']} {a['value']:.4g}" in sec and f"{a['samples']} samples" in sec
    for g in r["weight_formats"]:
        if g["format"].get("bits") == 4:
            assert f"| {g['group']} | uint4, groups of 128, zero point | {g['count']} |" in sec
    # the figure: the measured curve as stored, and the workload's rows at the cost model's own ratio
    fig = plots.fig_compression(r)
    ax = fig.axes[0]
    curve = ax.lines[0]
    assert [[int(x), y] for x, y in zip(curve.get_xdata(), curve.get_ydata())] == k["ratio_vs_dense"]["points"]
    marks = {(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.lines if line.get_marker() == "D"}
    rows = {"decode": r["workload"]["batch"], "prefill": r["workload"]["batch"] * r["workload"]["prompt_len"]}
    for m in rows.values():
        y = ratio_at(k["ratio_vs_dense"]["points"], m)
        assert any(x == m and v == pytest.approx(y) for x, v in marks)
        assert y == pytest.approx(float(kf.ratio(k["kernel"], m)), rel=1e-3)
        assert f"(M = {m}) {y:.3g}×" in sec
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "compression" in _pngs_in(page)
