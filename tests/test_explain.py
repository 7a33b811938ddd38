"""Explanations: attention rollout, generator attention, integrated gradients over frequency maps, figures."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fftprompt.backbone import create_backbone
from fftprompt.data import SymmetryDataModule
from fftprompt.explain import (
    attention_rollout,
    class_profiles,
    explain,
    integrated_gradients,
    prompt_attention,
    rollout_matrix,
)
from fftprompt.model import PromptedViT, create_model
from fftprompt.prompts import FrequencyPrompt, VPTPrompt
from fftprompt.rundir import load_run
from fftprompt.spectral import FrequencyFeatures

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_model(prompt=None, seed: int = 0, features: bool = True, scales=(), **backbone_kwargs) -> PromptedViT:
    torch.manual_seed(seed)
    backbone = create_backbone("vit_tiny_patch16_224", **{**TINY, **backbone_kwargs})
    prompt = prompt or functools.partial(FrequencyPrompt, num_tokens=3, hidden_dim=16, num_heads=2, spectrum_dim=8)
    frequency = functools.partial(FrequencyFeatures, statistics_scales=scales) if features else None
    return create_model(backbone, 4, prompt=prompt, features=frequency).eval()


def images(batch: int = 3, seed: int = 0, size: int = 32) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------ rollout


def test_rollout_matrix_is_row_stochastic_and_deep_prompts_are_fresh_sources():
    # tokens: 0 = CLS, 1 = prompt slot, 2 and 3 = patches; one head, two blocks
    n = 4
    to_patch = torch.zeros(1, 1, n, n)
    to_patch[..., 2] = 1.0  # block 0: every token attends to patch 2
    to_prompt = torch.zeros(1, 1, n, n)
    to_prompt[..., 1] = 1.0  # block 1: every token attends to the prompt slot
    shallow = rollout_matrix([to_patch, to_prompt])
    deep = rollout_matrix([to_patch, to_prompt], deep_prompts=(1, 1))
    assert shallow.shape == (1, n, n) and deep.shape == (1, n, n + 1)  # one fresh prompt column for block 1
    assert torch.allclose(shallow.sum(-1), torch.ones(1, n)) and torch.allclose(deep.sum(-1), torch.ones(1, n))
    # block 0 gives every token 1/2 self + 1/2 patch 2; block 1 gives CLS 1/2 self + 1/2 prompt slot
    assert shallow[0, 0, 2] == pytest.approx(0.5)  # via CLS (1/4) and via the shallow prompt, which saw patch 2 (1/4)
    assert deep[0, 0, 2] == pytest.approx(0.25)  # the deep prompt of block 1 is new: it carries nothing of patch 2
    assert deep[0, 0, n] == pytest.approx(0.5) and deep[0, 0, 1] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "prompt",
    [
        None,
        functools.partial(VPTPrompt, num_tokens=2, deep=True),
        functools.partial(FrequencyPrompt, num_tokens=3, deep=True, hidden_dim=16, num_heads=2, spectrum_dim=8),
    ],
    ids=["fft", "vpt_deep", "fft_deep"],
)
def test_attention_rollout_of_a_prompted_vit(prompt):
    model = tiny_model(prompt, features=prompt is None or prompt.func is FrequencyPrompt)
    x = images()
    before = model(x)
    fused = [block.attn.fused_attn for block in model.backbone.blocks]
    rollout = attention_rollout(model, x)
    prompts, blocks = model.prompt.num_tokens, model.backbone.num_blocks
    n = 1 + prompts + 16
    assert rollout.patches.shape == (3, 4, 4)
    assert torch.allclose(rollout.patches.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert rollout.matrix.shape == (3, n, n + (blocks - 1) * prompts * model.prompt.deep)
    assert torch.allclose(rollout.matrix.sum(-1), torch.ones(3, n), atol=1e-5)
    shares = rollout.patch_share + rollout.prompt_share + rollout.prefix_share
    assert torch.allclose(shares, torch.ones(3), atol=1e-5)
    assert (rollout.prompt_share > 0.01).all()  # the CLS token does draw on the prompts
    # the capture restores timm's attention and leaves no hooks
    assert [block.attn.fused_attn for block in model.backbone.blocks] == fused
    assert all(not block.attn.attn_drop._forward_hooks for block in model.backbone.blocks)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_rollout_uses_the_attention_timm_computes():
    # one block: the rollout is (mean_heads(A) + I) / 2, with A recomputed here from the block's q and k
    model = tiny_model(depth=1)
    x = images(2)
    tokens, _ = model.backbone.embed(x)
    prompts = model.prompt(x, model.compute_maps(x), tokens[:, 1:])
    sequence = torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)
    attn = model.backbone.blocks[0].attn
    q, k, _ = attn.qkv(model.backbone.blocks[0].norm1(sequence)).reshape(2, 20, 3, 2, 16).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) * 16**-0.5, dim=-1).mean(dim=1)
    rollout = attention_rollout(model, x)
    assert torch.allclose(rollout.matrix, (expected + torch.eye(20)) / 2, atol=1e-5)
    cls_to_patches = expected[:, 0, 4:] / 2
    assert torch.allclose(rollout.patches.flatten(1), cls_to_patches / cls_to_patches.sum(1, keepdim=True), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "extra", "pooling", "rows"),
    [
        # rows of the rollout matrix averaged into the pooled token: prefix, then 2 prompts, then 16 patches
        ("deit_tiny_distilled_patch16_224", {}, "cls", [0, 1]),  # class and distillation token (timm's average)
        ("vit_tiny_patch16_224", {"reg_tokens": 2}, "cls", [0]),  # registers are not pooled
        ("vit_tiny_patch16_224", {"reg_tokens": 2}, "mean", list(range(5, 21))),
        ("vit_tiny_patch16_224", {}, "prompt", [1, 2]),
        ("vit_tiny_patch16_224", {}, "cls+prompt", None),  # the mean of the two readouts
    ],
)
def test_rollout_pools_the_rows_as_the_model_pools_the_tokens(name, extra, pooling, rows):
    torch.manual_seed(0)
    backbone = create_backbone(name, **{**TINY, **extra})
    model = create_model(backbone, 4, prompt=functools.partial(VPTPrompt, num_tokens=2), pooling=pooling).eval()
    rollout = attention_rollout(model, images())
    matrix, prefix = rollout.matrix, backbone.num_prefix_tokens
    pooled = (matrix[:, 0] + matrix[:, 1:3].mean(1)) / 2 if rows is None else matrix[:, rows].mean(1)
    patches = pooled[:, prefix + 2 :]
    torch.testing.assert_close(rollout.patches.flatten(1), patches / patches.sum(1, keepdim=True))
    torch.testing.assert_close(rollout.prompt_share, pooled[:, prefix : prefix + 2].sum(1))
    torch.testing.assert_close(rollout.prefix_share, pooled[:, :prefix].sum(1))


def test_prompt_attention_is_the_generators_normalised_cross_attention():
    model = tiny_model()
    attention = prompt_attention(model, images())
    assert attention.shape == (3, 3, 4, 4)
    assert torch.allclose(attention.sum(dim=(2, 3)), torch.ones(3, 3), atol=1e-5)
    with pytest.raises(ValueError, match="needs a FrequencyPrompt"):
        prompt_attention(tiny_model(functools.partial(VPTPrompt, num_tokens=2), features=False), images())


# ------------------------------------------------------------------------------------------ integrated gradients


def test_model_forward_takes_precomputed_maps():
    model = tiny_model()
    x = images()
    assert torch.equal(model(x, maps=model.compute_maps(x)), model(x))
    assert not torch.allclose(model(x, maps=model.compute_maps(x.flip(0))), model(x))
    with pytest.raises(ValueError, match="maps= given but"):
        plain = tiny_model(functools.partial(VPTPrompt, num_tokens=2), features=False)
        plain(x, maps=model.compute_maps(x))


@pytest.mark.parametrize(("baseline", "scales"), [("zero", ()), ("mean", ()), ("zero", (0.5, 2))])
def test_integrated_gradients_are_complete_and_additive_over_groups(baseline, scales):
    # a generator whose output matters: a larger output projection than the (VPT-like) small init; with map
    # statistics at other patch sizes too (held fixed along the path: the attributions stay complete)
    prompt = functools.partial(FrequencyPrompt, num_tokens=3, hidden_dim=16, num_heads=2, init_std=1.0)
    model = tiny_model(functools.partial(prompt, use_statistics=bool(scales)), scales=scales)
    x = images(4)
    attribution = integrated_gradients(model, x, steps=64, baseline=baseline)
    assert attribution.compact.shape == (4, model.features.num_channels, 4, 4)
    assert attribution.spectrum is not None and attribution.spectrum.shape == (4, 2, 3, 4, 4, 8, 8)
    with torch.no_grad():
        logits = model(x)
    assert torch.equal(attribution.target, logits.argmax(dim=1))
    assert torch.allclose(attribution.score, logits.gather(1, attribution.target[:, None]).squeeze(1), atol=1e-5)
    delta = attribution.delta
    assert delta.abs().min() > 1e-4  # a non-trivial check
    assert torch.allclose(attribution.total, delta, rtol=0.02, atol=1e-6)
    totals = attribution.group_totals()
    assert list(totals) == ["symmetry", "orientation", "radial", "cross_patch", "spectrum"]
    assert torch.allclose(torch.stack(list(totals.values())).sum(0), attribution.total, atol=1e-6)
    for kind in ("mass", "total"):
        shares = attribution.group_shares(kind)
        assert torch.allclose(torch.stack(list(shares.values())).sum(0), torch.ones(4), atol=1e-5)
    # spectrum entries outside the generator's central crop never reach the prompts
    crop = model.prompt.crop
    start = 4 - crop // 2
    outside = attribution.spectrum.clone()
    outside[..., start : start + crop, start : start + crop] = 0
    assert outside.abs().max() == 0


def test_channels_the_generator_ignores_get_no_attribution():
    prompt = functools.partial(
        FrequencyPrompt, num_tokens=3, hidden_dim=16, num_heads=2, use_spectrum=False, init_std=1.0
    )
    model = tiny_model(prompt)
    symmetry = model.features.channel_groups["symmetry"]
    with torch.no_grad():
        model.prompt.patch_mlp[0].weight[:, symmetry] = 0.0  # the first layer reads descriptors in compact order
    attribution = integrated_gradients(model, images(2), steps=8)
    assert attribution.spectrum is None
    assert attribution.compact[:, symmetry].abs().max() == 0
    assert attribution.group_shares()["symmetry"].max() == 0
    assert attribution.group_shares()["orientation"].min() > 0


def _train(model: PromptedViT, images: torch.Tensor, labels: torch.Tensor, shuffle_maps: bool, steps: int) -> None:
    """Adam on the prompt and head; with ``shuffle_maps`` the prompts see the maps of other images of the batch."""
    optimiser = torch.optim.Adam([p for group in model.trainable_parameters().values() for p in group], lr=3e-3)
    batches, permutations = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(images), (32,), generator=batches)
        x, y = images[index], labels[index]
        source = x[torch.randperm(len(x), generator=permutations)] if shuffle_maps else x
        loss = F.cross_entropy(model(x, maps=model.compute_maps(source)), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()


@pytest.mark.slow
def test_trained_prompts_attribute_more_to_symmetry_than_a_control_that_saw_shuffled_maps():
    # Classes told apart only by diagonal mirror symmetry, the symmetric texture filling the image: with 16-pixel
    # patches the patches on the symmetry axis are mirror symmetric themselves, so the symmetry maps carry the label
    # (a linear probe on them reaches ~0.84 test accuracy vs ~0.5 on orientation, radial or cross-patch maps).
    # The control is trained identically (same initialisation, batches, steps) except that its prompts see the maps
    # of other images of the batch, so the maps carry nothing about the label.
    classes = ("none", "mirror_diag", "mirror_antidiag")
    data = SymmetryDataModule(
        image_size=32, classes=classes, num_train=512, num_val=2, num_test=48, region_size=(1.0, 1.0), seed=0
    )
    train = [data.dataset("train")[i] for i in range(512)]
    test = [data.dataset("test")[i] for i in range(48)]
    x_train, y_train = torch.stack([x for x, _ in train]), torch.stack([y for _, y in train])
    x_test, y_test = torch.stack([x for x, _ in test]), torch.stack([y for _, y in test])
    prompt = functools.partial(FrequencyPrompt, num_tokens=4, hidden_dim=32, num_heads=2, use_spectrum=False)
    shares, accuracy = {}, {}
    for shuffle in (False, True):
        torch.manual_seed(0)
        backbone = create_backbone("vit_tiny_patch16_224", img_size=32, embed_dim=32, depth=2, num_heads=2)
        torch.manual_seed(1)
        model = create_model(backbone, len(classes), prompt=prompt, features=FrequencyFeatures)
        _train(model, x_train, y_train, shuffle_maps=shuffle, steps=120)
        with torch.no_grad():
            accuracy[shuffle] = (model(x_test).argmax(1) == y_test).float().mean().item()
        attribution = integrated_gradients(model, x_test[:32], target=y_test[:32], steps=16)
        shares[shuffle] = attribution.group_shares()["symmetry"].mean().item()
    assert accuracy[False] > accuracy[True] + 0.15, accuracy  # the prompts did learn from the maps
    assert shares[False] > shares[True] + 0.1, shares


# ----------------------------------------------------------------------------------------------- class profiles


def test_class_profiles_are_per_class_means_over_patches():
    features = FrequencyFeatures(patch_size=8)
    x = images(4)
    labels = torch.tensor([0, 1, 1, 2])
    profiles = class_profiles(features, [(x[:2], labels[:2]), (x[2:], labels[2:])], ["a", "b", "c"])
    maps = features(x)
    assert torch.allclose(profiles.symmetry[1], maps.symmetry[1:3].mean(dim=(0, 2, 3)), atol=1e-6)
    assert torch.allclose(profiles.orientation[2], maps.orientation[3].mean(dim=(1, 2)), atol=1e-6)
    assert profiles.patches.tolist() == [16, 32, 16]
    # segmentation masks: a patch takes the label most of its pixels have
    masks = torch.zeros(1, 32, 32, dtype=torch.long)
    masks[0, :8, :8] = 1
    masks[0, 8:12, :8] = 1  # half of patch (1, 0): ties go to the lower label
    profiles = class_profiles(features, [(x[:1], masks)], ["background", "object"])
    assert profiles.patches.tolist() == [15, 1]
    assert torch.allclose(profiles.symmetry[1], maps.symmetry[0, :, 0, 0], atol=1e-6)
    limited = class_profiles(features, [(x, labels)], ["a", "b", "c"], max_images=1)
    assert limited.patches.tolist() == [16, 0, 0]


# ----------------------------------------------------------------------------------------- finished runs (CLI)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):

    from conftest import tiny_config
    from fftprompt.run import train

    run = tmp_path_factory.mktemp("explain") / "run"
    _, objects = train(tiny_config(run, "trainer.max_epochs=1"))
    return run, objects["model"]


@pytest.mark.slow
def test_load_run_rebuilds_the_trained_model(finished_run):
    run, trained = finished_run
    loaded = load_run(run)
    x = images(2)
    trained.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), trained(x), atol=1e-5)
    assert type(loaded.datamodule).__name__ == "SymmetryDataModule" and loaded.datamodule.image_size == 32


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000, path
    with Image.open(path) as image:
        assert min(image.size) > 200
        assert np.asarray(image.convert("L")).std() > 10  # not a blank canvas


@pytest.mark.slow
def test_explain_writes_figures_and_markdown(finished_run, tmp_path):
    run, _ = finished_run
    written = explain(run, "test:3", tmp_path / "out", ig_steps=4)
    assert set(written) == {
        "rollout",
        "prompt_attention",
        "attribution_maps",
        "attribution_groups",
        "class_profiles",
        "markdown",
    }
    for name, path in written.items():
        if name != "markdown":
            _assert_png(path)
    markdown = written["markdown"].read_text()
    for path in written.values():
        if path.suffix == ".png":
            assert f"]({path.name})" in markdown
    assert "| symmetry |" in markdown and "test #0" in markdown

    folder = tmp_path / "images"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(np.random.default_rng(k).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
            folder / f"{k}.png"
        )
    written = explain(run, str(folder / "*.png"), tmp_path / "files", ig_steps=2, profiles=False)
    assert "class_profiles" not in written
    assert "| 0.png |" in written["markdown"].read_text()
    _assert_png(written["rollout"])


def test_explain_rejects_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="expected a finished fftprompt-train run directory"):
        explain(tmp_path, "test:2")
    model = tiny_model()
    with pytest.raises(ValueError, match="baseline='none'"):
        integrated_gradients(model, images(1), baseline="none")  # type: ignore[arg-type]
    from fftprompt.data.io import image_paths

    with pytest.raises(ValueError, match="names no image file"):
        image_paths([str(tmp_path / "missing*.png")])


def test_explain_config_mirrors_the_function():
    import inspect

    from hydra import compose, initialize_config_dir

    import fftprompt

    with initialize_config_dir(str(Path(fftprompt.__file__).parent / "configs"), version_base="1.3"):
        cfg = compose("explain", overrides=["run_dir=runs/x", "images=test:4"])
    assert set(cfg) == set(inspect.signature(explain).parameters)
    assert cfg.images == "test:4" and cfg.baseline == "zero" and cfg.out_dir is None


@pytest.mark.slow
def test_explain_model_covers_segmentation_and_prompts_without_maps(tmp_path):
    from fftprompt.explain import explain_model
    from fftprompt.heads import LinearDecoder

    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **TINY)
    segmenter = create_model(
        backbone,
        2,
        task="segmentation",
        prompt=functools.partial(FrequencyPrompt, num_tokens=2, hidden_dim=16, num_heads=2, spectrum_dim=8),
        features=FrequencyFeatures,
        head=LinearDecoder,
    )
    masks = torch.zeros(2, 32, 32, dtype=torch.long)
    masks[:, 8:24, 8:24] = 1
    x = images(2)
    profiles = class_profiles(segmenter.features, [(x, masks)], ["background", "object"])
    written = explain_model(
        segmenter, x, tmp_path / "seg", mean=(0.5,) * 3, std=(0.25,) * 3, labels=masks, profiles=profiles, ig_steps=8
    )
    assert {"rollout", "prompt_attention", "attribution_maps", "attribution_groups", "class_profiles"} <= set(written)
    assert "| 0 | image 0 | - |" in written["markdown"].read_text()

    vpt = tiny_model(functools.partial(VPTPrompt, num_tokens=2), features=False)
    written = explain_model(vpt, x, tmp_path / "vpt", mean=(0.5,) * 3, std=(0.25,) * 3, class_names=list("abcd"))
    assert set(written) == {"rollout", "markdown"}
    assert "does not read frequency maps" in written["markdown"].read_text()
    _assert_png(written["rollout"])


@pytest.mark.slow
def test_write_report_links_small_explanation_figures(tmp_path):
    from fftprompt.explain import explain_model
    from fftprompt.report import write_report

    model = tiny_model()
    x = images(2)
    explanations = explain_model(
        model, x, tmp_path / "figures" / "explain", mean=(0.5,) * 3, std=(0.25,) * 3, ig_steps=8, dpi=50
    )
    report = write_report(tmp_path, {"test/acc": 0.5}, explanations=explanations).read_text()
    for name in ("rollout", "prompt_attention", "attribution_maps", "attribution_groups"):
        assert f"](figures/explain/{name}.png)" in report
        assert (tmp_path / "figures" / "explain" / f"{name}.png").stat().st_size > 2000
    assert "](figures/explain/explain.md)" in report and (tmp_path / "figures" / "explain" / "explain.md").is_file()
    assert "explain" not in write_report(tmp_path / "plain", {"test/acc": 0.5}).read_text()


@pytest.mark.slow
def test_fftprompt_explain_command(finished_run, tmp_path, monkeypatch, capsys):
    from fftprompt.cli import explain_main

    run, _ = finished_run
    out = tmp_path / "cli"
    monkeypatch.chdir(tmp_path)
    argv = ["fftprompt-explain", f"run_dir={run}", "images=test:2", f"out_dir={out}", "ig_steps=4", "profiles=false"]
    monkeypatch.setattr("sys.argv", argv)
    explain_main()
    assert f"explanations: {out / 'explain.md'}" in capsys.readouterr().out
    assert (out / "attribution_maps.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli"]  # Hydra writes no .hydra folder or log file
    monkeypatch.setattr("sys.argv", ["fftprompt-explain", f"run_dir={tmp_path / 'missing'}"])
    with pytest.raises(SystemExit) as exit_info:
        explain_main()
    assert exit_info.value.code == 2
    assert "adapter.json not found" in capsys.readouterr().err
