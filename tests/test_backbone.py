from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import save_file

from fftprompt.backbone import Backbone, create_backbone

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny(name: str = "vit_tiny_patch16_224", **kwargs) -> Backbone:
    return create_backbone(name, **{**TINY, **kwargs})


@pytest.mark.parametrize(
    ("name", "extra", "prefix", "has_cls"),
    [
        ("vit_tiny_patch16_224", {}, 1, True),
        ("deit_tiny_distilled_patch16_224", {}, 2, True),
        ("vit_small_patch16_224", {"reg_tokens": 4}, 5, True),
        ("vit_small_patch16_224", {"class_token": False, "global_pool": "avg"}, 0, False),
        ("vit_small_patch16_224", {"class_token": False, "reg_tokens": 2, "global_pool": "avg"}, 2, False),
    ],
)
def test_architectures_expose_their_geometry(name, extra, prefix, has_cls):
    backbone = tiny(name, **extra)
    assert backbone.name == name
    assert (backbone.embed_dim, backbone.patch_size, backbone.num_blocks, backbone.in_chans) == (32, 8, 2, 3)
    assert backbone.num_prefix_tokens == prefix
    assert backbone.has_class_token is has_cls
    assert backbone.img_size == (32, 32) and backbone.grid_size == (4, 4)
    tokens, grid = backbone.embed(torch.randn(2, 3, 32, 32))
    assert grid == (4, 4)
    assert tokens.shape == (2, prefix + 16, 32)


def test_backbone_is_frozen_and_stays_in_eval():
    backbone = tiny(drop_rate=0.5, drop_path_rate=0.5)
    assert all(not p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert backbone.training
    assert not any(m.training for m in backbone.model.modules())
    images = torch.randn(2, 3, 32, 32)
    # drop path and dropout are off: two calls in "training" agree
    assert torch.equal(backbone(images), backbone(images))


def test_mean_std_follow_the_pretrained_config():
    assert tiny().mean == (0.5, 0.5, 0.5)
    deit = tiny("deit_tiny_distilled_patch16_224")
    assert deit.mean == pytest.approx((0.485, 0.456, 0.406))
    assert deit.std == pytest.approx((0.229, 0.224, 0.225))


def test_dynamic_img_size_reports_the_input_grid():
    backbone = tiny(dynamic_img_size=True)
    tokens, grid = backbone.embed(torch.randn(1, 3, 48, 40))
    assert grid == (6, 5)
    assert tokens.shape == (1, 1 + 30, 32)


def test_rejects_other_architectures_and_unknown_names():
    with pytest.raises(ValueError, match="ResNet; expected a VisionTransformer"):
        create_backbone("resnet18")
    with pytest.raises(ValueError, match="ResNet; expected a VisionTransformer"):
        create_backbone("resnet18", pretrained=True)  # checked on the meta device, before any download
    with pytest.raises(ValueError, match="unknown timm model 'not_a_model'"):
        create_backbone("not_a_model")
    with pytest.raises(ValueError, match="num_classes"):
        create_backbone("vit_tiny_patch16_224", num_classes=10)


def _source_state(seed: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    import timm  # only to build a reference checkpoint with a classifier, as a real one has

    model = timm.create_model("vit_tiny_patch16_224", num_classes=5, **TINY)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loads_prefixed_safetensors_checkpoint(tmp_path):
    state = _source_state()
    path = tmp_path / "weights.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # classifier keys are dropped silently, nothing else is off
        backbone = tiny(checkpoint_path=path)
    loaded = backbone.model.state_dict()
    assert torch.equal(loaded["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"])
    assert torch.equal(loaded["pos_embed"], state["pos_embed"])
    assert backbone.config["checkpoint_path"] == str(path)
    assert not backbone.model.pos_embed.requires_grad


def test_loads_wrapped_torch_checkpoint_and_resamples_pos_embed(tmp_path):
    state = _source_state()
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    backbone = create_backbone("vit_tiny_patch16_224", checkpoint_path=path, **{**TINY, "img_size": 48})
    pos_embed = backbone.model.pos_embed
    assert pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(pos_embed[:, 0], state["pos_embed"][:, 0])  # the class token's entry is kept as is
    assert torch.equal(backbone.model.patch_embed.proj.weight, state["patch_embed.proj.weight"])


def test_a_checkpoint_missing_blocks_is_an_error_unless_allowed(tmp_path):
    state = {k: v for k, v in _source_state().items() if not k.startswith("blocks.1.")}  # a shallower model's
    state["extra.thing"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=r"lacks \d+ of the model's weights: \['blocks.1.*allow_missing_weights"):
        tiny(checkpoint_path=path)
    with pytest.warns(UserWarning, match=r"missing \(left at init\): \['blocks.1.*\['extra.thing'\]"):
        backbone = tiny(checkpoint_path=path, allow_missing_weights=True)
    assert torch.equal(backbone.model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    assert backbone.config["allow_missing_weights"] is True  # recorded: a reloaded run accepts them again
    # unexpected keys alone only warn
    complete = {**_source_state(), "extra.thing": torch.zeros(3)}
    save_file(complete, str(path))
    with pytest.warns(UserWarning, match=r"unexpected \(ignored\): \['extra.thing'\]"):
        tiny(checkpoint_path=path)


def test_bad_checkpoints_raise(tmp_path):
    unrelated = tmp_path / "unrelated.safetensors"
    save_file({"conv1.weight": torch.zeros(4, 3, 3, 3)}, str(unrelated))
    with pytest.raises(ValueError, match="matches none of the model's"):
        tiny(checkpoint_path=unrelated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="could not be read"):
        tiny(checkpoint_path=garbage)
    with pytest.raises(ValueError, match="does not exist"):
        tiny(checkpoint_path=tmp_path / "missing.safetensors")
    wrong_width = {k: v for k, v in _source_state().items() if k.startswith("blocks.0.attn.qkv")}
    wrong_width["blocks.0.attn.qkv.weight"] = torch.zeros(3 * 16, 16)
    narrow = tmp_path / "narrow.safetensors"
    save_file(wrong_width, str(narrow))
    with pytest.raises(ValueError, match="does not fit"):
        tiny(checkpoint_path=narrow)
