"""The token layout ``[prefix] [prompts] [patches]`` and the pooling modes read from it."""

from __future__ import annotations

import functools
import re

import pytest
import torch
import torch.nn.functional as F

from conftest import QUIET, TINY_MODEL, TINY_SYMMETRY, tiny_config
from fftprompt.backbone import classifier_config
from fftprompt.heads import ClassificationHead
from fftprompt.model import PromptedViT, create_model, load_model
from fftprompt.prompts import ModelDims, VPTPrompt
from fftprompt.run import build, compose
from fftprompt.tokens import TokenLayout, pool, pooled_width
from test_model import images, tiny_backbone, tiny_model


@pytest.mark.parametrize(
    ("name", "extra", "prefix", "class_tokens"),
    [
        ("vit_tiny_patch16_224", {}, 1, (0,)),  # [cls]
        ("vit_small_patch16_224", {"reg_tokens": 4}, 5, (0,)),  # [cls, 4 registers]
        ("deit_tiny_distilled_patch16_224", {}, 2, (0, 1)),  # [cls, dist]
        ("vit_small_patch16_224", {"class_token": False, "reg_tokens": 2, "global_pool": "avg"}, 2, ()),
    ],
)
def test_layout_slices_match_hand_computed_positions(name, extra, prefix, class_tokens):
    backbone = tiny_backbone(name, **extra)
    assert backbone.model.num_prefix_tokens == prefix  # timm's own count
    layout = create_model(
        backbone, 3, prompt=functools.partial(VPTPrompt, num_tokens=3), pooling="prompt"
    ).token_layout()
    # 32 px images, 8 px patches: a 4 x 4 grid after `prefix` tokens and 3 prompts
    assert layout == TokenLayout(prefix, 3, (4, 4), class_tokens)
    indices = torch.arange(prefix + 3 + 16)
    assert indices[layout.prefix].tolist() == list(range(prefix))
    assert indices[layout.prompts].tolist() == [prefix, prefix + 1, prefix + 2]
    assert indices[layout.patches].tolist() == list(range(prefix + 3, prefix + 19))
    assert layout.length == prefix + 19 and layout.num_patches == 16
    # without prompts the patches start at timm's num_prefix_tokens, and the grid follows the images
    bare = backbone.token_layout((2, 3))
    assert bare.prompts == slice(prefix, prefix) and bare.patches == slice(prefix, prefix + 6)
    tokens = torch.arange(2 * bare.length * 5.0).reshape(2, bare.length, 5)
    grid = bare.patch_grid(tokens)
    assert grid.shape == (2, 5, 2, 3) and torch.equal(grid[:, :, 1, 2], tokens[:, prefix + 5])


def test_layout_refuses_wrong_token_counts_and_class_positions():
    layout = TokenLayout(1, 2, (2, 2))
    with pytest.raises(ValueError, match="6 tokens; the layout has 7"):
        pool(torch.zeros(1, 6, 4), layout, "mean")
    with pytest.raises(ValueError, match=r"class_tokens=\(1,\) lie outside the 1 prefix tokens"):
        TokenLayout(1, 0, (2, 2), (1,))


def test_pool_modes_against_a_hand_computation():
    # tokens t[b, i, d] = 100 b + 10 i + d: every readout is an easily computed average
    layout = TokenLayout(2, 3, (2, 2), class_tokens=(0, 1))
    tokens = (100 * torch.arange(2)[:, None, None] + 10 * torch.arange(9)[None, :, None] + torch.arange(4)).float()
    cls = (tokens[:, 0] + tokens[:, 1]) / 2  # rows 0, 1 -> 5 + d
    prompts = tokens[:, 2:5].mean(1)  # rows 2, 3, 4 -> 30 + d
    patches = tokens[:, 5:9].mean(1)  # rows 5..8 -> 65 + d
    assert torch.equal(cls[0], torch.tensor([5.0, 6, 7, 8])) and torch.equal(prompts[1], 130 + torch.arange(4.0))
    assert torch.equal(pool(tokens, layout, "cls"), cls)
    assert torch.equal(pool(tokens, layout, "mean"), patches)
    assert torch.equal(pool(tokens, layout, "prompt"), prompts)
    assert torch.equal(pool(tokens, layout, "cls+prompt"), torch.cat([cls, prompts], dim=1))
    assert torch.equal(pool(tokens, layout, "cls+prompt", norm=lambda x: -x), -torch.cat([cls, prompts], dim=1))
    assert [pooled_width(mode, 4) for mode in ("cls", "mean", "prompt", "cls+prompt")] == [4, 4, 4, 8]


