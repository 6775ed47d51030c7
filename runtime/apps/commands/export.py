"""``diffzoo export``: a trained run or a fresh model to a verified TorchScript/ONNX bundle."""

from __future__ import annotations

import argparse
import sys
import time

from runtime.apps.commands.common import model_args


def register(sub) -> None:
    from export.format.artifacts import FORMATS
    from zoo.diffusion import EPS_RULES
    from zoo.solvers import SOLVERS

    p = sub.add_parser("export", help="export a model to a verified TorchScript/ONNX bundle")
    model_args(p)
    p.add_argument("--checkpoint", default=None,
                   help="a training run directory or weights .safetensors from `diffzoo train` (instead of --model)")
    p.add_argument("--diffusers", default=None, metavar="DIR",
                   help="a diffusers UNet2DModel folder (save_pretrained's config.json and .safetensors, optional "
                        "scheduler_config.json; or a pipeline folder) instead of --model/--checkpoint")
    p.add_argument("--to-diffusers", action="store_true",
                   help="write a diffusers folder at --out instead of a bundle (UNet2DModel.save_pretrained and a DDIM "
                        "scheduler_config.json): for a diffusers_unet run")
    p.add_argument("--out", required=True, help="bundle directory (absent or empty, unless --force); parents are created")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)} (default all)")
    p.add_argument("--solvers", default=",".join(SOLVERS),
                   help=f"comma-separated samplers to export graphs for, of {','.join(SOLVERS)} (default all)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset, 18..23 (default: export_bundle's, recorded in the manifest)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out after the new one is verified")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init and of the verification inputs")
    p.add_argument("--int8", action="store_true",
                   help="also write int8 variants (inner convolutions quantized, for the CPU provider; see `sample --precision`)")
    p.add_argument("--atol", type=float, default=None,
                   help="override every fp32 artifact's bound on max |diff| (default: derived per artifact from eager "
                        "float32's own error against float64, recorded in the manifest)")
    p.add_argument("--eps-rule", default=None, choices=sorted(EPS_RULES),
                   help="the eps DDIM remixes the clipped x0 with: 'clipped' (re-derived from it; the default for diffzoo's "
                        "models, holds under guidance) or 'model' (the network's own; the default for --diffusers, as "
                        "diffusers' DDIMScheduler computes it); baked into every graph and recorded in the manifest")
    p.add_argument("--class-names", default=None,
                   help="a class-conditional model's class names, comma-separated in index order (default: the run's, "
                        "e.g. the data's own; IDX files have none, so 0, 1, ...): what `sample --class NAME` accepts")
    p.add_argument("--swap-weights", action="store_true",
                   help="put the weights of --checkpoint or --diffusers into the existing bundle at --out instead: the "
                        "same architecture, every graph kept and verified again with the new weights, then swapped in "
                        "atomically")
    p.set_defaults(func=run, model=None)


