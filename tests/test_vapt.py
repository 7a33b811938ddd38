"""VAPT (:mod:`fftprompt.vapt`): prompts generated from each block's input tokens."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import QUIET, TINY_SYMMETRY
from fftprompt.ablate.plan import _sized_vapt, plan_variants
from fftprompt.methods import TRAINED_METHODS, method_of
from fftprompt.model import create_model, load_model
from fftprompt.prompts import ModelDims, VPTPrompt
from fftprompt.run import compose, train
from fftprompt.vapt import VAPTPrompt
from test_model import images, tiny_backbone

DIMS = ModelDims(embed_dim=32, num_layers=3, patch_size=8, grid_size=(4, 4), in_chans=3)


def _tokens(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 16, 32, generator=torch.Generator().manual_seed(seed))


def _perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    """Moves every parameter off its initial value (the zero-initialised projectors make the prompts constant)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def _vapt_model(deep: bool = True, num_tokens: int = 3, **kwargs):
    return create_model(
        kwargs.pop("backbone", None) or tiny_backbone(),
        4,
        prompt=functools.partial(VAPTPrompt, num_tokens=num_tokens, deep=deep, **kwargs),
    )


@pytest.mark.parametrize("deep", [False, True])
def test_shapes_and_parameter_count_match_the_formula(deep):
    source = VAPTPrompt(DIMS, num_tokens=5, deep=deep, hidden_dim=4, kernel_size=3)
    images_, tokens = torch.randn(2, 3, 32, 32), _tokens()
    assert source(images_, None, tokens).shape == (2, 5, 32)
    assert source.deep == deep and source.per_layer and not source.requires_maps
    adaptive = 2 if deep else 1  # blocks 1 and 2 when deep, the input block when shallow
    positions = (4 - 3 + 1) ** 2
    per_layer = 2 * 32 + 3 * 3 + (positions + 1) * 5  # LayerNorm, shared kernel, token-wise projector
    expected = (5 * 32 if deep else 0) + adaptive * per_layer + 2 * 32 * 4
    assert source.num_parameters() == expected
    per_channel = VAPTPrompt(DIMS, num_tokens=5, deep=deep, hidden_dim=4, shared_kernel=False)
    assert per_channel.num_parameters() == expected + adaptive * (32 - 1) * 9
    if deep:
        assert source.prompts_for_layer(2, tokens).shape == (2, 5, 32)
        with pytest.raises(ValueError, match="prompts_for_layer\\(3\\)"):
            source.prompts_for_layer(3, tokens)
    else:
        with pytest.raises(ValueError, match="deep=False"):
            source.prompts_for_layer(1, tokens)


def test_refuses_a_bad_kernel_and_a_foreign_grid():
    with pytest.raises(ValueError, match="kernel_size=5; expected 1 .. 4"):
        VAPTPrompt(DIMS, kernel_size=5)
    with pytest.raises(ValueError, match="hidden_dim=0"):
        VAPTPrompt(DIMS, hidden_dim=0)
    with pytest.raises(ValueError, match="4x4 grid"):
        VAPTPrompt(DIMS, deep=False)(torch.randn(1, 3, 40, 40), None, torch.randn(1, 25, 32))


