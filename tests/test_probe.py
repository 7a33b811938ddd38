"""fftprompt-probe: FFT statistics, the L-BFGS linear probe and k-NN against independent references; the command."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fftprompt.probe import (
    evaluate_probes,
    extract_features,
    fft_statistics,
    fit_linear_probe,
    knn_predict,
    knn_votes,
    random_splits,
)
from fftprompt.spectral import FrequencyFeatures

# the tiny backbone (2 blocks, width 32) on a few generated 32 px symmetry images
TINY = ["backbone=vit_micro", "ks=[1,5]"]
TINY_DATA = [
    "data=symmetry",
    "data.image_size=32",
    "data.num_train=40",
    "data.num_val=20",
    "data.num_test=20",
]


def _blobs(seed: int, n: int = 60, dims: int = 5, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dims, generator=generator, dtype=torch.float64) * 1.5
    features = centres[labels] + torch.randn(n, dims, generator=generator, dtype=torch.float64)
    return features * torch.tensor([1.0, 10.0, 0.1, 3.0, 1.0], dtype=torch.float64) + 5.0, labels


def test_fft_statistics_are_46_means_and_stds_of_the_compact_maps():
    images = torch.rand(2, 3, 32, 24, generator=torch.Generator().manual_seed(0))
    features = FrequencyFeatures(patch_size=8)
    statistics = fft_statistics(images, features)
    assert statistics.shape == (2, 46)  # 23 compact channels (6 symmetry, 2 + 8 orientation, 4 radial, 3 cross-patch)
    compact = features(images).compact().numpy().reshape(2, 23, -1)  # (B, C_f, 4 * 3 patches)
    assert compact.shape[-1] == 12
    np.testing.assert_allclose(statistics[:, :23].numpy(), compact.mean(axis=2), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(statistics[:, 23:].numpy(), compact.std(axis=2), rtol=1e-4, atol=1e-6)


def test_fft_statistics_of_radial_bands_match_numpy():
    """The radial-band means recomputed from numpy's FFT of the Hann-windowed, mean-removed patches."""
    image = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    features = FrequencyFeatures(patch_size=8, groups=["radial"])
    statistics = fft_statistics(image, features)[0, :4].numpy()
    patches = image[0, 0].numpy().reshape(2, 8, 2, 8).transpose(0, 2, 1, 3).reshape(4, 8, 8)
    window = features.window.numpy()  # plain Hann; numpy's fftshift centres the spectrum
    patches = (patches - patches.mean(axis=(1, 2), keepdims=True)) * window
    power = np.abs(np.fft.fftshift(np.fft.fft2(patches), axes=(1, 2))) ** 2
    bands = features.radial_index.numpy().reshape(8, 8)
    fractions = [[power[i][bands == b].sum() / power[i][bands >= 0].sum() for b in range(4)] for i in range(4)]
    np.testing.assert_allclose(statistics, np.mean(fractions, axis=0), rtol=1e-4, atol=1e-6)


def test_extract_features_concatenates_fft_then_tokens_and_checks_its_inputs():
    generator = torch.Generator().manual_seed(2)
    batches = [(torch.rand(3, 3, 16, 16, generator=generator), torch.tensor([0, 1, 2])) for _ in range(2)]
    frequency = FrequencyFeatures(patch_size=8)

    def tokens(images):
        return images.mean(dim=(2, 3))  # (B, 3)

    features, labels = extract_features(batches, ["both", "fft"], backbone=tokens, frequency=frequency)
    assert labels.tolist() == [0, 1, 2, 0, 1, 2] and features["both"].shape == (6, 49)
    expected = torch.cat([torch.cat([fft_statistics(x, frequency), tokens(x)], dim=1) for x, _ in batches])
    torch.testing.assert_close(features["both"], expected.double())
    torch.testing.assert_close(features["fft"], features["both"][:, :46])
    with pytest.raises(ValueError, match="need a backbone"):
        extract_features(batches, ["backbone"], frequency=frequency)


def _numpy_objective(params: np.ndarray, x: np.ndarray, y: np.ndarray, classes: int, weight_decay: float):
    weight, bias = params[: classes * x.shape[1]].reshape(classes, -1), params[classes * x.shape[1] :]
    logits = x @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(probabilities[np.arange(n), y]).mean() + 0.5 * weight_decay * (weight**2).sum()
    residual = probabilities.copy()
    residual[np.arange(n), y] -= 1
    grad_w = residual.T @ x / n + weight_decay * weight
    return loss, np.concatenate([grad_w.ravel(), residual.mean(axis=0)])


