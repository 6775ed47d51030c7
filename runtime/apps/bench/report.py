"""What a bench run says: its table (``format_results``), the sweeps, and the ratios docs/BENCHMARKS.md states targets in.

Figures only from one run's results (``speed.run_bench``): nothing here measures or asserts.
"""

from __future__ import annotations

from typing import Any

from runtime.apps.bench.backends import INT8_BACKENDS, UNGUIDED, UNGUIDED_TWINS
from runtime.apps.bench.harness import has_bf16, int8_ceiling
from runtime.apps.bench.speed import SWEEPS

__all__ = ["format_results", "format_sweeps", "key_ratios"]


def format_results(res: dict[str, Any]) -> str:
    c, m = res["config"], res["machine"]
    lines = [
        f"{c['model']} hidden={c['hidden']}, {c['size']}x{c['size']}, batch {c['batch']}, {c['steps']} {c.get('solver', 'ddim')} steps, fp32, "
        f"{c['threads']} threads, median of {c['repeats']} after a warm-up"
        + (f"; class-conditional: every class in turn at guidance {res['guidance']:g} (-unguided: the same network "
           "without classes)" if "guidance" in res else ""),
        f"machine: {m['cpu']} ({m['cores']} cores), torch {m['torch']}, onnxruntime {m['onnxruntime']}"
        + (f", GPU {m['gpu']}" if m["gpu"] else ""),
        f"fp32 matmul rate (best of torch/numpy 2048^3, same run): {res['matmul_gflops']:.1f} GFLOP/s before, "
        f"{res.get('matmul_gflops_after', float('nan')):.1f} after the timings; model: "
        f"{res['flops_per_image_step'] / 1e6:.1f} MFLOP per image per step (direct convolution)",
        "",
        f"timings: {c['repeats']} round-robin repeats over all backends after one warm-up each; "
        "a large before/after gap in the matmul rate means the machine's load changed during the run",
        f"{'backend':<22}{'img/s':>8}{'spread':>15}{'ms/step':>9}{'vs eager':>9}{'GFLOP/s':>9}{'of mm':>7}{'drift':>9}{'RSS MB':>8}",
    ]
    for name, r in res["backends"].items():
        spread = f"{c['batch'] / r['max_s']:.1f}-{c['batch'] / r['min_s']:.1f}"
        drift = f"{r['drift_vs_eager']:.1e}" if r["drift_vs_eager"] is not None else "-"
        lines.append(f"{name:<22}{r['images_per_s']:>8.1f}{spread:>15}{r['ms_per_step']:>9.1f}{r['vs_eager']:>8.2f}x"
                     f"{r['gflops']:>9.1f}{r['fraction_of_matmul']:>6.0%}{drift:>9}{r['peak_rss_mb']:>8.0f}")
    reduced = {k: r for k, r in res["backends"].items() if "step_error_rel_rms" in r}
    if reduced:
        lines += ["", "reduced precision against fp32 (per step: worst step of the run, each from the fp32 state; "
                  "final image: compounded over the run)",
                  f"{'backend':<22}{'step rel RMS':>13}{'step max':>10}{'image rel RMS':>14}{'image max':>10}"]
        for name, r in reduced.items():
            lines.append(f"{name:<22}{r['step_error_rel_rms']:>13.2%}{r['step_error_max']:>10.3f}"
                         f"{r['drift_rel_rms']:>14.2%}{r['drift_vs_eager']:>10.3f}")
    secs = res.get("export_seconds", {})
    if secs:
        lines += ["", "export seconds per artifact: " + ", ".join(f"{k} {v:.2f}" for k, v in secs.items())]
    return "\n".join(lines)


def format_sweeps(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'axis':<8}{'value':>6}  {'backend':<12}{'img/s':>9}{'vs eager':>9}{'of mm':>7}{'ns/(pixel*step)':>17}"]
    for r in rows:
        lines.append(f"{r['axis']:<8}{r['value']:>6}  {r['backend']:<12}{r['images_per_s']:>9.1f}{r['vs_eager']:>8.2f}x"
                     f"{r['fraction_of_matmul']:>6.0%}{r['ns_per_pixel_step']:>17.2f}")
    return "\n".join(lines)


