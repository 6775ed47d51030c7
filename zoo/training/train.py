"""The trainer: epsilon-prediction MSE (DDPM eq. 14, "L_simple"), AdamW, gradient clipping and EMA.

Every random draw of step k (batch indices, timesteps, noise) comes from a generator seeded by
(seed, k), so a run stopped at step k and resumed from its checkpoint reproduces the uninterrupted
run exactly, and under ``torchrun`` every rank draws the same global batch and trains on its slice.
Checkpoints are directories written atomically; ``last`` is a symlink swapped atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from zoo.allocator import tune_allocator
from zoo.configs import DenoiserConfig
from zoo.diffusion import make_training_sample
from zoo.files import (
    atomic_write,
    check_output_dir,
    clean_partials,
    output_lock,
    staged_dir,
    write_synced,
)
from zoo.images import save_grid
from zoo.registry import build, parameter_count
from zoo.resources import activation_bytes, check_fits
from zoo.samplers import ddim_sample
from zoo.schedules import make_schedule
from zoo.training import NonFiniteLossError
from zoo.training.config import TrainConfig
from zoo.training.data import open_dataset
from zoo.training.distributed import init_distributed
from zoo.training.runs import CHECKPOINT_STATE, CHECKPOINT_WEIGHTS, load_state, not_a_run
from zoo.validate import first_line
from zoo.weights import save_weights

__all__ = ["TrainConfig", "TrainResult", "train", "lr_at", "weights_digest", "check_replicas"]

log = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2
SAMPLE_IMAGES = 16


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    checkpoint: Path  # the EMA weights of the last checkpoint
    losses: list[tuple[int, float]]  # (step, mean loss over the last log interval), this session
    seconds: float
    images_per_second: float
    world_size: int
    weights_sha256: str  # of the trained (not EMA) weights, the same on every rank (checked)


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA GPU")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(name)




def lr_at(cfg: TrainConfig, step: int) -> float:
    """The learning rate of optimizer step ``step``: a pure function, so resuming needs no scheduler state."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warmup = max(1, cfg.steps // 50)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _ema_avg(decay: float):
    def avg(ema_p: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))  # warm-up: early EMA follows the weights
        return d * ema_p + (1.0 - d) * p

    return avg