def test_adaptive_prompts_start_at_zero_so_deep_vapt_starts_as_vpt_with_zero_deep_prompts():
    """The zero token-wise projectors give g(0) = 0: deep VAPT = VPT-deep with VAPT's static first-layer prompts and
    zero prompts elsewhere; shallow VAPT = VPT-shallow with zero prompts (not the bare backbone)."""
    x = images()
    vapt = _vapt_model(deep=True).eval()
    vpt = create_model(tiny_backbone(), 4, prompt=functools.partial(VPTPrompt, num_tokens=3, deep=True)).eval()
    with torch.no_grad():
        vpt.prompt.prompt_embeddings.zero_()
        vpt.prompt.prompt_embeddings[0] = vapt.prompt.prompt_embeddings
        vpt.head.load_state_dict(vapt.head.state_dict())
    torch.testing.assert_close(vapt.forward_features(x), vpt.forward_features(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(vapt(x), vpt(x), rtol=0, atol=1e-6)

    shallow = _vapt_model(deep=False).eval()
    zeros = create_model(tiny_backbone(), 4, prompt=functools.partial(VPTPrompt, num_tokens=3)).eval()
    with torch.no_grad():
        zeros.prompt.prompt_embeddings.zero_()
    torch.testing.assert_close(shallow.forward_features(x), zeros.forward_features(x), rtol=0, atol=1e-6)
    bare = create_model(tiny_backbone(), 4).eval()
    assert not torch.allclose(shallow.forward_features(x)[:, 0], bare.forward_features(x)[:, 0], atol=1e-4)


def test_each_block_gets_prompts_from_its_own_input_tokens():
    model = _vapt_model(deep=True)
    _perturb(model.prompt)
    model.eval()
    inputs = []
    hooks = [block.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for block in model.backbone.blocks]
    x = images()
    model(x)
    for hook in hooks:
        hook.remove()
    prompts = slice(1, 4)
    expected_first = model.prompt.prompt_embeddings.expand(2, -1, -1)
    torch.testing.assert_close(inputs[0][:, prompts], expected_first)
    # block 1's prompts are the generator applied to block 1's input patch tokens
    torch.testing.assert_close(inputs[1][:, prompts], model.prompt.prompts_for_layer(1, inputs[1][:, 4:]))
    assert inputs[1][:, prompts].abs().sum() > 0


@pytest.mark.parametrize("deep", [False, True])
def test_prompts_depend_on_the_image_and_not_on_the_batch(deep):
    model = _vapt_model(deep=deep)
    _perturb(model.prompt)
    model.eval()
    captured = []
    block = model.backbone.blocks[1 if deep else 0]
    hook = block.register_forward_pre_hook(lambda m, args: captured.append(args[0][:, 1:4]))
    x = images(batch=3)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(3)])
    hook.remove()
    batch_prompts, single = captured[0], torch.cat(captured[1:])
    assert not torch.allclose(batch_prompts[0], batch_prompts[1], atol=1e-4)  # two images, two prompt sets
    torch.testing.assert_close(batch_prompts, single, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("deep", [False, True])
def test_gradients_reach_every_prompt_parameter(deep):
    model = _vapt_model(deep=deep, dropout=0.1)
    # at the zero init only the token-wise projectors get a gradient (their outputs are zero): step off it first
    _perturb(model.prompt)
    model.train()
    model(images()).logsumexp(dim=-1).sum().backward()
    names = [name for name, parameter in model.prompt.named_parameters() if parameter.grad is None]
    assert names == []
    zero = [name for name, p in model.prompt.named_parameters() if p.grad.abs().sum() == 0]
    assert zero == []


def test_save_load_round_trip(tmp_path):
    model = _vapt_model(deep=True, hidden_dim=5, kernel_size=2, shared_kernel=False)
    _perturb(model)
    model.eval()
    x = images()
    expected = model(x)
    model.save_trainable(tmp_path)
    rebuilt = load_model(tmp_path, backbone=tiny_backbone()).eval()
    assert isinstance(rebuilt.prompt, VAPTPrompt) and rebuilt.prompt.config == model.prompt.config
    assert torch.equal(rebuilt(x), expected)


def test_the_method_table_and_the_budget_planner_know_vapt():
    assert TRAINED_METHODS["vapt"].label == "VAPT" and method_of("VAPTPrompt", True, False) == "vapt"
    for dims in (
        ModelDims(embed_dim=96, num_layers=4, patch_size=8, grid_size=(8, 8), in_chans=3),  # the demo at 64 px
        ModelDims(embed_dim=32, num_layers=2, patch_size=8, grid_size=(8, 8), in_chans=3),  # vit_micro: fewer tokens
    ):
        (variant,), description = plan_variants(dims, 4, ["vapt"])
        settings = dict(o.removeprefix("prompt.").split("=") for o in variant.overrides if o.startswith("prompt."))
        assert variant.overrides[0] == "prompt=vapt" and set(settings) == {"num_tokens", "hidden_dim"}
        tokens, hidden = int(settings["num_tokens"]), int(settings["hidden_dim"])
        budget = description["budget"]
        assert VAPTPrompt(dims, num_tokens=tokens, hidden_dim=hidden).num_parameters() <= budget
        assert VAPTPrompt(dims, num_tokens=tokens, hidden_dim=hidden + 1).num_parameters() > budget
        if tokens < 10:
            assert VAPTPrompt(dims, num_tokens=tokens + 1, hidden_dim=1).num_parameters() > budget
    with pytest.raises(ValueError, match="budget 50: even the smallest VAPT"):
        _sized_vapt(dims, 50, 10)  # plan_variants refuses such a budget for the fft prompts first


def test_prompt_vapt_composes_and_trains_one_step(tmp_path):
    cfg = compose(
        [
            "prompt=vapt",
            "backbone=vit_micro",
            "adapter=none",
            "prompt.num_tokens=2",
            *QUIET,
            *TINY_SYMMETRY,
            "trainer.fast_dev_run=true",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    metrics, objects = train(cfg)
    model = objects["module"].model
    assert isinstance(model.prompt, VAPTPrompt) and model.prompt.deep
    assert objects["trainer"].global_step == 1
    assert metrics["trainable_params"] == model.num_trainable_parameters()
    assert load_model(tmp_path / "run", backbone=model.backbone).prompt.config == model.prompt.config
