"""``diffzoo demo``: the whole product on real data that ships offline, in about five minutes on a CPU.

Train a small class-conditional U-Net on scikit-learn's 8x8 handwritten digits, export a verified
bundle, sample every digit with classifier-free guidance (and unconditionally, through the null
class) with onnxruntime (CUDA when present), check parity of guided sampling against eager torch,
measure quality with the project's digit classifier against the real held-out digits and Gaussian
noise (with the conditional accuracy), and write a picture with one row per digit beside real
digits of that class (scaled up so a person can see them), a PPM and a summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from zoo.files import check_output_dir, clean_leftovers, output_lock, staged_dir, unknown_entries

__all__ = ["DemoConfig", "FAST", "run_demo", "format_summary", "register", "run"]

log = logging.getLogger(__name__)

MARKER = "demo.json"
_ENTRIES = {MARKER, "run", "bundle", "samples.png", "sample.ppm"}  # everything a demo directory holds


def _not_a_demo(out: Path) -> str | None:
    """Why ``out`` is not a demo directory (``run_demo`` replaces nothing else), or None."""
    if not (out / MARKER).is_file():
        return f"no {MARKER}"
    return unknown_entries(out, _ENTRIES)


@dataclass(frozen=True)
class DemoConfig:
    data: str = "digits"  # real handwritten digits, shipped inside scikit-learn
    size: int = 8
    model: str = "unet"
    hidden: int = 32
    train_steps: int = 3000  # docs/QUALITY.md: at 1,200 the guided targets are met but the null class's are not
    conditional: bool = True  # class-conditional (the null class still samples unconditionally)
    cond_drop: float = 0.1  # share of training labels replaced by the null class
    guidance: float = 1.5  # the recommended w: every class recognised every time (docs/QUALITY.md, the digits' tables)
    batch: int = 128
    lr: float = 2e-3
    ema_decay: float = 0.995
    schedule: str = "cosine"
    sample_steps: int = 50
    eta: float = 1.0  # stochastic DDIM: on this model clearly better than eta 0 at 50 steps (docs/QUALITY.md)
    eval_n: int = 360  # as many samples as there are held-out digits (the Frechet distance is biased by set size)
    per_class: int = 8  # samples of each class in the picture, beside as many real held-out digits of it
    parity_batch: int = 4
    classifier_steps: int = 1500
    seed: int = 0
    formats: tuple[str, ...] = ("onnx", "torchscript")  # what the bundle holds (export_bundle's formats)
    solvers: tuple[str, ...] = ("ddim", "dpmpp_2m")  # the samplers it holds graphs for


# For tests and a quick look: every stage runs (the bundle holds ONNX DDIM graphs only), nothing is trained to quality.
FAST = DemoConfig(hidden=8, train_steps=30, batch=16, sample_steps=5, eval_n=32, per_class=2, parity_batch=2,
                  classifier_steps=50, formats=("onnx",), solvers=("ddim",))


def run_demo(
    out_dir: str | os.PathLike = "diffzoo-demo",
    cfg: DemoConfig = DemoConfig(),
    provider: str = "auto",
    progress: bool = True,
    say: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Run every stage into ``out_dir`` (replacing an earlier demo there) and return the summary.

    Every option is checked before training starts: the output directory and the provider
    (``provider="cuda"`` without a usable CUDA provider fails at once, with the reason). A second
    demo into the same directory while one runs is refused (``zoo.files.OutputBusyError``).
    """
    from runtime.providers import resolve_provider

    out = Path(out_dir)
    _check_out(out)
    resolve_provider(provider, strict=provider == "cuda")  # before any work: a bad provider fails in seconds
    with output_lock(out):
        clean_leftovers(out)  # what an interrupted demo left beside it
        _check_out(out)  # again, now that no other demo can change it
        with staged_dir(out) as tmp:
            summary: dict[str, Any] = {"config": asdict(cfg)}
            checkpoint = _train(tmp, cfg, summary, progress, say)
            _export(tmp, cfg, checkpoint, summary, progress, say)
            images = _sample(tmp, cfg, provider, summary, progress, say)
            _parity(tmp, cfg, provider, summary, say)
            _quality(cfg, images, summary, progress, say)
            from zoo.training.runs import CHECKPOINT_WEIGHTS

            summary["files"] = {k: str(out / v) for k, v in
                                {"picture": "samples.png", "ppm": "sample.ppm", "bundle": "bundle",
                                 "checkpoint": f"run/last/{CHECKPOINT_WEIGHTS}", "run": "run"}.items()}
            (tmp / MARKER).write_text(json.dumps(summary, indent=2) + "\n")
        # the run's `last` symlink is relative, so it survives the rename
    return summary


def _check_out(out: Path) -> None:
    check_output_dir(out, "a diffzoo demo directory", _not_a_demo)
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"the parent directory of {str(out)!r} does not exist")


