"""Formula-driven pretraining: the IFS maths against independent references, seeded rendering, class separability,
the backbone weights round trip through ``backbone.checkpoint_path=``, and a tiny ``pretrain(cfg)`` end to end."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import QUIET
from fftprompt.backbone import create_backbone, create_pretraining_vit, save_backbone_checkpoint
from fftprompt.pretrain import FractalDB, PretrainModule, batch_seed
from fftprompt.pretrain.render import (
    chaos_game,
    contract,
    fit_to_canvas,
    map_probabilities,
    rasterise_counts,
    sample_contractive_maps,
)

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
# a tiny FractalDB: 32 px images, fewer points
TINY_FORMULA = {"image_size": 32, "search_size": 32, "num_chains": 64, "num_steps": 32}
# a 2-block ViT of width 32 pretrained for a few steps on 32 px fractals of 4 classes
TINY_PRETRAIN = [
    "image_size=32",
    "backbone=vit_micro",
    "source.num_classes=4",
    "source.search_size=32",
    "source.num_chains=32",
    "source.num_steps=16",
    "module.batch_size=8",
    "module.warmup_steps=1",
    "module.history_every=2",
    "trainer.max_steps=3",
    "logger=none",
    *QUIET[1:3],
]


def spectral_norm_reference(maps: torch.Tensor) -> torch.Tensor:
    matrices = maps[..., :4].reshape(*maps.shape[:-1], 2, 2).double()
    return torch.linalg.matrix_norm(matrices, ord=2)


def test_sampled_maps_are_contractions_and_contract_scales_only_the_long_ones():
    generator = torch.Generator().manual_seed(0)
    maps = sample_contractive_maps((64, 8), 0.9, generator)
    assert maps.shape == (64, 8, 6) and maps.abs().max() <= 1
    assert spectral_norm_reference(maps).max() < 0.9
    stretched = maps.clone()
    stretched[..., :4] *= 3
    fixed = contract(stretched, 0.9)
    norms = spectral_norm_reference(fixed)
    long = spectral_norm_reference(stretched) > 0.9
    assert torch.allclose(norms[long], torch.full_like(norms[long], 0.9), atol=1e-5)
    assert torch.equal(fixed[~long], stretched[~long]) and torch.equal(fixed[..., 4:], stretched[..., 4:])


def test_map_probabilities_follow_the_determinants_and_skip_padding():
    maps = torch.tensor([[[0.5, 0, 0, 0.5, 0, 0], [0.2, 0.1, 0, 0.4, 1, 0], [0.9, 0, 0, 0.9, 0, 0]]])
    probabilities = map_probabilities(maps, torch.tensor([2]))
    assert torch.allclose(probabilities, torch.tensor([[0.25 / 0.33, 0.08 / 0.33, 0.0]]))


def test_chaos_game_draws_the_sierpinski_triangle():
    # three maps x -> x / 2 + corner / 2: the attractor is the triangle (0, 0), (1, 0), (0, 1) minus its holes
    maps = torch.tensor([[[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0, 0.5]]])
    probabilities = torch.full((1, 3), 1 / 3)
    points, index = chaos_game(maps, probabilities, 512, 8, 30, torch.Generator().manual_seed(0))
    assert points.shape == (1, 4096, 2) and index.shape == (1, 4096)
    x, y = points[0].unbind(-1)
    assert (x >= -1e-6).all() and (y >= -1e-6).all() and (x + y <= 1 + 1e-6).all()
    # the central hole (x, y > 1/2 ... x + y < 1 with x < 1/2, y < 1/2, x + y > 1/2) holds no points
    hole = (x < 0.5 - 1e-3) & (y < 0.5 - 1e-3) & (x + y > 0.5 + 1e-3)
    assert not hole.any()
    # each map is chosen about a third of the time; the map that produced a point puts it in its corner
    counts = torch.bincount(index[0], minlength=3).float() / index.numel()
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)
    assert (x[index[0] == 1] >= 0.5 - 1e-6).all() and (y[index[0] == 2] >= 0.5 - 1e-6).all()


def test_rasterise_counts_equal_numpy_histogram():
    generator = torch.Generator().manual_seed(1)
    unit = torch.rand(2, 500, 2, generator=generator) * 1.2 - 0.1  # some points fall outside
    index = torch.randint(3, (2, 500), generator=generator)
    counts = rasterise_counts(unit, index, 8, 3)
    assert counts.shape == (2, 8, 8, 3) and counts.dtype == torch.int32
    for image in range(2):
        for m in range(3):
            chosen = unit[image][index[image] == m].numpy()
            expected, _, _ = np.histogram2d(chosen[:, 1], chosen[:, 0], bins=8, range=[[0, 1], [0, 1]])
            np.testing.assert_array_equal(counts[image, :, :, m].numpy(), expected)


def test_fit_to_canvas_centres_and_scales_the_bounding_box():
    points = torch.tensor([[[2.0, 1.0], [6.0, 3.0], [4.0, 2.0]]])
    unit = fit_to_canvas(points, torch.tensor([0.5]), torch.tensor([[0.1, 0.0]]))
    assert torch.allclose(unit, torch.tensor([[[0.35, 0.375], [0.85, 0.625], [0.6, 0.5]]]))


def test_class_search_is_seeded_and_respects_the_threshold():
    first = FractalDB(num_classes=6, seed=3, fill_threshold=0.15, **TINY_FORMULA)
    second = FractalDB(num_classes=6, seed=3, fill_threshold=0.15, **TINY_FORMULA)
    other = FractalDB(num_classes=6, seed=4, fill_threshold=0.15, **TINY_FORMULA)
    assert torch.equal(first.maps, second.maps) and first.fingerprint() == second.fingerprint()
    assert first.fingerprint() != other.fingerprint()
    assert (first.fill_rates >= 0.15).all() and first.maps.shape == (6, 8, 6)
    assert ((first.num_maps >= 2) & (first.num_maps <= 8)).all()
    padding = torch.arange(8)[None, :] >= first.num_maps[:, None]
    assert (first.maps[padding] == 0).all() and (first.maps[~padding] != 0).any(dim=-1).all()
    assert spectral_norm_reference(first.maps).max() < first.max_singular
    with pytest.raises(ValueError, match="fill_threshold"):
        FractalDB(num_classes=3, fill_threshold=0.99, max_candidates=512, **TINY_FORMULA)


def test_rendering_is_reproducible_under_a_seed():
    formula = FractalDB(num_classes=5, **TINY_FORMULA)
    images, labels = formula.sample(16, seed=7)
    again, again_labels = formula.sample(16, seed=7)
    other, _ = formula.sample(16, seed=8)
    assert images.shape == (16, 3, 32, 32) and labels.shape == (16,)
    assert torch.equal(images, again) and torch.equal(labels, again_labels)
    assert not torch.equal(images, other)
    assert images.min() >= 0 and images.max() <= 1 and images.amax(dim=(1, 2, 3)).min() > 0.3
    # a black background with the fractal on it: neither empty nor full
    covered = (images.amax(dim=1) > 0).flatten(1).float().mean(dim=1)
    assert (covered > 0.03).all() and (covered < 0.9).all()
    assert batch_seed(0, 5) != batch_seed(0, 6) != batch_seed(1, 5) and batch_seed(0, 5, 1) != batch_seed(0, 5, 0)


def _symmetric_log_spectrum(images: torch.Tensor) -> torch.Tensor:
    """Flip- and translation-invariant features: the log magnitude spectrum averaged over the four flips."""
    magnitude = torch.fft.fft2(images.mean(dim=1)).abs()
    flips = [
        magnitude.flip(-1).roll(1, -1),
        magnitude.flip(-2).roll(1, -2),
        magnitude.flip(-1, -2).roll((1, 1), (-1, -2)),
    ]
    return torch.log1p((magnitude + sum(flips)) / 4).flatten(1)


def test_classes_are_separable_by_a_nearest_class_mean():
    formula = FractalDB(num_classes=5, **TINY_FORMULA)
    train_images, train_labels = formula.sample(200, seed=1)
    test_images, test_labels = formula.sample(200, seed=2)
    train, test = _symmetric_log_spectrum(train_images), _symmetric_log_spectrum(test_images)
    means = torch.stack([train[train_labels == k].mean(dim=0) for k in range(5)])
    accuracy = (torch.cdist(test, means).argmin(dim=1) == test_labels).float().mean()
    assert accuracy > 0.6  # chance: 0.2
    # instances of one class lie closer to each other than to other classes
    distances = torch.cdist(test, test)
    same = test_labels[:, None] == test_labels[None, :]
    off_diagonal = ~torch.eye(len(test), dtype=torch.bool)
    assert distances[same & off_diagonal].mean() < 0.9 * distances[~same].mean()


def test_backbone_weights_round_trip_through_checkpoint_path(tmp_path):
    from fftprompt.run import build_backbone, compose

    torch.manual_seed(0)
    model = create_pretraining_vit("vit_demo_patch8", num_classes=7, **TINY_VIT)
    assert all(p.requires_grad for p in model.parameters()) and model.training
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    path = save_backbone_checkpoint(model, tmp_path / "tiny.safetensors")
    stored = load_file(str(path))
    assert "head.weight" not in stored and all(v.dtype == torch.float16 for v in stored.values())
    with pytest.raises(ValueError, match="exists"):
        save_backbone_checkpoint(model, path)
    cfg = compose(
        [f"backbone.{k}={v}" for k, v in TINY_VIT.items() if k != "img_size"]
        + ["data.image_size=32", f"backbone.checkpoint_path={path}", "paths.output_dir=/nonexistent"]
    )
    backbone, _ = build_backbone(cfg)
    loaded = backbone.model.state_dict()
    expected = {k: v.to(torch.float16).float() for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert set(loaded) == set(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    # the same file at another resolution: the positional embedding is resampled, the blocks are the same
    larger = create_backbone("vit_demo_patch8", checkpoint_path=path, **{**TINY_VIT, "img_size": 48})
    assert larger.model.pos_embed.shape[1] == 1 + 36
    assert torch.equal(larger.model.blocks[0].attn.qkv.weight, expected["blocks.0.attn.qkv.weight"])


def _pretrain_config(output_dir, *overrides):
    from fftprompt.run import compose

    return compose([*TINY_PRETRAIN, f"paths.output_dir={output_dir}", *overrides], config_name="pretrain")


@pytest.mark.slow
def test_tiny_pretraining_writes_loadable_weights_and_a_model_card(tmp_path):
    from fftprompt.run import pretrain

    card, objects = pretrain(_pretrain_config(tmp_path / "run"))
    paths = objects["paths"]
    weights = paths["weights"]
    assert weights == tmp_path / "run" / "vit_demo_patch8_fractaldb_supervised.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert paths["sha256"].read_text() == f"{digest}  {weights.name}\n"
    saved = json.loads(paths["json"].read_text())
    assert saved["sha256"] == digest and saved["steps"] == 3 and saved["images_seen"] == 24
    assert saved["num_classes"] == 4 and saved["source"]["classes_sha256"] == objects["module"].source.fingerprint()
    assert saved["images_per_second"] > 0 and saved["hardware"]["device"] == "cpu"
    assert [h["step"] for h in saved["history"]] == [2, 3] and saved["final_train_acc"] == card["history"][-1]["acc"]
    assert "## Learning curve" in paths["markdown"].read_text() and digest in paths["markdown"].read_text()
    assert "pretrained from scratch" in paths["markdown"].read_text()
    # the weights changed from their initialisation and load as a backbone
    backbone = create_backbone("vit_demo_patch8", checkpoint_path=weights, **TINY_VIT)
    trained = objects["model"].state_dict()
    assert torch.equal(backbone.model.patch_embed.proj.weight, trained["patch_embed.proj.weight"].half().float())
    torch.manual_seed(0)
    initial = create_pretraining_vit("vit_demo_patch8", num_classes=4, **TINY_VIT).state_dict()
    assert not torch.equal(initial["blocks.0.attn.qkv.weight"], trained["blocks.0.attn.qkv.weight"])
    # nothing is overwritten silently
    with pytest.raises(ValueError, match="exist"):
        pretrain(_pretrain_config(tmp_path / "run"))


@pytest.mark.slow
def test_contrastive_pretraining_needs_no_classifier_and_records_its_objective(tmp_path):
    from fftprompt.run import pretrain

    card, objects = pretrain(_pretrain_config(tmp_path / "run", "objective=simclr", "objective.hidden_dim=16"))
    assert objects["paths"]["weights"].name == "vit_demo_patch8_fractaldb_simclr.safetensors"
    assert card["objective"]["objective"] == "simclr" and card["objective"]["augment"]["crop_scale"] == [0.2, 1.0]
    assert objects["model"].num_classes == 0 and "## Objective" in objects["paths"]["markdown"].read_text()
    # the projection head trained and is not part of the written backbone
    written = load_file(str(objects["paths"]["weights"]))
    assert not any(key.startswith(("head.", "projector.")) for key in written)
    assert 0 <= card["final_train_acc"] <= 1


@pytest.mark.slow
def test_head_warmup_trains_the_head_and_leaves_the_vit_as_it_started(tmp_path):
    from fftprompt.run import pretrain

    torch.manual_seed(0)
    initial = create_pretraining_vit("vit_demo_patch8", num_classes=0, **TINY_VIT).state_dict()
    overrides = ("objective=simclr", "objective.hidden_dim=16", "module.head_warmup_steps=2")
    _, objects = pretrain(_pretrain_config(tmp_path / "run", *overrides, "trainer.max_steps=2"))
    trained = objects["model"].state_dict()
    assert all(torch.equal(initial[key], trained[key]) for key in initial)
    projector = objects["module"].objective.projector[0].weight
    assert projector.grad is not None  # the head trained
    # one step after the warm-up, the ViT trains too
    _, objects = pretrain(_pretrain_config(tmp_path / "more", *overrides, "trainer.max_steps=3"))
    continued = objects["model"].state_dict()["blocks.0.attn.qkv.weight"]
    assert not torch.equal(initial["blocks.0.attn.qkv.weight"], continued)
    with pytest.raises(ValueError, match="head_warmup_steps"):
        PretrainModule(torch.nn.Identity(), None, None, batch_size=8, mean=(0.5,), std=(0.5,), head_warmup_steps=-1)


@pytest.mark.slow
def test_pretraining_is_reproducible_and_resumes_to_the_same_weights(tmp_path):
    import shutil

    from fftprompt.run import pretrain

    pretrain(_pretrain_config(tmp_path / "a", "callbacks.model_checkpoint.every_n_train_steps=2"))
    pretrain(_pretrain_config(tmp_path / "b"))
    digest = {
        p: (tmp_path / p / "vit_demo_patch8_fractaldb_supervised.sha256").read_text().split()[0] for p in ("a", "b")
    }
    assert digest["a"] == digest["b"]
    # run "a" checkpointed after two of its three steps: resuming there gives the uninterrupted run's weights
    checkpoint = tmp_path / "c" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(tmp_path / "a" / "checkpoints" / "last.ckpt", checkpoint)
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 2
    resumed, _ = pretrain(_pretrain_config(tmp_path / "c", "ckpt_path=last"))
    assert resumed["steps"] == 3 and [h["step"] for h in resumed["history"]] == [2, 3]
    assert (tmp_path / "c" / "vit_demo_patch8_fractaldb_supervised.sha256").read_text().split()[0] == digest["a"]


# -- the shipped demo weights ----------------------------------------------------------------------------------------


def test_shipped_demo_weights_match_their_sha256_and_model_card():
    from fftprompt.weights import DEMO_WEIGHTS, WEIGHTS_DIR

    weights = WEIGHTS_DIR / DEMO_WEIGHTS
    assert weights.is_file() and weights.stat().st_size < 25 * 2**20
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.with_suffix(".sha256").read_text() == f"{digest}  {DEMO_WEIGHTS}\n"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert card["sha256"] == digest and card["backbone"]["name"] == "vit_demo_patch8"
    assert card["images_seen"] == card["steps"] * card["batch_size"] > 0
    assert digest in weights.with_suffix(".md").read_text()
    # chosen by the probe on validation splits only, continued from the first (fractal) weights, both recorded
    selection = card["selection"]
    assert selection["chosen_on"] == "val" and selection["chosen_step"] <= card["steps"]
    assert max(entry["score"] for entry in selection["curve"]) == selection["chosen_score"]
    assert selection["chosen_score"] > selection["curve"][0]["score"]  # it beat its starting weights
    first = WEIGHTS_DIR / "vit_demo_patch8_fractaldb.safetensors"
    assert card["initial_weights"]["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest()
    assert "Checkpoint selection" in weights.with_suffix(".md").read_text()
    assert "pretrained from `vit_demo_patch8_fractaldb.safetensors`" in weights.with_suffix(".md").read_text()


def test_the_first_fractal_weights_stay_loadable_by_name():
    from safetensors.torch import load_file

    from fftprompt.run import build_backbone, compose
    from fftprompt.weights import WEIGHTS_DIR

    first = "vit_demo_patch8_fractaldb.safetensors"
    cfg = compose(["paths.output_dir=out", f"backbone.checkpoint_path=${{fftprompt.weights:{first}}}"])
    backbone, _ = build_backbone(cfg)
    stored = load_file(str(WEIGHTS_DIR / first))
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(value, stored[key].float()), key
    card = json.loads((WEIGHTS_DIR / first).with_suffix(".json").read_text())
    assert card["sha256"] == hashlib.sha256((WEIGHTS_DIR / first).read_bytes()).hexdigest()


@pytest.mark.slow
def test_default_config_finds_the_shipped_weights_from_any_directory(tmp_path):
    import os
    import subprocess
    import sys

    from fftprompt.weights import DEMO_WEIGHTS, WEIGHTS_DIR

    script = "from fftprompt.run import compose; print(compose(['paths.output_dir=out']).backbone.checkpoint_path)"
    source = str(WEIGHTS_DIR.parents[1])  # the src/ directory this test suite imports fftprompt from
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == str(WEIGHTS_DIR / DEMO_WEIGHTS)


def test_default_backbone_loads_the_shipped_weights_and_null_gives_the_random_one_back():
    from safetensors.torch import load_file

    from fftprompt.run import build_backbone, compose
    from fftprompt.weights import DEMO_WEIGHTS, WEIGHTS_DIR

    shipped = load_file(str(WEIGHTS_DIR / DEMO_WEIGHTS))
    pretrained, _ = build_backbone(compose(["paths.output_dir=out"]))
    for key, value in pretrained.model.state_dict().items():
        assert torch.equal(value, shipped[key].float()), key
    torch.manual_seed(3)
    random, _ = build_backbone(
        compose(["paths.output_dir=out", "backbone.checkpoint_path=null", "backbone.pretrained=false"])
    )
    torch.manual_seed(3)
    reference = create_backbone("vit_demo_patch8", img_size=64)
    for key, value in random.model.state_dict().items():
        assert torch.equal(value, reference.model.state_dict()[key]), key
    assert not torch.equal(random.model.blocks[0].attn.qkv.weight, pretrained.model.blocks[0].attn.qkv.weight)
