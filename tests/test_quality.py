"""Explanation quality: deletion / insertion AUCs, Average Drop, Increase in Confidence and the sanity
check's scores, each against a computation written here from its definition (and against torchcam's own
metric on the same map), a hand-checked tiny model, and the sentences for bad inputs.

The definitions (torchcam 0.5.0's, Petsiuk et al. 2018 / Chattopadhay et al. 2018): pixels ranked by the map
resized bilinearly to the input (a stable sort, highest first); S intervals of ceil(H·W / S) pixels; deletion
sets the first pixels of that order to 0 in the model's (normalised) input, insertion starts from 0 and puts
them back; the curve is the class's softmax probability; the AUC is the trapezoid rule over the fraction.
Average Drop is max(0, p − p_masked) / p and Increase in Confidence is [p_masked > p], the masked input being
the input times the map min-max scaled to [0, 1].
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cnnviz
from cnnviz import budget, quality
from cnnviz.errors import InvalidOptionError
from cnnviz.loading import from_module, load_model

room = importlib.import_module("cnnviz.attribution")  # `cnnviz.attribution` the attribute is the view function


@pytest.fixture(autouse=True)
def _no_deadline(monkeypatch):
    """A neighbour's burst on a shared test machine slows the timed pass the budget scales from, and must not
    refuse what these tests check; the refusal has its own test (which sets its own limit)."""
    monkeypatch.setattr(budget, "REQUEST_SECONDS", math.inf)


def sigmoid(s: float) -> float:
    return 1 / (1 + math.exp(-s))


def trapezoid(ys, xs) -> float:
    """The trapezoid rule, written out."""
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


class Weighted(nn.Module):
    """Two classes: class 0's score is the input weighted per pixel (0.1, 0.2 / 0.3, 0.4) and summed over the
    colours; class 1's is 0. So class 0's probability is sigmoid(score), checkable by hand."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.tensor([[0.1, 0.2], [0.3, 0.4]]))

    def forward(self, x):
        s = (x * self.w).sum((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


@pytest.fixture(scope="module")
def tiny():
    return from_module(Weighted(), input_size=(3, 2, 2), name="quality-weighted", labels=["on", "off"], device="cpu")


def test_the_tiny_model_by_hand(tiny):
    x = torch.ones(1, 3, 2, 2)
    saliency = torch.tensor([[4.0, 3.0], [2.0, 1.0]])  # ranks the pixels (0,0), (0,1), (1,0), (1,1)
    found = quality.score_maps(tiny, x, {"m": saliency}, 0, steps=4, batch=3)["m"]
    # deletion removes weights 0.1, 0.2, 0.3, 0.4 in turn (× 3 colours): scores 3, 2.7, 2.1, 1.2, 0
    deletion = [sigmoid(s) for s in (3.0, 2.7, 2.1, 1.2, 0.0)]
    insertion = [sigmoid(s) for s in (0.0, 0.3, 0.9, 1.8, 3.0)]
    assert found.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert found.deletion_curve == pytest.approx(deletion, abs=1e-6)
    assert found.insertion_curve == pytest.approx(insertion, abs=1e-6)
    assert found.deletion == pytest.approx(0.25 * (deletion[0] / 2 + sum(deletion[1:4]) + deletion[4] / 2), abs=1e-6)
    assert found.insertion == pytest.approx(0.25 * (insertion[0] / 2 + sum(insertion[1:4]) + insertion[4] / 2), abs=1e-6)
    # the [0, 1] map is (1, 2/3 / 1/3, 0): the masked score is 3 × (0.1 + 0.2·2/3 + 0.3/3) = 1.0
    assert found.masked_probability == pytest.approx(sigmoid(1.0), abs=1e-6)
    assert found.average_drop == pytest.approx((sigmoid(3.0) - sigmoid(1.0)) / sigmoid(3.0), abs=1e-6)
    assert found.increase_in_confidence == 0.0 and not found.flat


def test_a_map_that_ranks_badly_scores_worse_and_a_rise_counts(tiny):
    x = torch.ones(1, 3, 2, 2)
    good, bad = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[4.0, 3.0], [2.0, 1.0]])
    found = quality.score_maps(tiny, x, {"good": good, "bad": bad}, 0, steps=4)
    assert found["good"].deletion < found["bad"].deletion and found["good"].insertion > found["bad"].insertion
    # for class 1 (score −class 0's), masking the input raises the probability: Increase in Confidence is 1, no drop
    other = quality.score_maps(tiny, x, {"good": good}, 1, steps=4)["good"]
    assert other.increase_in_confidence == 1.0 and other.average_drop == 0.0


