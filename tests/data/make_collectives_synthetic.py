"""Regenerate tests/data/collectives_h200_synthetic.json — SYNTHETIC test data, not a measurement.

Times follow latency + bus_factor x bytes / bus_bandwidth with parameters in the range that
nccl-tests reports on 8-GPU NVLink-4 (HGX H100/H200) hosts with NVLink SHARP off: large-message
bus bandwidth 340-370 GB/s for all-reduce and all-gather / reduce-scatter, somewhat less for
all-to-all; small-message latency 6-20 us, growing with the device count, graphs below eager
(published references: NVIDIA/nccl issue #1259, nccl-tests doc/PERFORMANCE.md). On top: 3 %
log-normal noise, a +12 % bump between 64 KiB and 1 MiB (NCCL switching protocol LL128 -> Simple)
and two outliers per series (a 2.5x straggler, a 0.7x timer glitch), which the robust fit must
shrug off. Run: python tests/data/make_collectives_synthetic.py
"""
import json
from pathlib import Path

import numpy as np

TRUE = {  # (collective, n, mode) -> (latency_us, bus_bandwidth_gbs)
    **{("all_reduce", n, "graph"): (lat, bw) for n, lat, bw in ((2, 7.0, 370.0), (4, 9.5, 365.0), (8, 13.0, 360.0))},
    **{("all_gather", n, "graph"): (lat, bw) for n, lat, bw in ((2, 5.5, 365.0), (4, 7.0, 360.0), (8, 9.0, 355.0))},
    **{("reduce_scatter", n, "graph"): (lat, bw) for n, lat, bw in ((2, 6.0, 360.0), (4, 7.5, 355.0), (8, 9.5, 350.0))},
    **{("all_to_all", n, "graph"): (lat, bw) for n, lat, bw in ((2, 8.0, 340.0), (4, 11.0, 320.0), (8, 15.0, 300.0))},
}
TRUE.update({(k, n, "eager"): (lat + 6.0, bw) for (k, n, _), (lat, bw) in list(TRUE.items())})


def bus_factor(kind, n):
    return 2 * (n - 1) / n if kind == "all_reduce" else (n - 1) / n


def main():
    rng = np.random.default_rng(20261202)
    sizes = [4096 * 2 ** i for i in range(19)]          # 4 KiB .. 1 GiB
    rows = []
    for (kind, n, mode), (lat, bw) in sorted(TRUE.items()):
        s = np.array(sizes, dtype=float)
        t = lat * 1e-6 + bus_factor(kind, n) * s / (bw * 1e9)
        t *= np.exp(rng.normal(0, 0.03, len(s)))
        t[(s >= 65536) & (s <= 2 ** 20)] *= 1.12
        i, j = rng.choice(len(s), 2, replace=False)
        t[i] *= 2.5
        t[j] *= 0.7
        for sz, tt in zip(sizes, t):
            rows.append({"op": kind, "world_size": n, "mode": mode, "dtype": "bfloat16", "bytes": sz,
                         "time_s": float(f"{tt:.6g}"),
                         "busbw_gbs": float(f"{bus_factor(kind, n) * sz / tt / 1e9:.5g}")})
    data = {"schema": "rooftop-collectives/1",
            "meta": {"synthetic": True, "device": "SYNTHETIC H200-like (test data, not measured)",
                     "date": "2026-12-02", "backend": "synthetic", "note": __doc__.strip().splitlines()[0]},
            "true_parameters": [{"op": k, "world_size": n, "mode": m, "latency_us": lat, "bus_bandwidth_gbs": bw}
                                for (k, n, m), (lat, bw) in sorted(TRUE.items())],
            "collectives": rows, "layer_stack": []}
    out = Path(__file__).with_name("collectives_h200_synthetic.json")
    out.write_text(json.dumps(data, indent=0) + "\n")
    print(f"wrote {out} ({len(rows)} rows)")


if __name__ == "__main__":
    main()