def _train(tmp: Path, cfg: DemoConfig, summary: dict, progress: bool, say) -> Path:
    from zoo.training.train import TrainConfig, train

    say(f"1/5 training a {cfg.model} (hidden={cfg.hidden}) on the {cfg.data} ({cfg.size}x{cfg.size}), "
        f"{cfg.train_steps} steps of {cfg.batch}")
    tcfg = TrainConfig(model=cfg.model, model_config={"hidden": cfg.hidden}, data=cfg.data, size=cfg.size,
                       steps=cfg.train_steps, batch=cfg.batch, lr=cfg.lr, ema_decay=cfg.ema_decay,
                       schedule=cfg.schedule, seed=cfg.seed, checkpoint_every=cfg.train_steps,
                       conditional=cfg.conditional, cond_drop=cfg.cond_drop)
    r = train(tcfg, tmp / "run", progress=progress)
    summary["train"] = {"first_loss": r.losses[0][1], "final_loss": r.losses[-1][1], "seconds": round(r.seconds, 1),
                        "images_per_s": round(r.images_per_second, 1)}
    return r.checkpoint


def _export(tmp: Path, cfg: DemoConfig, checkpoint: Path, summary: dict, progress: bool, say) -> None:
    import export
    from zoo.weights import class_names, load_weights

    say(f"2/5 exporting a verified bundle ({' + '.join(cfg.formats)}; {', '.join(cfg.solvers)})")
    model, schedule, meta = load_weights(checkpoint)
    t0 = time.perf_counter()
    bundle = export.export_bundle(model, tmp / "bundle", schedule=schedule, example_shape=tuple(meta["data"]["shape"]),
                                  seed=cfg.seed, progress=progress, data_source=cfg.data, formats=cfg.formats,
                                  solvers=cfg.solvers, class_names=class_names(meta))
    summary["export"] = {"seconds": round(time.perf_counter() - t0, 1),
                         "max_abs_diff": max(c["max_abs_diff"] for c in bundle.checks)}


def _sample(tmp: Path, cfg: DemoConfig, provider: str, summary: dict, progress: bool, say) -> dict[str, np.ndarray]:
    """``eval_n`` images (every class in turn at the recommended guidance, and the null class) and the picture."""
    import runtime
    from runtime.apps.evaluate import every_class

    say("3/5 sampling with onnxruntime" + (f": every class at guidance {cfg.guidance}, and unconditionally" if cfg.conditional else ""))
    sampler = runtime.load(tmp / "bundle", provider=provider)
    sampler.sample(1, num_steps=2)  # warm-up: session creation is not sampling throughput
    kw = dict(num_steps=cfg.sample_steps, eta=cfg.eta, seed=cfg.seed, mode="loop", progress=progress)
    out = {}
    t0 = time.perf_counter()
    if cfg.conditional:  # timed: what the demo is for
        out["labels"] = every_class(sampler.manifest, cfg.eval_n)
        out["guided"] = sampler.sample(cfg.eval_n, labels=out["labels"], guidance=cfg.guidance, **kw)
    else:
        out["null"] = sampler.sample(cfg.eval_n, **kw)
    dt = time.perf_counter() - t0
    if cfg.conditional:
        out["null"] = sampler.sample(cfg.eval_n, **kw)  # the same model's null class: unconditional
    _picture(tmp, cfg, out, sampler.manifest)
    from zoo.images import write_ppm

    write_ppm(tmp / "sample.ppm", out.get("guided", out["null"])[:1])
    summary["sample"] = {"provider": sampler.providers[0], "images": cfg.eval_n, "steps": cfg.sample_steps, "eta": cfg.eta,
                         "seconds": round(dt, 2), "images_per_s": round(cfg.eval_n / dt, 1), "mode": "loop",
                         "guidance": cfg.guidance if cfg.conditional else None}
    return out