def by_definition(model, x, saliency, class_index, steps):
    """Deletion / insertion AUCs and Average Drop / Increase from the definition: one input per pass."""
    _n, c, h, w = x.shape
    resized = F.interpolate(saliency[None, None].float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
    order = np.argsort(-resized.flatten().numpy(), kind="stable")  # highest first, ties in raster order
    n = h * w
    k = -(-n // steps)
    counts = [*range(0, n, k), n]

    def prob(inp):
        with torch.no_grad():
            return float(torch.softmax(model(inp), 1)[0, class_index])

    deletion, insertion = [], []
    for count in counts:
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[torch.from_numpy(order[:count].copy())] = True
        chosen = chosen.reshape(h, w)
        deletion.append(prob(torch.where(chosen, torch.zeros_like(x), x)))
        insertion.append(prob(torch.where(chosen, x, torch.zeros_like(x))))
    fractions = [count / n for count in counts]
    low = saliency - saliency.min()
    unit = F.interpolate((low / low.max())[None, None].float(), (h, w), mode="bilinear", align_corners=False)[0, 0]
    p, masked = prob(x), prob(x * unit)
    return trapezoid(deletion, fractions), trapezoid(insertion, fractions), max(0.0, p - masked) / p, float(masked > p), deletion


def test_resnet18_scores_equal_the_definition(coffee):
    loaded = load_model("resnet18", "random")
    x = importlib.import_module("cnnviz.preprocess").model_input(loaded, str(coffee)).x
    cam = room.class_activation_map(loaded, x, "gradcam")
    found = quality.score_maps(loaded, x, {"gradcam": cam.map}, cam.class_index, steps=5)["gradcam"]
    deletion, insertion, drop, increase, curve = by_definition(loaded.model, x, cam.map, cam.class_index, 5)
    assert found.deletion_curve == pytest.approx(curve, rel=1e-4)
    assert found.deletion == pytest.approx(deletion, rel=1e-4)
    assert found.insertion == pytest.approx(insertion, rel=1e-4)
    assert found.average_drop == pytest.approx(drop, rel=1e-3, abs=1e-6)
    assert found.increase_in_confidence == increase
    assert 0 <= found.deletion <= 1 and 0 <= found.insertion <= 1


class GivenMap:
    """torchcam's CAM-extractor protocol around one given map, so torchcam's metrics score that very map."""

    def __init__(self, model, saliency, normalized):
        self.model, self.saliency, self.normalized = model, saliency, normalized

    def __call__(self, class_idx=None, scores=None, normalized=True, **_):
        m = self.saliency.clone()[None]
        if self.normalized:  # torchcam's _normalize
            m = m - m.min()
            m = m / (m.max() + 1e-8)
        return [m]

    def fuse_cams(self, cams):
        return cams[0]

    def _hooks_off(self):
        return contextlib.nullcontext()


def test_the_same_numbers_as_torchcams_metrics():
    from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

    loaded = load_model("resnet18", "random")
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    saliency = torch.rand(7, 7, generator=torch.Generator().manual_seed(4))
    found = quality.score_maps(loaded, x, {"m": saliency}, 281)["m"]  # torchcam's default S = 20
    softmax = functools.partial(torch.softmax, dim=-1)
    theirs = DeletionInsertionMetric(GivenMap(loaded.model, saliency, False), softmax)
    theirs.update(x.clone(), 281)
    drop = ClassificationMetric(GivenMap(loaded.model, saliency, True), softmax)
    drop.update(x.clone(), 281)
    assert found.deletion == pytest.approx(theirs.summary()["deletion_auc"], rel=1e-4)
    assert found.insertion == pytest.approx(theirs.summary()["insertion_auc"], rel=1e-4)
    assert found.average_drop == pytest.approx(drop.summary()["avg_drop"], rel=1e-3, abs=1e-6)
    assert found.increase_in_confidence == drop.summary()["conf_increase"]


def test_one_unperturbed_pass_then_the_perturbed_inputs_in_batches():
    loaded = load_model("resnet18", "random")
    sizes = []
    handle = loaded.model.register_forward_pre_hook(lambda _m, inputs: sizes.append(inputs[0].shape[0]))
    try:
        x = torch.rand(1, 3, 224, 224)
        quality.score_maps(loaded, x, {"a": torch.rand(7, 7), "b": torch.rand(7, 7)}, 1, batch=40)
    finally:
        handle.remove()
    # 2S − 1 = 39 inputs for the curves at S = 20 and one for Average Drop, per map
    assert quality.passes_per_map(224 * 224) == 40
    assert sizes == [1, 40, 40]


def test_a_flat_map_is_not_scored(tiny):
    found = quality.score_maps(tiny, torch.ones(1, 3, 2, 2), {"flat": torch.zeros(3, 3)}, 0, steps=4)["flat"]
    assert found.flat and math.isnan(found.deletion) and math.isnan(found.average_drop)


@pytest.mark.parametrize(("kwargs", "words"), [
    (dict(maps={"m": torch.rand(2, 2, 2)}), "2-D array"),
    (dict(maps={"m": torch.tensor([[float("nan"), 1.0], [0.0, 1.0]])}), "not finite"),
    (dict(steps=1), "Steps"),
    (dict(steps=10_000), "Steps"),
    (dict(steps="many"), "Steps"),
    (dict(class_index=5), "out of range"),
    (dict(class_index="on"), "class index"),
    (dict(batch=0), "batch"),
])
def test_bad_inputs_get_sentences(tiny, kwargs, words):
    args = dict(maps={"m": torch.rand(2, 2)}, class_index=0, steps=4)
    args.update(kwargs)
    with pytest.raises(InvalidOptionError, match=words):
        quality.score_maps(tiny, torch.ones(1, 3, 2, 2), args.pop("maps"), args.pop("class_index"), **args)


# --- the sanity check's scores ------------------------------------------------------------------------


def ranks(values: np.ndarray) -> np.ndarray:
    """Each value's rank (0 = the smallest), tied values sharing the mean of their ranks (Spearman's)."""
    order = np.argsort(values, kind="stable")
    out = np.empty(values.size)
    out[order] = np.arange(values.size)
    _unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=out)
    return sums[inverse] / counts[inverse]


def ssim_by_definition(a: np.ndarray, b: np.ndarray, win: int = 7) -> float:
    """Wang et al. 2004 with a uniform win × win window, sample covariances, K1 = 0.01, K2 = 0.03, data range 1,
    averaged over the windows that fit inside the image (what scikit-image computes)."""
    va, vb = (np.lib.stride_tricks.sliding_window_view(m, (win, win)).reshape(-1, win * win) for m in (a, b))
    ma, mb = va.mean(1), vb.mean(1)
    n = win * win
    sa, sb = va.var(1, ddof=1), vb.var(1, ddof=1)
    sab = ((va - ma[:, None]) * (vb - mb[:, None])).sum(1) / (n - 1)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma**2 + mb**2 + c1) * (sa + sb + c2))
    return float(s.mean())


