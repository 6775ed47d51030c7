"""The quality metric: the project's own classifier, its cache, and what the report says about real data and noise."""

import numpy as np
import pytest
import torch

from zoo.training.data import open_dataset
from zoo.training.metrics import FeatureClassifier, quality_report, reference_classifier


@pytest.fixture(scope="module")
def digits_classifier():
    return reference_classifier("digits", 8)  # the one `diffzoo eval` uses; trained once per session, then cached


def test_feature_classifier_shapes():
    for clf in (FeatureClassifier(3, 6), FeatureClassifier(3, 6, pooled=True)):
        for shape in [(2, 3, 8, 8), (1, 3, 13, 9), (2, 3, 28, 28)]:
            x = torch.randn(shape)
            assert clf(x).shape == (shape[0], 64) and clf.logits(x).shape == (shape[0], 6)


def test_classifier_recipe_keeps_small_images_as_they_were_and_pools_large_ones():
    from zoo.training.metrics import POOLED_FROM, classifier_recipe

    assert classifier_recipe(8) == (False, 1500, 20_000)  # the digits' (and 16 px shapes') published figures
    assert classifier_recipe(POOLED_FROM - 1)[0] is False
    assert classifier_recipe(28) == (True, 3000, 60_000) and classifier_recipe(28, steps=10)[1] == 10


def test_classifier_is_deterministic_and_cached(digits_classifier, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFZOO_CACHE", str(tmp_path / "a"))
    first = reference_classifier("digits", 8, steps=40)
    assert len(list((tmp_path / "a" / "classifiers").glob("digits-8px-*.safetensors"))) == 1
    again = reference_classifier("digits", 8, steps=40)  # loaded from the cache
    monkeypatch.setenv("DIFFZOO_CACHE", str(tmp_path / "b"))
    fresh = reference_classifier("digits", 8, steps=40)  # trained anew, from the same seed
    for a, b, c in zip(first.state_dict().values(), again.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(a, c, rtol=0, atol=0)
    held = open_dataset("digits", 8, train=False)
    accuracy = (digits_classifier.logits(held.batch(range(360))).argmax(1).numpy() == held.labels).mean()
    assert accuracy > 0.9  # the default classifier knows the held-out digits


def test_real_data_meets_every_target_and_noise_none(digits_classifier):
    held = open_dataset("digits", 8, train=False)
    real = quality_report(held.batch(range(len(held))), "digits", classifier=digits_classifier)
    assert real.n == 360 and real.fd_samples == pytest.approx(real.fd_floor) and real.fd_ratio == pytest.approx(1.0)
    assert real.met and real.confidence_samples == pytest.approx(real.confidence_data)
    noise = quality_report(torch.randn(360, 1, 8, 8).clamp(-1, 1), "digits", classifier=digits_classifier)
    assert noise.fd_samples > 5 * noise.fd_floor and not noise.targets["fd"] and not noise.met
    assert noise.fd_noise > noise.fd_floor
    one_class = held.batch(np.flatnonzero(held.labels == 3).tolist())  # mode collapse: only threes
    collapsed = quality_report(one_class, "digits", classifier=digits_classifier)
    assert not collapsed.targets["classes"] and collapsed.class_share_samples[3] > 0.8
    assert "Frechet distance" in real.format() and "NO" in noise.format()


def test_report_refuses_bad_samples(digits_classifier):
    x = torch.zeros(4, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="1 non-finite values"):
        quality_report(x, "digits", classifier=digits_classifier)
    with pytest.raises(ValueError, match="3 channels but 'digits' images have 1"):
        quality_report(torch.zeros(4, 3, 8, 8), "digits", classifier=digits_classifier)
    with pytest.raises(ValueError, match=r"expected image batches \(N, C, H, W\)"):
        quality_report(torch.zeros(4, 8, 8), "digits", classifier=digits_classifier)


def test_unlabelled_source_is_refused(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    with pytest.raises(ValueError, match="has no class labels"):
        reference_classifier(f"folder:{tmp_path}", 8, steps=1)


def test_conditional_accuracy_beside_its_real_data_floor(digits_classifier):
    held = open_dataset("digits", 8, train=False)
    x = held.batch(range(len(held)))
    right = quality_report(x, "digits", classifier=digits_classifier, labels=held.labels)
    assert right.conditional_accuracy == pytest.approx(right.accuracy_floor) and right.accuracy_floor > 0.9
    assert right.conditional_accuracy_per_class == right.accuracy_floor_per_class and len(right.accuracy_floor_per_class) == 10
    assert right.met and "conditional accuracy" in right.format()
    wrong = quality_report(x, "digits", classifier=digits_classifier, labels=(held.labels + 1) % 10)  # every label off by one
    assert wrong.conditional_accuracy < 0.1 and wrong.accuracy_floor == right.accuracy_floor
    threes = np.flatnonzero(held.labels == 3)
    asked = quality_report(held.batch(threes.tolist()), "digits", classifier=digits_classifier,
                           labels=np.full(len(threes), 3))
    assert asked.targets["classes"]  # only threes asked for: the class shares follow the labels, not the data
    assert np.isnan(asked.conditional_accuracy_per_class[0]) and asked.conditional_accuracy_per_class[3] > 0.9
    with pytest.raises(ValueError, match="labels must be 360 integers, one per sample"):
        quality_report(x, "digits", classifier=digits_classifier, labels=[1, 2])
    with pytest.raises(ValueError, match="labels 0..10 are invalid: 'digits' has classes 0..9"):
        quality_report(x, "digits", classifier=digits_classifier, labels=np.arange(360) % 11)