def _compatible(saved: Any, cfg: TrainConfig) -> None:
    keys = ("model", "model_config", "size", "data", "schedule", "schedule_params", "batch", "seed", "lr", "lr_schedule",
            "ema_decay", "weight_decay", "grad_clip")
    missing = [k for k in keys if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ValueError(f"--resume: the checkpoint's config lacks {missing}: not a state this diffzoo wrote")
    newer = {"conditional": False, "cond_drop": 0.1}  # fields added later: an older run's state has their defaults
    for key in (*keys, *newer):
        if saved.get(key, newer.get(key)) != getattr(cfg, key):
            raise ValueError(
                f"--resume: the checkpoint has {key}={saved.get(key, newer.get(key))!r} but this run asks for "
                f"{key}={getattr(cfg, key)!r}"
            )


def _write_checkpoint(out: Path, step: int, model: nn.Module, ema: AveragedModel, opt, cfg: TrainConfig, schedule, losses,
                      classes: tuple[str, ...] = ()) -> Path:
    ckpts = out / "checkpoints"
    ckpts.mkdir(exist_ok=True)
    final = ckpts / f"step_{step:07d}"
    try:
        with staged_dir(final) as tmp:
            data = {"shape": [model.config.channels, cfg.size, cfg.size], "range": [-1.0, 1.0], "source": cfg.data,
                    **({"classes": {"names": list(classes), "null": len(classes)}} if classes else {})}
            save_weights(tmp / CHECKPOINT_WEIGHTS, ema.module, schedule, data=data, train={"step": step})
            state = {"step": step, "config": dataclasses.asdict(cfg), "model": model.state_dict(), "ema": ema.state_dict(),
                     "optimizer": opt.state_dict(),
                     "rng": {"scheme": "per-step generator seeded by (seed, step)", "seed": cfg.seed},
                     "losses": [list(x) for x in losses]}
            write_synced(tmp / CHECKPOINT_STATE, lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError of its zip writer
        free = shutil.disk_usage(ckpts).free
        raise OSError(f"cannot write the checkpoint of step {step} into {str(ckpts)!r} ({free:,} bytes free there"
                      f"{': the disk is full' if free < 1 << 20 else ''}): {first_line(e, 200)}") from None
    link = out / f".last.{os.getpid()}"
    link.unlink(missing_ok=True)
    link.symlink_to(final.relative_to(out))
    os.replace(link, out / "last")  # atomic: `last` always names a complete checkpoint
    for old in sorted(ckpts.glob("step_*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def train(
    cfg: TrainConfig, out_dir: str | os.PathLike, resume: bool = False, progress: bool = True, until: int | None = None
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``; checkpoints, logs and sample grids go under ``out_dir``.

    ``until`` stops this session after that step (with a checkpoint there), as an interruption
    would; ``resume=True`` later continues the same run to ``cfg.steps`` exactly.

    Under ``torchrun`` (WORLD_SIZE > 1) this is data-parallel (DDP; gloo on CPU, nccl on GPU):
    only rank 0 writes files. Raises ValueError/FileNotFoundError/FileExistsError on bad input,
    and ``zoo.files.OutputBusyError`` if another process is training into the same ``out_dir``.
    """
    if not str(out_dir).strip() or Path(out_dir).name in ("", ".", ".."):
        raise ValueError(f"out_dir={str(out_dir)!r} is invalid: a run needs a directory of its own (e.g. runs/NAME)")
    writer = int(os.environ.get("RANK", "0")) == 0
    with output_lock(out_dir) if writer else contextlib.nullcontext():
        out, fresh = Path(out_dir), False
        if writer:
            fresh = not check_output_dir(out, "a diffzoo training run", not_a_run)  # nothing else is written into
            clean_partials(out, out / "checkpoints")  # what an interrupted run left (under the lock)
        existed = out.is_dir()
        try:
            return _train(cfg, out, resume, progress, until)
        except BaseException:
            if fresh and not (out / "last").exists():  # a new run that failed before its first checkpoint: nothing to
                for p in (out.iterdir() if existed and out.is_dir() else [out]):  # resume, nothing partial left
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
            raise


def _train(cfg: TrainConfig, out: Path, resume: bool, progress: bool, until: int | None) -> TrainResult:
    tune_allocator()  # ~1.7x on a fresh process's first steps otherwise (zoo/allocator.py)
    loop = _TrainLoop(cfg, out, resume)
    stop = cfg.steps if until is None else min(until, cfg.steps)
    bar = None
    if progress and loop.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=loop.start, desc="train", unit="step")
    t_start = time.perf_counter()
    try:
        for step in range(loop.start, stop):
            loop.step(step)
            done = step + 1
            if done % cfg.log_every == 0 or done in (cfg.steps, stop):
                loop.log(done, (done - loop.start) * cfg.batch / (time.perf_counter() - t_start), bar)
            if bar is not None:
                bar.update(1)
            if loop.rank == 0 and (done % cfg.checkpoint_every == 0 or done in (cfg.steps, stop)):
                loop.checkpoint(done)
            if loop.rank == 0 and ((cfg.sample_every and done % cfg.sample_every == 0) or done == cfg.steps):
                loop.sample(done)
    finally:
        if bar is not None:
            bar.close()  # its line ends here: an error is printed on a line of its own
    return loop.finish(stop, time.perf_counter() - t_start)


class _TrainLoop:
    """One training run's state and its named steps (improved-diffusion's ``TrainLoop``): set up in
    ``__init__``, then ``step``, ``log``, ``checkpoint``, ``sample`` as the schedule says, and ``finish``."""

    def __init__(self, cfg: TrainConfig, out: Path, resume: bool) -> None:
        self.cfg, self.out = cfg, out
        self.rank, self.world = init_distributed()
        if cfg.batch % self.world:
            raise ValueError(f"batch={cfg.batch} must be divisible by the number of processes ({self.world})")
        self.device = _device(cfg.device)
        self.data = open_dataset(cfg.data, cfg.size, train=True, seed=cfg.seed)
        self.model, self.schedule = self._build()
        saved = self._saved_state(resume)
        self.start = saved["step"] if saved else 0
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            (out / "samples").mkdir(exist_ok=True)
            atomic_write(out / "config.json", (json.dumps(dataclasses.asdict(cfg), indent=2) + "\n").encode())
        self.model.to(self.device)
        self.ema = AveragedModel(self.model, avg_fn=_ema_avg(cfg.ema_decay))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.losses: list[tuple[int, float]] = []
        if saved is not None:
            try:
                self.model.load_state_dict(saved["model"])
                self.ema.load_state_dict(saved["ema"])
                self.opt.load_state_dict(saved["optimizer"])
                self.losses = [tuple(x) for x in saved.get("losses", [])]
            except (RuntimeError, ValueError, KeyError, TypeError) as e:
                first = first_line(e)
                raise ValueError(f"--resume: the checkpoint's weights do not fit this {cfg.model!r} model: {first}") from None
        self.net: nn.Module = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.alphas = torch.from_numpy(self.schedule.alphas_cumprod.copy()).float()
        self.window: list[torch.Tensor] = []
        self.last_ckpt: Path | None = None
        g = torch.Generator().manual_seed(cfg.seed)
        self.x_fixed = torch.randn((SAMPLE_IMAGES, self.data.channels, cfg.size, cfg.size), generator=g)
        self.model.train()

    def _build(self):
        cfg, channels = self.cfg, self.data.channels
        torch.manual_seed(cfg.seed)  # the initial weights (replaced by the checkpoint's on --resume)
        if cfg.model_config.get("channels", channels) != channels:
            raise ValueError(f"channels={cfg.model_config['channels']} does not match the data {cfg.data!r}, which has "
                             f"{channels} channel(s): leave --channels out, the data decides")
        model_config = {**cfg.model_config, "channels": channels}
        if cfg.conditional:  # the classes come from the data; a stated num_classes must agree with it
            k = self.data.num_classes
            if k < 2:
                raise ValueError(f"--conditional needs a labelled data source; {cfg.data!r} has no class labels")
            if model_config.get("num_classes", k) != k:
                raise ValueError(f"num_classes={model_config['num_classes']} does not match the data {cfg.data!r}, which has "
                                 f"{k} classes: leave num_classes out, the data decides")
            model_config["num_classes"] = k
        n = parameter_count(cfg.model, **model_config)
        check_fits(20 * n, f"training {cfg.model!r} ({n:,} parameters, each with a gradient, two AdamW moments and an EMA "
                   "copy in float32)", "choose a smaller width (--hidden)")
        hidden = model_config.get("hidden", DenoiserConfig.hidden)
        check_fits(activation_bytes(cfg.batch // self.world, channels, hidden, cfg.size, cfg.size),
                   f"a training batch of {cfg.batch} at {cfg.size}x{cfg.size} (hidden={hidden})", "use a smaller --batch or --size")
        model = build(cfg.model, **model_config)
        multiple = getattr(model.config, "size_multiple", 1)
        if cfg.size % multiple:
            raise ValueError(f"--size {cfg.size} is invalid for this {cfg.model!r} model: its height and width must be "
                             f"multiples of {multiple} (each down block but the last halves them)")
        shape = getattr(model.config, "sample_shape", None)  # a diffusers config states the size it samples at
        if shape is not None and shape[1:] != (cfg.size, cfg.size):
            raise ValueError(f"--size {cfg.size} differs from the model config's sample_size {list(shape[1:])}: the "
                             "config would still say that size when written back; pass --size "
                             f"{shape[1]} or change sample_size")
        return model, make_schedule(cfg.schedule, num_train_timesteps=model.config.num_train_timesteps, **cfg.schedule_params)

    def _saved_state(self, resume: bool) -> dict | None:
        if not resume:
            if (self.out / "last").exists():
                raise FileExistsError(f"{str(self.out)!r} already holds a training run: pass --resume, or choose another --out")
            return None
        _, saved = load_state(self.out)
        _compatible(saved["config"], self.cfg)
        if saved["step"] >= self.cfg.steps:
            raise ValueError(f"--resume: the checkpoint is at step {saved['step']}, already >= --steps {self.cfg.steps}")
        return saved

    def step(self, step: int) -> None:
        """One optimizer step on the global batch of ``step`` (this rank's slice of it)."""
        cfg, data, device = self.cfg, self.data, self.device
        g = _step_generator(cfg.seed, step)
        idx = torch.randint(0, len(data), (cfg.batch,), generator=g)
        t = torch.randint(0, self.schedule.num_train_timesteps, (cfg.batch,), generator=g)
        eps = torch.randn((cfg.batch, data.channels, cfg.size, cfg.size), generator=g)
        local = cfg.batch // self.world
        mine = slice(self.rank * local, (self.rank + 1) * local)
        x0 = data.batch(idx[mine].tolist()).to(device)
        x_t, target = make_training_sample(x0, eps[mine].to(device), self.alphas[t[mine]].to(device))
        if cfg.conditional:  # drawn after everything else of the step: unconditional runs draw exactly as before
            labels = torch.from_numpy(data.batch_labels(idx.tolist()))
            drop = torch.rand(cfg.batch, generator=g) < cfg.cond_drop  # classifier-free guidance's null-class training
            labels = torch.where(drop, self.model.config.num_classes, labels)  # the null class
            loss = F.mse_loss(self.net(x_t, t[mine].to(device), labels[mine].to(device)), target)
        else:
            loss = F.mse_loss(self.net(x_t, t[mine].to(device)), target)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)  # the same on every rank (DDP)
        if not torch.isfinite(grad_norm):  # a NaN/inf loss or gradient never reaches the weights or a checkpoint
            kept = f"the last checkpoint ({self.last_ckpt.name if self.last_ckpt else 'none this session'}) is kept"
            raise NonFiniteLossError(f"step {step}: loss {float(loss):.4g}, gradient norm {float(grad_norm):.4g} "
                                     f"(lr={cfg.lr:g}): training stopped; {kept}; try a lower --lr")
        self.opt.step()
        self.ema.update_parameters(self.model)
        self.window.append(loss.detach())

    def log(self, done: int, images_per_s: float, bar) -> None:
        """The mean loss since the last log (over every rank), to ``log.jsonl`` and the progress bar."""
        mean = torch.stack(self.window).mean()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(mean)
            mean /= self.world
        self.window = []
        self.losses.append((done, float(mean)))
        if self.rank == 0:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": done, "loss": round(float(mean), 6), "images_per_s": round(images_per_s, 1)}) + "\n")
            if bar is not None:
                bar.set_postfix(loss=f"{float(mean):.4f}", img_s=f"{images_per_s:.0f}")

    def checkpoint(self, done: int) -> None:
        classes = self.data.classes if self.cfg.conditional else ()
        self.last_ckpt = _write_checkpoint(self.out, done, self.model, self.ema, self.opt, self.cfg, self.schedule, self.losses,
                                           classes)

    def sample(self, done: int) -> None:
        """A grid of the EMA model's samples from fixed noise, ``samples/step_N.png``."""
        self.ema.module.eval()
        steps = min(self.cfg.sample_steps, self.schedule.num_train_timesteps)  # a model with T < 20 samples T steps
        labels = None  # a conditional run's grid: the classes in turn, guidance 1 (conditional prediction)
        if self.cfg.conditional:
            labels = torch.arange(len(self.x_fixed)) % self.model.config.num_classes
        x = ddim_sample(self.ema.module, self.schedule, self.x_fixed.to(self.device), num_steps=steps, labels=labels)
        save_grid(self.out / "samples" / f"step_{done:07d}.png", x)

    def finish(self, stop: int, seconds: float) -> TrainResult:
        digest = _replica_digest(self.model, self.world)
        if self.rank == 0:
            summary = {"step": stop, "world_size": self.world, "weights_sha256": digest, "seconds": round(seconds, 2),
                       "final_loss": self.losses[-1][1] if self.losses else None}
            atomic_write(self.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        ckpt = (self.last_ckpt or (self.out / "last").resolve()) / CHECKPOINT_WEIGHTS
        ips = (stop - self.start) * self.cfg.batch / max(seconds, 1e-9)
        return TrainResult(self.out, stop, ckpt, self.losses, seconds, ips, self.world, digest)


def weights_digest(model: nn.Module) -> str:
    """sha256 of the model's parameters in order: equal on every rank of a data-parallel run, recorded in summary.json."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def check_replicas(digests: list[str]) -> str:
    """The one digest every rank reported; ``RuntimeError`` naming them if the replicas diverged."""
    if len(set(digests)) != 1:
        raise RuntimeError(f"data-parallel replicas diverged: weight digests {digests}")
    return digests[0]


def _replica_digest(model: nn.Module, world: int) -> str:
    """The weights' digest, checked equal across the ``world`` ranks (a failure, not a flag, if not)."""
    digest = weights_digest(model)
    if world == 1:
        return digest
    import torch.distributed as dist

    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, digest)
    return check_replicas(digests)