def test_sanity_scores_equal_their_definitions():
    rng = np.random.default_rng(0)
    a, b = rng.random((20, 20)), rng.random((20, 20)) + 0.3 * rng.random((20, 20))
    found = quality.sanity_scores(a, b)
    na, nb = (a - a.min()) / np.ptp(a), (b - b.min()) / np.ptp(b)
    assert found.spearman == pytest.approx(np.corrcoef(ranks(na.ravel()), ranks(nb.ravel()))[0, 1], abs=1e-9)
    assert found.ssim == pytest.approx(ssim_by_definition(na, nb), abs=1e-9)


def test_identical_maps_score_one_and_sign_does_not_matter():
    m = np.random.default_rng(1).random((9, 9))
    assert quality.sanity_scores(m, m).spearman == pytest.approx(1.0)
    assert quality.sanity_scores(m, -m).ssim == pytest.approx(1.0)  # absolute maps, as Adebayo et al. compare them
    assert quality.sanity_scores(m, 5 * m + 0).spearman == pytest.approx(1.0)


def test_sanity_scores_bad_inputs():
    with pytest.raises(InvalidOptionError, match="one shape"):
        quality.sanity_scores(np.zeros((4, 4)), np.zeros((5, 5)))
    with pytest.raises(InvalidOptionError, match="3 × 3"):
        quality.sanity_scores(np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(InvalidOptionError, match="not finite"):
        quality.sanity_scores(np.full((4, 4), np.inf), np.ones((4, 4)))
    assert quality.sanity_scores(np.zeros((4, 4)), np.random.default_rng(2).random((4, 4))).flat


# --- the facade ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_explanation_quality_scores_each_method_for_one_class(coffee):
    stages: list[tuple[int, int]] = []
    view = cnnviz.explanation_quality("resnet18", str(coffee), weights="random", target="tabby",
                                      progress=lambda stage, total: stages.append((stage, total)))
    assert stages == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]  # each method's map, then the scoring, each as it starts
    assert tuple(view.scores) == cnnviz.explore.DEFAULT_QUALITY_METHODS == ("gradcam", "gradcampp", "layercam", "guided_gradcam")
    assert view.class_index == 281 and view.label == "tabby" and not view.weights.pretrained
    assert sorted(view.ranking) == sorted(view.scores) and view.steps == 20
    for s in view.scores.values():
        assert 0 <= s.deletion <= 1 and 0 <= s.insertion <= 1 and 0 <= s.average_drop <= 1
        assert s.fractions.shape == s.deletion_curve.shape == s.insertion_curve.shape == (21,)
    differences = [view.scores[m].difference for m in view.ranking]
    assert differences == sorted(differences, reverse=True)
    # Guided Grad-CAM's map is its absolute signal summed over colour
    guided = cnnviz.guided_gradcam("resnet18", str(coffee), target="tabby", weights="random")
    assert np.allclose(view.scores["guided_gradcam"].map, np.abs(guided.signal).sum(0), atol=1e-6)
    with pytest.raises((TypeError, AttributeError)):
        view.scores["gradcam"] = None  # read-only


