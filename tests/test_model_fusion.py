"""The fusion heads (sef, moe, stack, max, noisy_or, mean, concat), what a gate sees, and the detector's spectrum
feature and high-pass input: maths against independent references, training stages, save / load round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest_model import SIZE, pixels, randomize_trained, tiny_config, tiny_detector

from sefmodel import DetectorConfig, SEFDetector
from sefmodel.model.combine import combine_experts
from sefmodel.model.fusion import known_fusions
from sefmodel.model.spectrum import highpass, periodic_spectrum, spectrum_dim

FUSIONS = ["sef", "moe", "stack", "max", "noisy_or", "mean", "concat"]


def test_every_fusion_is_registered():
    assert set(FUSIONS) <= set(known_fusions())


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_saves_loads_and_scores_the_same(fusion, tmp_path):
    detector = randomize_trained(tiny_detector(fusion=fusion))
    x = pixels(4)
    with torch.no_grad():
        before = detector(x)
    detector.save_pretrained(tmp_path / "det")
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.config.fusion == fusion
    with torch.no_grad():
        after = loaded(x)
    torch.testing.assert_close(after["logits"], before["logits"])
    assert before["logits"].shape == (4,) and before["expert_logits"].shape == (4, 2)
    assert ("gate_weights" in before) == (fusion in ("sef", "moe"))
    trainable = detector.trainable_parameter_names("fusion")
    assert all(n.startswith("fusion.") for n in trainable)
    assert bool(trainable) == (fusion not in ("max", "noisy_or"))  # the fixed rules have nothing to train


def test_fixed_rules_against_the_experts_probabilities():
    p = torch.sigmoid(randomize_trained(tiny_detector(fusion="max"))(pixels(5))["expert_logits"].detach())
    for fusion, expected in (("max", p.max(dim=1).values), ("noisy_or", 1 - (1 - p).prod(dim=1))):
        detector = randomize_trained(tiny_detector(fusion=fusion))
        with torch.no_grad():
            got = torch.sigmoid(detector(pixels(5))["logits"])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_noisy_or_is_stable_at_extreme_logits():
    from sefmodel.model.fusion import NoisyOrFusion

    head = NoisyOrFusion(2, 4)
    logits = torch.tensor([[-200.0, -200.0], [200.0, -200.0], [0.0, 0.0], [-30.0, -30.0]])
    out = head(torch.zeros(4, 2, 4), logits)["logits"]
    assert torch.isfinite(out).all()
    torch.testing.assert_close(torch.sigmoid(out[2]), torch.tensor(0.75))
    assert out[1] > 100 and out[0] < -60  # saturates at float range, never NaN


def test_moe_keeps_each_experts_own_judgement():
    """A one-hot gate returns exactly that expert's own logit; an untrained gate their mean."""
    detector = randomize_trained(tiny_detector(fusion="moe"))
    x = pixels(3)
    with torch.no_grad():
        own = detector(x)["expert_logits"]
        for i in range(2):
            one_hot = torch.nn.functional.one_hot(torch.full((3,), i), 2).float()
            torch.testing.assert_close(detector(x, gate_weights=one_hot)["logits"], own[:, i], rtol=0, atol=0)
        fresh = tiny_detector(fusion="moe")
        out = fresh(x)
    torch.testing.assert_close(out["logits"], out["expert_logits"].mean(dim=1))


def test_stack_starts_as_the_sum_of_the_experts_logits():
    detector = tiny_detector(fusion="stack")
    with torch.no_grad():
        out = detector(pixels(3))
    torch.testing.assert_close(out["logits"], out["expert_logits"].sum(dim=1))


@pytest.mark.parametrize("gate_input, width", [("features", 2 * 32), ("logits", 2), ("both", 2 * 32 + 2)])
def test_gate_input_decides_what_the_gate_sees(gate_input, width):
    detector = randomize_trained(tiny_detector(fusion="sef", gate_input=gate_input, gate_hidden=0))
    assert detector.fusion.gate.net[0].in_features == width
    with torch.no_grad():
        weights = detector(pixels(4))["gate_weights"]
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(4))


def test_fixed_rules_refuse_a_gate_override():
    detector = tiny_detector(fusion="max")
    with pytest.raises(ValueError, match="max fusion has no gate to override"):
        detector(pixels(2), gate_weights=torch.ones(2, 2) / 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gate_input": "pixels"}, "unknown gate_input 'pixels'"),
        ({"input_filter": "sobel"}, "unknown input_filter 'sobel'"),
        ({"spectrum": "yes"}, "spectrum must be true or false"),
    ],
)
def test_new_config_fields_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_older_config_files_load_with_the_new_fields_at_their_defaults():
    data = tiny_config().to_dict()
    for key in ("gate_input", "spectrum", "input_filter"):
        data.pop(key)
    config = DetectorConfig.from_dict(data)
    assert (config.gate_input, config.spectrum, config.input_filter) == ("features", False, "none")


