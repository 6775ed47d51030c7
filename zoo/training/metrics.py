"""Sample quality measured offline: a Frechet distance in the features of a classifier trained here.

No Inception weights can be downloaded, so this does what MNIST-scale papers do: a small CNN is
trained on the labelled training split of the same data (``reference_classifier``), and samples are
judged by (1) the Frechet distance between Gaussians fitted to its penultimate features (FID's
formula, Heusel et al. 2017, computed by torchmetrics with this network as the feature extractor),
(2) its mean confidence on the samples and (3) the class histogram (mode collapse shows there).
Every figure comes with the real held-out data's value (the floor) and Gaussian noise's (the
baseline), measured with the same network and the same number of images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureClassifier", "QualityReport", "reference_classifier", "quality_report", "classifier_recipe", "CLASSIFIER_VERSION",
    "CLASSIFIER_STEPS", "POOLED_FROM",
]

log = logging.getLogger(__name__)

CLASSIFIER_VERSION = 2  # bump when the network or its training changes: cached classifiers are keyed by it
FD_TARGET_RATIO = 3.0  # samples' Frechet distance at most this many times the data-vs-data floor
CONFIDENCE_MARGIN = 0.05  # samples recognised about as confidently as real held-out images
CLASS_BAND = (0.5, 1.5)  # every class between these multiples of its share in the real data
# With labels (guided samples): each asked-for class recognised about as often as real images of it are, overall
# and per class (a class holds a tenth of the samples: one miss moves it by 1/36 on the digits' 360).
ACCURACY_MARGIN = 0.05
CLASS_ACCURACY_MARGIN = 0.15


POOLED_FROM = 24  # images this large (28x28 Fashion-MNIST, 32x32 CIFAR-10) keep a 4x4 layout in the features


class FeatureClassifier(nn.Module):
    """conv(32) -> conv(64, /2) -> conv(64, /2) -> 64 features -> linear: any H x W >= 4.

    The 64 features are the global mean of the last map, or, with ``pooled`` (images of at least
    ``POOLED_FROM`` px), a 4x4 average pool flattened through a linear layer: at 28 px a global mean
    keeps only local texture, and a shirt and a T-shirt differ in shape (measured on Fashion-MNIST:
    75.3% held-out accuracy with the global mean, 88.2% pooled, docs/QUALITY.md).
    ``forward`` returns the 64 features (what torchmetrics' Frechet distance reads); ``logits``
    the class scores. Inputs are images in [-1, 1].
    """

    num_features = 64

    def __init__(self, channels: int, num_classes: int, pooled: bool = False) -> None:
        super().__init__()
        self.channels, self.num_classes = channels, num_classes
        self.body = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.pool = (nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, self.num_features), nn.ReLU())
                     if pooled else None)
        self.head = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, 64, H/4, W/4)
        return h.mean(dim=(2, 3)) if self.pool is None else self.pool(h)  # (B, 64)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self(x))  # (B, num_classes)


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFZOO_CACHE") or Path.home() / ".cache" / "diffzoo") / "classifiers"


def _cache_key(data: str, size: int, seed: int, steps: int, max_images: int) -> str:
    kind, _, arg = data.partition(":")
    ident: dict[str, Any] = {"data": data, "size": size, "seed": seed, "steps": steps, "max_images": max_images,
                             "version": CLASSIFIER_VERSION}
    if arg:  # a path: a changed file is another dataset
        p = Path(arg)
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        ident["files"] = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
    return f"{kind}-{size}px-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _train_images(dataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = np.arange(min(n, len(dataset)))
    return dataset.batch(idx.tolist()), torch.from_numpy(dataset.batch_labels(idx.tolist()))


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to 1/8 of the size (background -1 fills in): the classifier's only augmentation."""
    p = max(1, x.shape[-1] // 8)
    padded = F.pad(x, (p, p, p, p), value=-1.0)
    dy, dx = (int(v) for v in torch.randint(0, 2 * p + 1, (2,), generator=g))
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


CLASSIFIER_STEPS = 1500  # ~30 s on 2 cores for the digits; then cached


def classifier_recipe(size: int, steps: int | None = None, max_images: int | None = None) -> tuple[bool, int, int]:
    """(pooled, steps, max_images) of the reference classifier at ``size``: the one place that sizes it.

    Below ``POOLED_FROM`` px: global-mean features, 1,500 steps on up to 20,000 images (the digits'
    and the shapes' published figures). From it on: pooled features, 3,000 steps on up to 60,000
    (Fashion-MNIST's whole training split: 88.2% on its held-out images, against 85.2% at 1,500
    steps on 20,000). ``steps`` / ``max_images`` override.
    """
    pooled = size >= POOLED_FROM
    return pooled, steps or (3000 if pooled else CLASSIFIER_STEPS), max_images or (60_000 if pooled else 20_000)


def reference_classifier(
    data: str, size: int, seed: int = 0, steps: int | None = None, max_images: int | None = None, progress: bool = False
) -> FeatureClassifier:
    """The classifier of ``data`` at ``size``: trained once on the labelled training split, then cached.

    Its network and training budget follow from ``size`` (``classifier_recipe``).

    Deterministic for (data, size, seed); cached under ``$DIFFZOO_CACHE`` (default
    ``~/.cache/diffzoo``) as safetensors, so later reports reuse the same network.
    """
    from safetensors.torch import load_file, save

    from zoo.files import atomic_write
    from zoo.training.data import open_dataset

    train_set = open_dataset(data, size, train=True, seed=seed)
    if train_set.num_classes < 2:
        raise ValueError(f"data source {data!r} has no class labels: the classifier metric needs a labelled source "
                         "(synthetic, digits, idx:PATH with its labels file, cifar10:PATH)")
    pooled, steps, max_images = classifier_recipe(size, steps, max_images)
    path = _cache_dir() / f"{_cache_key(data, size, seed, steps, max_images)}.safetensors"
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG state is left as it was
        torch.manual_seed(seed)
        model = FeatureClassifier(train_set.channels, train_set.num_classes, pooled=pooled)
        if path.is_file():
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        log.info("training the %s classifier at %dpx (cached afterwards at %s)", data, size, path)
        _fit(model, *_train_images(train_set, max_images), steps, torch.Generator().manual_seed(seed),
             f"classifier ({data})" if progress else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


def _fit(model: FeatureClassifier, x: torch.Tensor, y: torch.Tensor, steps: int, g: torch.Generator, desc: str | None) -> None:
    """AdamW, batch 128, cosine learning rate from 2e-3, random shifts: the classifier's whole training."""
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    it = range(steps)
    if desc:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="step")
    model.train()
    for step in it:
        idx = torch.randint(0, len(x), (128,), generator=g)
        for group in opt.param_groups:
            group["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        loss = F.cross_entropy(model.logits(_shift(x[idx], g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


@dataclass
class QualityReport:
    """Quality of ``n`` samples against real data, each figure beside its floor and baseline."""

    data: str
    n: int  # images per set in every Frechet distance
    fd_samples: float  # samples vs the training split: lower is better
    fd_floor: float  # real held-out images vs the training split: the best a model can expect
    fd_noise: float  # clipped Gaussian noise vs the training split: what a useless model gets
    confidence_samples: float  # mean top-class probability of the classifier
    confidence_data: float
    confidence_noise: float
    class_share_samples: list[float]  # by the classifier's decision
    class_share_data: list[float]  # by the labels of the training split
    fd_ratio: float  # fd_samples / fd_floor
    targets: dict[str, bool]  # the one definition of "met": every target here (the conditional ones with labels)
    # with labels (the class each sample was asked for): the share the classifier assigns to that class,
    # overall and per class, beside the classifier's accuracy on real held-out images (the floor)
    conditional_accuracy: float | None = None
    conditional_accuracy_per_class: list[float] | None = None
    accuracy_floor: float | None = None
    accuracy_floor_per_class: list[float] | None = None

    @property
    def met(self) -> bool:
        return all(self.targets.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}

    def format(self) -> str:
        shares = " ".join(f"{v:.0%}" for v in self.class_share_samples)
        lo, hi = CLASS_BAND
        yes = {True: "yes", False: "NO"}
        rows = [
            ("Frechet distance (lower is better)",
             f"samples {self.fd_samples:.2f} | real held-out (floor) {self.fd_floor:.2f} | noise {self.fd_noise:.2f}"),
            ("  within 3x of real data", f"{yes[self.targets['fd']]} ({self.fd_ratio:.1f}x the floor)"),
            ("classifier confidence", f"samples {self.confidence_samples:.2f} | real held-out {self.confidence_data:.2f} "
                                      f"| noise {self.confidence_noise:.2f}"),
            ("  recognised like real data", f"{yes[self.targets['confidence']]} (needs >= {self.confidence_data - CONFIDENCE_MARGIN:.2f})"),
            ("class shares of samples", shares),
            ("  every class present", f"{yes[self.targets['classes']]} (each within {lo}x-{hi}x its share in "
                                      f"{'the labels asked for' if self.conditional_accuracy is not None else 'real data'})"),
        ]
        if self.conditional_accuracy is not None:
            per = " ".join(f"{v:.0%}" for v in self.conditional_accuracy_per_class)
            floor = " ".join(f"{v:.0%}" for v in self.accuracy_floor_per_class)
            rows += [("conditional accuracy", f"samples {self.conditional_accuracy:.3f} | real held-out (floor) "
                                              f"{self.accuracy_floor:.3f}"),
                     ("  recognised as asked", f"{yes[self.targets['accuracy']]} (needs >= "
                                               f"{self.accuracy_floor - ACCURACY_MARGIN:.3f})"),
                     ("  per class, samples", per), ("  per class, real held-out", floor),
                     ("  every class recognised", f"{yes[self.targets['every_class_accuracy']]} (each >= its real "
                                                  f"held-out accuracy - {CLASS_ACCURACY_MARGIN:g})")]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def _as_tensor(x: Any) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float32))
    if x.ndim != 4:
        raise ValueError(f"expected image batches (N, C, H, W); got shape {tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"the samples hold {bad} non-finite values (NaN or inf): nothing to measure")
    return x


@torch.inference_mode()
def _predict(clf: FeatureClassifier, x: torch.Tensor) -> tuple[float, np.ndarray, np.ndarray]:
    """(mean confidence, class shares, predicted class per image) of the classifier on ``x``."""
    probs = torch.cat([F.softmax(clf.logits(b), dim=1) for b in x.split(512)])
    pred = probs.argmax(1).numpy()
    return float(probs.max(1).values.mean()), np.bincount(pred, minlength=clf.num_classes) / len(x), pred


def quality_report(
    samples: Any, data: str, classifier: FeatureClassifier | None = None, seed: int = 0, max_reference: int = 20_000,
    labels: Any = None,
) -> QualityReport:
    """Measure ``samples`` (N, C, H, W) in [-1, 1] against the real data ``data`` (a data spec).

    ``labels`` (N,): the class each sample was asked for (guided generation). Then the report adds
    the conditional accuracy, overall and per class, beside the classifier's accuracy on the real
    held-out images (the floor), and the class-share target compares with the labels' own shares.

    The reference statistics are the training split's (up to ``max_reference`` images); the floor
    is as many real held-out images as there are samples (the Frechet distance is biased by the
    set size, so every set in it has the same ``n = min(N, held-out size)``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    from zoo.training.data import open_dataset

    x = _as_tensor(samples)
    size = x.shape[-1]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(x),) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {len(x)} integers, one per sample; got {labels.dtype} {labels.shape}")
    clf = classifier or reference_classifier(data, size, seed=seed)
    if labels is not None and (labels.min() < 0 or labels.max() >= clf.num_classes):
        raise ValueError(f"labels {labels.min()}..{labels.max()} are invalid: {data!r} has classes 0..{clf.num_classes - 1}")
    if x.shape[1] != clf.channels:
        raise ValueError(f"the samples have {x.shape[1]} channels but {data!r} images have {clf.channels}")
    train_set = open_dataset(data, size, train=True, seed=seed)
    held = open_dataset(data, size, train=False, seed=seed)
    n = min(len(x), len(held))
    if n < 2:
        raise ValueError(f"need at least 2 samples and 2 held-out images; got {len(x)} and {len(held)}")
    real = held.batch(range(n))
    noise = torch.randn(x[:n].shape, generator=torch.Generator().manual_seed(seed + 1)).clamp(-1, 1)

    # sync_on_compute=False: under torchrun only rank 0 measures, with every shard already gathered
    fd = FrechetInceptionDistance(feature=clf.eval(), reset_real_features=False, sync_on_compute=False)
    with torch.inference_mode():
        ref_idx = list(range(min(len(train_set), max_reference)))
        for i in range(0, len(ref_idx), 1024):
            fd.update(train_set.batch(ref_idx[i : i + 1024]), real=True)
        scores = {}
        for name, imgs in (("samples", x[:n]), ("floor", real), ("noise", noise)):
            fd.reset()
            fd.update(imgs, real=False)
            scores[name] = float(fd.compute())
    conf_s, share_s, pred_s = _predict(clf, x)
    held_idx = range(len(held)) if len(held) <= max_reference else range(n)
    conf_d, _, pred_d = _predict(clf, held.batch(held_idx))
    conf_n, _, _ = _predict(clf, noise)
    # the classes' shares expected: those of the labels asked for, else the training split's (as many as the reference holds)
    if labels is not None:
        share_d = np.bincount(labels, minlength=clf.num_classes) / len(labels)
    else:
        share_d = np.bincount(train_set.batch_labels(ref_idx), minlength=clf.num_classes) / len(ref_idx)
    lo, hi = CLASS_BAND
    ratio = scores["samples"] / max(scores["floor"], 1e-12)
    targets = {
        "fd": ratio <= FD_TARGET_RATIO,
        "confidence": conf_s >= conf_d - CONFIDENCE_MARGIN,
        # every class expected (in the data, or asked for) within the band of its share
        "classes": bool(np.all(((share_s >= lo * share_d) & (share_s <= hi * share_d))[share_d > 0])),
    }
    report = QualityReport(data, n, scores["samples"], scores["floor"], scores["noise"], conf_s, conf_d, conf_n,
                           [round(float(v), 4) for v in share_s], [round(float(v), 4) for v in share_d], ratio, targets)
    if labels is not None:
        truth = held.batch_labels(list(held_idx))
        report.conditional_accuracy, report.conditional_accuracy_per_class = _accuracy(pred_s, labels, clf.num_classes)
        report.accuracy_floor, report.accuracy_floor_per_class = _accuracy(pred_d, truth, clf.num_classes)
        asked = [(s, f) for s, f in zip(report.conditional_accuracy_per_class, report.accuracy_floor_per_class)
                 if not np.isnan(s)]
        targets["accuracy"] = report.conditional_accuracy >= report.accuracy_floor - ACCURACY_MARGIN
        targets["every_class_accuracy"] = all(s >= f - CLASS_ACCURACY_MARGIN for s, f in asked)
    return report


def _accuracy(pred: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, list[float]]:
    """The share of ``pred`` equal to ``truth``, overall and per class of ``truth`` (NaN for a class never asked for)."""
    hit = pred == truth
    per = [float(hit[truth == c].mean()) if (truth == c).any() else float("nan") for c in range(k)]
    return float(hit.mean()), [round(v, 4) for v in per]