def test_explanation_quality_bad_requests_get_sentences(coffee, monkeypatch):
    for methods, words in ((["nope"], "Unknown method"), (["gradcam", 3], "Unknown method"), (5, "list of method names")):
        with pytest.raises(InvalidOptionError, match=words):
            cnnviz.explanation_quality("resnet18", str(coffee), weights="random", methods=methods)
    with pytest.raises(InvalidOptionError, match="no class"):
        cnnviz.explanation_quality("resnet18", str(coffee), weights="random", target="no such class")
    monkeypatch.setattr(budget, "REQUEST_SECONDS", budget.forward_profile(load_model("resnet18", "random")).seconds * 60)
    monkeypatch.setattr(budget, "RETIME_AFTER_S", math.inf)
    with pytest.raises(InvalidOptionError, match="fit alone|fewer steps"):
        cnnviz.explanation_quality("resnet18", str(coffee), weights="random")


@pytest.mark.slow
def test_sanity_check_compares_the_trained_and_the_random_map(coffee):
    view = cnnviz.sanity_check("timm/tf_efficientnet_lite0", str(coffee))
    assert view.trained.label == view.random.label == "espresso" and not view.random.weights.pretrained
    h, w = 224, 224
    a = room.upsampled(torch.from_numpy(view.trained.map), h, w).numpy()
    b = room.upsampled(torch.from_numpy(view.random.map), h, w).numpy()
    na, nb = (np.abs(m) for m in (a, b))
    na, nb = (na - na.min()) / np.ptp(na), (nb - nb.min()) / np.ptp(nb)
    assert view.spearman == pytest.approx(np.corrcoef(ranks(na.ravel()), ranks(nb.ravel()))[0, 1], abs=1e-6)
    same = cnnviz.sanity_check("resnet18", str(coffee), weights="random")  # random against itself: the same map
    assert same.spearman == pytest.approx(1.0) and same.ssim == pytest.approx(1.0) and same.alike