@pytest.mark.parametrize("weight_decay", [1e-3, 1e-1])
def test_linear_probe_matches_scipy_lbfgs_on_the_standardised_features(weight_decay):
    features, labels = _blobs(0)
    probe = fit_linear_probe(features, labels, 3, weight_decay)
    x = ((features - features.mean(0)) / features.std(0, correction=0)).numpy()
    reference = minimize(
        _numpy_objective,
        np.zeros(3 * 5 + 3),
        args=(x, labels.numpy(), 3, weight_decay),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 5000},
    )
    np.testing.assert_allclose(probe.weight.numpy().ravel(), reference.x[:15], atol=2e-4)
    np.testing.assert_allclose(probe.bias.numpy(), reference.x[15:], atol=2e-4)
    _, gradient = _numpy_objective(
        np.concatenate([probe.weight.numpy().ravel(), probe.bias.numpy()]), x, labels.numpy(), 3, weight_decay
    )
    assert np.abs(gradient).max() < 1e-6  # the optimality condition
    expected = (x @ reference.x[:15].reshape(3, 5).T + reference.x[15:]).argmax(1)
    assert probe.predict(features).tolist() == expected.tolist()


def test_linear_probe_refuses_a_zero_weight_decay():
    with pytest.raises(ValueError, match="weight_decay=0"):
        fit_linear_probe(*_blobs(0), 3, 0.0)


@pytest.mark.parametrize("k", [1, 4, 60])
def test_knn_matches_brute_force_numpy(k):
    train, train_labels = _blobs(1)
    queries, _ = _blobs(2, n=15)
    a = train.numpy() / np.linalg.norm(train.numpy(), axis=1, keepdims=True)
    expected_votes = np.zeros((15, 3))
    for i, query in enumerate(queries.numpy()):
        similarities = [float(query @ row) / np.linalg.norm(query) for row in a]
        for j in sorted(range(len(a)), key=lambda j: -similarities[j])[:k]:
            expected_votes[i, int(train_labels[j])] += np.exp(similarities[j] / 0.07)
    votes = knn_votes(train, train_labels, queries, 3, k)
    np.testing.assert_allclose(votes.numpy(), expected_votes, rtol=1e-9)
    assert knn_predict(train, train_labels, queries, 3, k).tolist() == expected_votes.argmax(1).tolist()
    with pytest.raises(ValueError, match="k=61"):
        knn_votes(train, train_labels, queries, 3, 61)


def test_random_splits_are_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(3), 10)
    splits = random_splits(labels, [4, 2, 3], repeats=2, seed=5)
    for split in splits:
        assert [len(split[s]) for s in ("train", "val", "test")] == [12, 6, 9]
        assert not set(split["train"]) & set(split["test"]) and not set(split["val"]) & set(split["test"])
        assert np.bincount(labels[split["train"]]).tolist() == [4, 4, 4]
    assert splits[0]["train"].tolist() != splits[1]["train"].tolist()
    assert random_splits(labels, [4, 2, 3], 2, 5)[1]["test"].tolist() == splits[1]["test"].tolist()
    with pytest.raises(ValueError, match="classes"):
        random_splits(labels, [5, 3, 3], 1, 0)


@pytest.mark.parametrize("select_on", ["val", "test"])
def test_evaluate_probes_chooses_on_the_selection_split(select_on):
    features, labels = _blobs(3, n=90)
    splits = random_splits(labels.numpy(), [10, 10, 10], repeats=1, seed=0)
    split = {name: torch.as_tensor(index) for name, index in splits[0].items()}
    results = evaluate_probes(
        {"x": features}, labels, splits, 3, weight_decays=[1e-3, 1e2], ks=[1, 10, 31], select_on=select_on
    )
    linear, knn = results["x"]["linear"][0], results["x"]["knn"][0]
    for weight_decay, accuracy in linear["grid"].items():
        probe = fit_linear_probe(features[split["train"]], labels[split["train"]], 3, float(weight_decay))
        expected = (probe.predict(features[split[select_on]]) == labels[split[select_on]]).double().mean()
        assert accuracy == pytest.approx(float(expected))
    scores = list(linear["grid"].values())
    assert linear["chosen"]["weight_decay"] == [1e-3, 1e2][int(np.argmax(scores))]
    assert list(knn["grid"]) == ["1", "10"]  # k=31 exceeds the 30 training images
    assert knn["chosen"]["k"] in (1, 10) and 0 <= knn["test"]["acc"] <= 1