@pytest.mark.parametrize("pooling", ["prompt", "cls+prompt"])
def test_prompt_pooling_of_the_model_reads_the_prompt_outputs_after_fc_norm(pooling):
    # fc_norm=True: timm leaves the final norm out and normalises each pooled vector instead
    backbone = tiny_backbone("vit_tiny_patch16_224", fc_norm=True)
    model = tiny_model("vpt", backbone=backbone, pooling=pooling).eval()
    x = images()
    tokens = model.forward_features(x)
    fc_norm = backbone.model.fc_norm
    assert isinstance(fc_norm, torch.nn.LayerNorm)

    def norm(vector):
        return F.layer_norm(vector, (32,), fc_norm.weight, fc_norm.bias, fc_norm.eps)

    prompt_mean = norm(tokens[:, 1:4].mean(dim=1))  # [cls] [3 prompts] [16 patches]
    expected = prompt_mean if pooling == "prompt" else torch.cat([norm(tokens[:, 0]), prompt_mean], dim=1)
    pooled = model.forward_pooled(x)
    torch.testing.assert_close(pooled, expected)
    assert model.head.classifier.in_features == pooled_width(pooling, 32) == expected.shape[1]
    torch.testing.assert_close(model(x), model.head(expected))


@pytest.mark.parametrize("pooling", ["prompt", "cls+prompt"])
def test_prompt_pooling_without_prompts_is_refused(pooling):
    with pytest.raises(
        ValueError, match=rf"pooling='{re.escape(pooling)}' reads the prompt tokens' outputs but the model has no"
    ):
        create_model(tiny_backbone(), 3, prompt=None, pooling=pooling)
    with pytest.raises(ValueError, match="no prompt tokens"):
        pool(torch.zeros(1, 17, 4), TokenLayout(1, 0, (4, 4)), pooling)


def test_a_head_of_the_wrong_width_is_refused():
    backbone = tiny_backbone()
    prompt = VPTPrompt(ModelDims.of(backbone, None), num_tokens=2)
    with pytest.raises(ValueError, match=r"ClassificationHead.embed_dim=32; pooling='cls\+prompt' gives 64-wide"):
        PromptedViT(backbone, None, prompt, ClassificationHead(32, 3), pooling="cls+prompt")


def test_save_load_round_trip_keeps_a_new_pooling_mode(tmp_path):
    model = tiny_model("vpt", pooling="cls+prompt").eval()
    with torch.no_grad():
        model.head.classifier.weight.normal_()
    model.save_trainable(tmp_path)
    loaded = load_model(tmp_path, backbone=tiny_backbone()).eval()
    assert loaded.pooling == "cls+prompt" and loaded.head.classifier.in_features == 64
    x = images()
    torch.testing.assert_close(loaded(x), model(x))
    # a model that pools otherwise is not silently given these weights (same shapes for cls and prompt)
    with pytest.raises(ValueError, match="pooling is 'cls' in the checkpoint but 'prompt' in this model"):
        tiny_model("vpt", pooling="prompt").load_trainable(
            tiny_model("vpt", pooling="cls").save_trainable(tmp_path / "cls")
        )


def test_task_pooling_config_reaches_the_model(tmp_path):
    model = build(tiny_config(tmp_path / "run", "task.pooling=cls+prompt"))["model"]
    assert model.pooling == "cls+prompt" and model.head.classifier.in_features == 2 * model.backbone.embed_dim
    with pytest.raises(ValueError, match="pooling='prompt' reads the prompt tokens' outputs"):
        no_prompt = [o for o in TINY_MODEL if not o.startswith("prompt.")] + ["prompt=none", "task.pooling=prompt"]
        build(compose([*no_prompt, *QUIET, *TINY_SYMMETRY, f"paths.output_dir={tmp_path / 'bare'}"]))


@pytest.mark.parametrize("pooling", ["prompt", "cls+prompt"])
def test_the_timm_export_refuses_prompt_pooling(pooling):
    with pytest.raises(ValueError, match=rf"pooling='{re.escape(pooling)}' has no timm classifier equivalent"):
        classifier_config(tiny_backbone(), 3, pooling)