def key_ratios(res: dict[str, Any], sweeps: list[dict[str, Any]] | None = None) -> list[tuple[str, str]]:
    """The ratios docs/BENCHMARKS.md states its targets in, as (what, figures): measured here, judged there."""
    b = res["backends"]
    ort_modes = [k for k in ("ort-step", "ort-fused", "ort-loop") if k in b]
    out = []
    if ort_modes:
        fastest = max(ort_modes, key=lambda k: b[k]["images_per_s"])
        out.append(("onnxruntime modes vs eager", ", ".join(f"{k} {b[k]['vs_eager']:.2f}x" for k in ort_modes)))
        if "compile" in b:
            out.append((f"fastest mode vs eager and torch.compile (batch {res['config']['batch']})",
                        f"{fastest} {b[fastest]['images_per_s']:.1f} vs eager {b['eager']['images_per_s']:.1f}, "
                        f"compile {b['compile']['images_per_s']:.1f} img/s"))
        per_step = [k for k in ("ort-step", "ort-fused") if k in b]
        if "ort-loop" in b and per_step:
            best = max(b[k]["images_per_s"] for k in per_step)
            out.append(("loop vs the fastest per-step mode", f"{b['ort-loop']['images_per_s'] / best:.0%}"))
        out.append(("fastest fp32 mode, fraction of the fp32 matmul rate",
                    f"{fastest}: {b[fastest]['gflops']:.0f} GFLOP/s = {b[fastest]['fraction_of_matmul']:.0%} of "
                    f"{res['matmul_gflops']:.0f}"))
        int8 = [k for k in INT8_BACKENDS if k in b]
        if int8:
            best = max(int8, key=lambda k: b[k]["images_per_s"])
            out.append(("int8 vs the fastest fp32 onnxruntime mode",
                        f"{best} {b[best]['images_per_s'] / b[fastest]['images_per_s']:.2f}x {fastest} (per-step error "
                        f"{b[best]['step_error_rel_rms']:.1%}, image drift {b[best]['drift_rel_rms']:.1%} relative RMS); "
                        + int8_ceiling()))
    twins = [k for k in UNGUIDED_TWINS if k in b and k + UNGUIDED in b]
    if twins:
        out.append((f"guided step vs the same network without classes (every class in turn, w={res.get('guidance', 1.0):g})",
                    ", ".join(f"{k} {b[k]['median_s'] / b[k + UNGUIDED]['median_s']:.2f}x the time" for k in twins)))
    if "eager-bf16" in b:
        out.append(("eager bf16 autocast vs eager fp32",
                    f"{b['eager-bf16']['vs_eager']:.2f}x, image drift {b['eager-bf16']['drift_rel_rms']:.1%} relative RMS; "
                    + ("this CPU has bf16 arithmetic" if has_bf16() else
                       "this CPU has no bf16/fp16 arithmetic (no AVX512-BF16/AMX/AVX512-FP16), so autocast emulates it")))
    if "ort-cuda-fused-graph" in b and "eager-cuda" in b:
        out.append(("CUDA fused + IO binding + CUDA graph vs eager CUDA",
                    f"{b['ort-cuda-fused-graph']['images_per_s'] / b['eager-cuda']['images_per_s']:.2f}x"))
    for batch in SWEEPS["batch"] if sweeps else ():
        rows = {r["backend"]: r for r in sweeps if r["axis"] == "batch" and r["value"] == batch}
        modes = [rows[k] for k in ("ort-step", "ort-fused", "ort-loop") if k in rows]
        if modes and "eager" in rows and "compile" in rows:
            out.append((f"fastest mode vs eager and torch.compile at batch {batch}",
                        f"{max(m['images_per_s'] for m in modes):.1f} vs {rows['eager']['images_per_s']:.1f} / "
                        f"{rows['compile']['images_per_s']:.1f} img/s"))
    return out