def test_evaluate_probes_refuses_an_empty_selection_split():
    features, labels = _blobs(3, n=90)
    splits = random_splits(labels.numpy(), [10, 0, 10], repeats=1, seed=0)
    with pytest.raises(ValueError, match="select_on='val' but the val split is empty"):
        evaluate_probes({"x": features}, labels, splits, 3)


def _config(tmp_path, *overrides, data=TINY_DATA):
    from fftprompt.run import compose

    return compose([*TINY, *data, f"out_dir={tmp_path / 'probe'}", *overrides], config_name="probe")


def test_probe_command_writes_metrics_and_table_and_never_overwrites(tmp_path):
    from fftprompt.probe.command import probe

    lines: list[str] = []
    metrics = probe(_config(tmp_path), echo=lines.append)
    assert metrics["feature_dims"] == {"fft": 46, "backbone": 32, "both": 78}
    assert metrics["data"]["split_sizes"] == [{"train": 40, "val": 20, "test": 20}]
    written = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert written["summary"]["both"]["linear"]["acc_mean"] == metrics["summary"]["both"]["linear"]["acc_mean"]
    for name in ("fft", "backbone", "both"):
        for classifier in ("linear", "knn"):
            entry = written["results"][name][classifier][0]
            assert 0 <= entry["test"]["acc"] <= 1 and len(entry["grid"]) == (4 if classifier == "linear" else 2)
    table = (tmp_path / "probe" / "probe.md").read_text()
    assert "| both | 78 | linear |" in table and "chosen on the validation split" in table
    assert any("features of 40 train images" in line for line in lines)
    with pytest.raises(ValueError, match="already holds a probe result"):
        probe(_config(tmp_path))
    probe(_config(tmp_path, "overwrite=true", "feature_sets=[fft]", "classifiers=[knn]"), echo=lines.append)
    assert len(list(tmp_path.glob("probe.replaced-*"))) == 1  # the earlier result moved aside, not deleted
    assert json.loads((tmp_path / "probe" / "metrics.json").read_text())["feature_dims"] == {"fft": 46}


def test_probe_features_of_a_run_use_its_prompts(tmp_path):
    """run_dir=: the run's model (prompts and adapters included) on the run's own data, results in <run>/probe."""
    from conftest import tiny_config
    from fftprompt.probe.command import probe
    from fftprompt.run import train

    run = tmp_path / "run"
    train(tiny_config(run, "trainer.max_epochs=1"))
    metrics = probe(
        _config(tmp_path, f"run_dir={run}", "feature_sets=[backbone]", "classifiers=[knn]", "out_dir=null", data=[]),
        echo=lambda _: None,
    )
    assert (run / "probe" / "metrics.json").is_file() and metrics["source"]["run_dir"] == str(run)
    assert metrics["data"]["split_sizes"] == [{"train": 16, "val": 8, "test": 12}]  # the run's own data


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "no data: give data=<config>"),
        (["split=fancy"], "split='fancy'"),
        (["pooling=max"], "pooling='max'"),
        (["feature_sets=[pixels]"], "feature_sets='pixels'"),
    ],
)
def test_probe_bad_input_is_a_value_error(tmp_path, overrides, message):
    from fftprompt.probe.command import probe

    data = TINY_DATA if overrides else []  # no data and no run_dir
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        probe(_config(tmp_path, *overrides, data=data), echo=lambda _: None)


@pytest.mark.slow
def test_probe_command_line_error_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from fftprompt.cli import probe_main; probe_main()", f"out_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: no data: give data=<config>")


@pytest.mark.slow
def test_probe_reproduces_the_fft_statistics_row_on_dtd_300(sample_data, tmp_path):
    """Issue 21's table: 46 FFT statistics, 3 random 40/40 splits per class, weight decay chosen on test: 0.542."""
    from fftprompt.probe.command import probe
    from fftprompt.run import compose

    cfg = compose(
        [
            "data=dtd",
            f"data.root={sample_data / 'dtd_300'}",
            "data.image_size=64",
            "split=random",
            "per_class=[40,0,40]",
            "select_on=test",
            "feature_sets=[fft]",
            "classifiers=[linear]",
            f"out_dir={tmp_path}",
        ],
        config_name="probe",
    )
    metrics = probe(cfg, echo=lambda _: None)
    assert metrics["data"]["split_sizes"] == [{"train": 200, "val": 0, "test": 200}] * 3
    assert metrics["summary"]["fft"]["linear"]["acc_mean"] == pytest.approx(0.542, abs=0.02)