def _picture(tmp: Path, cfg: DemoConfig, out: dict[str, np.ndarray], manifest: dict) -> None:
    """A row per class: samples asked for it | real held-out digits of it (unconditional: samples | real digits)."""
    from zoo.images import save_labelled_rows, save_side_by_side
    from zoo.training.data import open_dataset

    held = open_dataset(cfg.data, cfg.size, train=False, seed=cfg.seed)
    scale = max(1, 64 // cfg.size)
    if not cfg.conditional:
        n = min(cfg.per_class * 8, len(held))
        spread = (np.arange(n) * 7) % len(held)  # not only the first few classes
        save_side_by_side(tmp / "samples.png", [out["null"][:n], held.batch(spread.tolist()).numpy()], scale=scale)
        return
    names, k = manifest["classes"]["names"], manifest["classes"]["count"]
    rows, real = [], []
    for c in range(k):
        mine = np.flatnonzero(out["labels"] == c)[: cfg.per_class]
        theirs = np.flatnonzero(held.labels == c)[: cfg.per_class]
        if len(mine) < cfg.per_class or len(theirs) < cfg.per_class:
            raise ValueError(f"class {names[c]!r} has {len(mine)} samples and {len(theirs)} held-out images; the picture "
                             f"needs {cfg.per_class} of each: raise eval_n")
        rows.append(out["guided"][mine])
        real.append(held.batch(theirs.tolist()).numpy())
    save_labelled_rows(tmp / "samples.png", np.concatenate(rows), names, scale=scale, beside=np.concatenate(real))


def _parity(tmp: Path, cfg: DemoConfig, provider: str, summary: dict, say) -> None:
    import runtime

    say("4/5 parity against eager torch" + (f" (every class in turn, guidance {cfg.guidance})" if cfg.conditional else ""))
    cond = {}
    if cfg.conditional:
        from export.format.manifest import load_manifest
        from runtime.apps.evaluate import every_class

        cond = {"labels": every_class(load_manifest(tmp / "bundle", verify=False), cfg.parity_batch), "guidance": cfg.guidance}
    rep = runtime.parity(tmp / "bundle", provider=provider, num_steps=cfg.sample_steps, eta=cfg.eta, batch=cfg.parity_batch,
                         seed=cfg.seed, **cond)
    summary["parity"] = {m.mode: {"final_max_abs_diff": m.final_max, "atol": m.atol, "passed": m.passed} for m in rep.modes}
    summary["parity_passed"] = rep.passed


def _quality(cfg: DemoConfig, images: dict[str, np.ndarray], summary: dict, progress: bool, say) -> None:
    from zoo.training.metrics import quality_report, reference_classifier

    say(f"5/5 quality: the project's {cfg.data} classifier on {cfg.eval_n} samples vs real held-out images and noise")
    clf = reference_classifier(cfg.data, cfg.size, seed=cfg.seed, steps=cfg.classifier_steps, progress=progress)
    q = quality_report(images["null"], cfg.data, classifier=clf, seed=cfg.seed)
    summary["quality"] = q.to_dict()
    summary["quality_text"] = q.format()
    if cfg.conditional:
        g = quality_report(images["guided"], cfg.data, classifier=clf, seed=cfg.seed, labels=images["labels"])
        summary["guided"] = g.to_dict()  # its targets: the report's own, the conditional ones among them
        summary["guided_text"] = g.format()


def format_summary(s: dict[str, Any]) -> str:
    t, q, smp = s["train"], s["quality"], s["sample"]
    guided = f" at guidance {smp['guidance']}" if smp.get("guidance") is not None else ""
    rows = [
        ("training loss", f"{t['first_loss']:.4f} -> {t['final_loss']:.4f} ({t['seconds']} s, {t['images_per_s']:.0f} img/s)"),
        ("export", f"{s['export']['seconds']} s, every artifact verified (max |diff| {s['export']['max_abs_diff']:.1e})"),
        ("sampling", f"{smp['images']} images x {smp['steps']} DDIM steps, eta {smp['eta']}{guided} on {smp['provider']} "
                     f"({smp['mode']} mode): "
                     f"{smp['images_per_s']:.1f} img/s"),
        ("parity vs eager", ", ".join(f"{m} {p['final_max_abs_diff']:.1e} <= {p['atol']:.1e} {'ok' if p['passed'] else 'FAIL'}"
                                      for m, p in s["parity"].items())),
    ]
    w = max(len(k) for k, _ in rows)
    lines = [f"{k:<{w}}  {v}" for k, v in rows]
    yes = {True: "MET", False: "NOT MET"}
    if "guided" in s:
        g = s["guided"]
        lines += ["", f"every class, asked for by label{guided}:", s["guided_text"], "",
                  f"quality target, guided (each class recognised as asked like real data, every class, Frechet distance "
                  f"<= 3x real): {yes[g['met']]} ({g['conditional_accuracy']:.3f}, worst "
                  f"{min(g['conditional_accuracy_per_class']):.3f}, {g['fd_ratio']:.2f}x)"]
    lines += ["", "unconditional (the null class):" if "guided" in s else "samples:", s["quality_text"], "",
              f"quality target (recognised like real data, every class, Frechet distance <= 3x real): {yes[q['met']]}",
              f"picture: {s['files']['picture']} ("
              + ("a row per class: samples asked for it | real held-out digits of it)" if "guided" in s
                 else f"left: samples, right: real held-out {s['config']['data']})"),
              f"bundle:  {s['files']['bundle']}"]
    return "\n".join(lines)


def register(sub) -> None:
    from runtime.providers import PROVIDERS

    p = sub.add_parser("demo", help="train, export, sample, check parity and quality: the whole product in minutes")
    p.add_argument("--out", default="diffzoo-demo",
                   help="output directory (default ./diffzoo-demo; an earlier demo there is replaced)")
    p.add_argument("--provider", choices=PROVIDERS, default="auto", help="auto (default): CUDA if it loads, else CPU")
    p.add_argument("--fast", action="store_true", help="tiny sizes: every stage runs in seconds, nothing is trained to quality")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = FAST if args.fast else DemoConfig()
    summary = run_demo(args.out, cfg, provider=args.provider, progress=True, say=print)
    print()
    print(format_summary(summary))
    return 0 if summary["parity_passed"] else 1