def load_or_build(args: argparse.Namespace):
    """(model, schedule, example_shape, weights metadata, extra options) from --diffusers, --checkpoint, or a seeded
    random init from --model."""
    import torch

    import zoo

    given = [flag for flag, value in (("--diffusers", args.diffusers), ("--checkpoint", args.checkpoint),
                                      ("--model", args.model)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"{' and '.join(given)} each name a model: give one")
    if args.diffusers:
        from zoo.diffusers_unet import load_pretrained

        p = load_pretrained(args.diffusers)
        shape = p.model.config.sample_shape or (p.model.config.channels, args.size, args.size)
        return p.model, p.schedule, shape, {}, {"clip_range": p.clip_range, "eps_rule": p.eps_rule,
                                                "extra": {"diffusers": p.source}}
    if args.checkpoint:
        from zoo.training.runs import run_weights
        from zoo.weights import load_weights

        model, schedule, meta = load_weights(run_weights(args.checkpoint))
        shape = tuple(meta.get("data", {}).get("shape") or (model.config.channels, args.size, args.size))
        return model, schedule, shape, meta, {}
    torch.manual_seed(args.seed)
    model = zoo.build(args.model or "residual", hidden=args.hidden, channels=args.channels, kernel_size=args.kernel_size)
    schedule = zoo.make_schedule(args.schedule, num_train_timesteps=model.config.num_train_timesteps)
    return model, schedule, (args.channels, args.size, args.size), {}, {}


def run(args: argparse.Namespace) -> int:
    import export

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    solvers = [s.strip() for s in args.solvers.split(",") if s.strip()]
    from zoo.weights import class_names

    if args.swap_weights:
        return _swap(args)
    model, schedule, shape, meta, options = load_or_build(args)
    if args.eps_rule is not None:
        options["eps_rule"] = args.eps_rule
    t0 = time.perf_counter()
    if args.to_diffusers:
        from zoo.diffusers_unet import save_pretrained

        out = save_pretrained(model, schedule, args.out, options.get("clip_range", 1.0), force=args.force)
        print(f"diffusers folder written to {out} ({model.name}, {schedule.name} schedule): "
              f"UNet2DModel.from_pretrained({str(out)!r}) and DDIMScheduler.from_pretrained({str(out)!r}) load it; "
              "DDIMPipeline(...)(use_clipped_model_output=True) samples diffzoo's images (the 'clipped' eps rule, which "
              "a scheduler config cannot record)")
        return 0
    try:
        bundle = export.export_bundle(
            model, args.out, schedule=schedule, example_shape=shape, formats=formats, force=args.force, seed=args.seed,
            progress=True, int8=args.int8, atol=args.atol, data_source=meta.get("data", {}).get("source"), solvers=solvers,
            class_names=tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else class_names(meta),
            **({} if args.opset is None else {"opset": args.opset}), **options,
        )
    except export.ExportVerificationError as e:
        print(f"diffzoo export: error: {e} (nothing was written)", file=sys.stderr)
        return 1
    _print_checks(bundle, shape)
    source = options.get("extra", {}).get("diffusers")
    if source and source["spacing"] is None:
        print(f"the scheduler config's timestep grid ({source['scheduler_class']}, timestep_spacing "
              f"{source['timestep_spacing']!r}) is not one of diffzoo's spacings: diffzoo sample uses --spacing "
              "leading|trailing|linspace; Sampler.sample(timesteps=...) takes any grid")
    elif source and source["spacing"] != "leading":
        print(f"the scheduler config samples with timestep_spacing {source['spacing']!r}: pass --spacing "
              f"{source['spacing']} to diffzoo sample")
    print(f"bundle written to {bundle.path} in {time.perf_counter() - t0:.1f} s")
    return 0


def _swap(args: argparse.Namespace) -> int:
    """``--swap-weights``: new weights into an existing bundle (``export.swap_weights``)."""
    import export

    if args.checkpoint is None and args.diffusers is None:
        raise ValueError("--swap-weights needs the weights to put in: --checkpoint PATH or --diffusers DIR")
    settings = (("--to-diffusers", args.to_diffusers), ("--int8", args.int8), ("--force", args.force),
                ("--atol", args.atol is not None), ("--eps-rule", args.eps_rule is not None),
                ("--opset", args.opset is not None), ("--class-names", args.class_names is not None))
    if given := [flag for flag, on in settings if on]:
        raise ValueError(f"--swap-weights keeps the bundle's graphs and settings: {', '.join(given)} cannot be given with it")
    t0 = time.perf_counter()
    model, schedule, shape, _, options = load_or_build(args)
    manifest = export.load_manifest(args.out)
    for key in ("clip_range", "eps_rule"):  # baked into the bundle's graphs: a folder that says otherwise is another export
        if key in options and options[key] != manifest[key]:
            raise ValueError(f"{args.diffusers!r} samples with {key} {options[key]!r}, and the bundle's graphs bake "
                             f"{manifest[key]!r}: export it instead")
    try:
        bundle = export.swap_weights(args.out, model, schedule, progress=True, source=args.checkpoint or args.diffusers)
    except export.ExportVerificationError as e:
        print(f"diffzoo export: error: {e} (the bundle was left as it was)", file=sys.stderr)
        return 1
    _print_checks(bundle, shape)
    print(f"weights of {args.checkpoint or args.diffusers} swapped into {bundle.path} in {time.perf_counter() - t0:.1f} s")
    return 0


def _print_checks(bundle, shape) -> None:
    m = bundle.manifest
    print(f"exported {m['model']['name']} {m['model']['config']} ({m['schedule']['name']} schedule, data {shape})")
    w = max(len("artifact"), *(len(c["artifact"]) for c in bundle.checks)) + 2  # the longest name, then two spaces
    print(f"{'artifact':<{w}}{'format':<13}{'seconds':>8}  {'max |diff|':>11}  {'bound':>22}  {'fp32 ref err':>12}  verified at")
    for c in bundle.checks:
        sizes = "x".join(str(c["shape"][k]) for k in ("batch", "height", "width"))
        steps = f", {c['shape']['steps']} steps" if "steps" in c["shape"] else ""
        if c["rtol"] is None:
            bound = f"atol {c['atol']:.1e} ({c['atol_source']})"
        else:
            bound = f"rel {c['rel_rms_diff']:.1%} <= {c['rtol']:.0%}"
        ref = f"{c['reference_error']:.1e}" if c.get("reference_error") is not None else "-"
        print(f"{c['artifact']:<{w}}{c['format']:<13}{bundle.seconds[c['artifact']]:>8.2f}  "
              f"{c['max_abs_diff']:>11.2e}  {bound:>22}  {ref:>12}  B x H x W = {sizes}{steps}")
        if c.get("note"):
            print(f"{'':<{w}}note: {c['note']}")