@pytest.mark.slow
def test_the_page_says_what_the_scores_mean(coffee):
    """The sanity check's words follow its numbers; the endpoint's table and curves hold the view's scores."""
    import dataclasses

    tab = importlib.import_module("cnnviz.ui.attribution")
    same = cnnviz.sanity_check("resnet18", str(coffee), weights="random")
    assert "do not trust" in tab.sanity_numbers(same) and "random already" in tab.sanity_numbers(same)
    low = dataclasses.replace(same, spearman=0.1, ssim=0.2)
    assert low.verdict == "different" and "passes this check" in tab.sanity_numbers(low)
    assert dataclasses.replace(same, spearman=0.5, ssim=0.3).verdict == "partly"
    flat = dataclasses.replace(same, spearman=math.nan, ssim=math.nan, flat=True)
    assert "same value everywhere" in tab.sanity_numbers(flat)
    table, deletion, insertion, caption = tab.explanation_quality("resnet18", str(coffee), "", "", "random", ["gradcam", "layercam"])
    view = cnnviz.explanation_quality("resnet18", str(coffee), weights="random", methods=["gradcam", "layercam"])
    assert list(table["method"]) == [view.scores[m].name for m in view.ranking]
    assert list(table.columns[2:]) == ["deletion AUC ↓", "insertion AUC ↑", "Average Drop ↓", "Increase in Confidence ↑"]
    assert len(deletion) == len(insertion) == 2 * 21 and set(deletion["method"]) == {"Grad-CAM", "LayerCAM"}
    assert "Best on this photo" in caption


def test_a_vision_transformer_scores_its_attention_maps_by_default(coffee):
    """A ViT's default methods are its attention methods (a CAM at a token layer may be all zero there): the
    maps scored are exactly what ``cnnviz.attribution`` draws for them, on the patch grid."""
    name = "timm/vit_tiny_patch16_224"
    assert cnnviz.explore.default_quality_methods(name, "random") == ("rollout", "chefer")
    assert cnnviz.explore.default_quality_methods("resnet18", "random") == cnnviz.explore.DEFAULT_QUALITY_METHODS
    view = cnnviz.explanation_quality(name, str(coffee), weights="random", methods=[], steps=4)
    assert tuple(view.scores) == ("rollout", "chefer") and view.layer is None
    for m, s in view.scores.items():
        drawn = cnnviz.attribution(name, str(coffee), m, str(view.class_index), weights="random")
        assert s.map.shape == (14, 14) and np.allclose(s.map, drawn.raw, atol=1e-6), m
        assert s.flat or (0 <= s.deletion <= 1 and 0 <= s.insertion <= 1)
    with pytest.raises(InvalidOptionError, match="vision transformer"):
        cnnviz.explanation_quality("resnet18", str(coffee), weights="random", methods=["rollout"])