# ---- the spectrum feature and the high-pass input ---------------------------------------------------------------


def reference_spectrum(rgb: np.ndarray, periods: tuple[int, ...] = (8, 4, 2)) -> np.ndarray:
    """An independent numpy reading of the documented feature: (N, n, n, 3) in [0, 1] -> (N, F)."""
    grey = rgb.mean(-1)
    n = grey.shape[1]
    pad = np.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    blur = sum(pad[:, i : i + n, j : j + n] for i in range(3) for j in range(3)) / 9
    power = np.abs(np.fft.fft2(grey - blur)) ** 2 + 1e-10
    ks = sorted({m * n // p for p in periods for m in range(1, p // 2 + 1)})
    feats = []
    for k in ks:
        for ky, kx in ((k, 0), (0, k), (k, k)):
            peak = power[:, ky % n, kx % n]
            ring = np.mean(
                [power[:, (ky + a) % n, (kx + b) % n] for a in (-1, 0, 1) for b in (-1, 0, 1) if a or b], axis=0
            )
            feats += [np.log(peak), np.log(peak / ring)]
    feats.append(np.log(power.mean((1, 2))))
    return np.stack(feats, 1)


def test_spectrum_matches_an_independent_numpy_reading():
    rgb = np.random.default_rng(0).random((3, 96, 96, 3))
    got = periodic_spectrum(torch.from_numpy(rgb).permute(0, 3, 1, 2).float()).numpy()
    want = reference_spectrum(rgb)
    assert got.shape == want.shape == (3, spectrum_dim(96)) and spectrum_dim(96) == 25
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_spectrum_sees_an_8_px_grid_where_noise_has_none():
    rng = np.random.default_rng(1)
    noise = rng.random((1, 96, 96, 3)) * 0.2 + 0.4
    grid = noise.copy()
    grid[:, ::8, :, :] += 0.1  # a faint row every 8 px: what an 8x upsampling decoder leaves
    a, b = (periodic_spectrum(torch.from_numpy(x).permute(0, 3, 1, 2).float())[0] for x in (noise, grid))
    ratio_k12_y = 1  # k = 96 / 8 = 12 along y: the first frequency, direction y, its log ratio to the neighbours
    assert b[ratio_k12_y] > a[ratio_k12_y] + 2


def test_highpass_removes_colour_and_the_amount_of_detail():
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    out = highpass(x)
    torch.testing.assert_close(highpass(3 * x + 0.7), out, rtol=1e-4, atol=1e-5)  # contrast and brightness
    torch.testing.assert_close(out.flatten(1).std(dim=1, correction=0), torch.ones(2), rtol=1e-4, atol=1e-4)
    assert highpass(torch.full((1, 3, SIZE, SIZE), 0.3)).abs().max() < 1e-3  # a flat image is not amplified


@pytest.mark.parametrize("family", ["dinov2", "mobilenet_v2"])
def test_spectrum_and_highpass_detectors_round_trip(family, tmp_path):
    detector = randomize_trained(tiny_detector(family, spectrum=True, input_filter="highpass"))
    plain = tiny_detector(family)
    extra = spectrum_dim(SIZE)
    assert detector.heads["recon"].in_features == plain.heads["recon"].in_features + extra
    x = pixels(3)
    with torch.no_grad():
        out = detector(x)
        # the spectrum feature is appended, the same for every expert, computed from the un-normalised crop
        mean = torch.tensor(detector.processor.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(detector.processor.image_std).view(1, 3, 1, 1)
        spectrum = periodic_spectrum(x * std + mean)
        for e in range(2):
            torch.testing.assert_close(out["features"][:, e, -extra:], spectrum)
        # the backbone saw the high-passed crop
        filtered = detector.frozen_features(x)
        torch.testing.assert_close(filtered, detector.frozen_features(3 * x + 1))
    detector.save_pretrained(tmp_path / "det")
    loaded = SEFDetector.from_pretrained(tmp_path / "det")
    assert loaded.config.spectrum and loaded.config.input_filter == "highpass"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["logits"], out["logits"])


def test_experts_must_agree_on_spectrum_and_input(tmp_path):
    a = tiny_detector(experts=["recon"], fusion="single", spectrum=True)
    b = tiny_detector(experts=["sr"], fusion="single")
    with pytest.raises(ValueError, match="experts disagree on spectrum"):
        combine_experts([a, b])
    fused = combine_experts([a, tiny_detector(experts=["sr"], fusion="single", spectrum=True)],
                                     fusion="moe", gate_input="logits")  # fmt: skip
    assert fused.config.fusion == "moe" and fused.config.gate_input == "logits" and fused.config.spectrum
