from __future__ import annotations

import copy
import json
import warnings

import pytest
import timm
import torch
from torch import nn
from torch.func import functional_call

from fftprompt.fourierft import (
    FourierFTConfig,
    FourierFTLinear,
    count_fourierft_matrices,
    fourierft_locations,
    fourierft_state_dict,
    inject_fourierft,
    load_fourierft_state_dict,
    merge_fourierft,
)
from fftprompt.fourierft import functional as fourierft_functional
from fftprompt.fourierft.bank import FourierFTBank
from fftprompt.fourierft.functional import _choose_grad_mode, _fft_batch

peft_fourierft = pytest.importorskip("peft.tuners.fourierft.layer")
from peft import FourierFTConfig as PeftFourierFTConfig  # noqa: E402
from peft import inject_adapter_in_model  # noqa: E402

GRAD_MODES = ("dense", "fft")


def tiny_vit(num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        pretrained=False,
        num_classes=num_classes,
    )
    return model.requires_grad_(False).eval()


def images(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def peft_layer(linear: nn.Linear, n_frequency: int, scaling: float = 150.0, seed: int = 777) -> nn.Module:
    config = PeftFourierFTConfig(
        n_frequency=n_frequency, scaling=scaling, random_loc_seed=seed, init_weights=False, target_modules=["x"]
    )
    return peft_fourierft.FourierFTLinear(linear, "default", config, n_frequency=n_frequency)


# ---------------------------------------------------------------------------------------------------------------------
# numerics against PEFT


def test_locations_are_peft_s_and_reproducible_from_seed():
    linear = nn.Linear(24, 40)
    reference = peft_layer(copy.deepcopy(linear), n_frequency=100, seed=5).indices["default"]
    assert torch.equal(fourierft_locations(40, 24, 100, seed=5), reference)
    assert torch.equal(FourierFTLinear(linear, FourierFTConfig(n_frequency=100, seed=5)).locations, reference)
    assert torch.equal(fourierft_locations(40, 24, 100, seed=5), fourierft_locations(40, 24, 100, seed=5))
    assert not torch.equal(fourierft_locations(40, 24, 100, seed=6), reference)
    flat = reference[0] * 24 + reference[1]
    assert flat.unique().numel() == 100 and reference[0].max() < 40 and reference[1].max() < 24


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize(("d_out", "d_in"), [(48, 32), (32, 48), (33, 17), (31, 31)])
def test_linear_matches_peft_output_delta_and_gradient(grad_mode, d_out, d_in):
    torch.manual_seed(0)
    linear = nn.Linear(d_in, d_out)
    reference = peft_layer(copy.deepcopy(linear), n_frequency=200)
    ours = FourierFTLinear(copy.deepcopy(linear), FourierFTConfig(n_frequency=200, grad_mode=grad_mode))
    with torch.no_grad():
        ours.fourierft_spectrum["full"].copy_(reference.fourierft_spectrum["default"])
    x = torch.randn(3, 5, d_in)
    expected, actual = reference(x), ours(x)
    assert rel_err(actual, expected) < 1e-6
    torch.testing.assert_close(ours.get_delta_weight(), reference.get_delta_weight("default"), rtol=0, atol=0)
    upstream = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad((expected * upstream).sum(), reference.fourierft_spectrum["default"])
    (actual_grad,) = torch.autograd.grad((actual * upstream).sum(), ours.fourierft_spectrum["full"])
    assert rel_err(actual_grad, expected_grad) < 1e-5


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_timm_qkv_matches_peft_on_qkv(grad_mode):
    model = tiny_vit()
    reference = inject_adapter_in_model(
        PeftFourierFTConfig(
            n_frequency=60, scaling=150.0, random_loc_seed=777, init_weights=False, target_modules=["qkv"]
        ),
        copy.deepcopy(model),
    )
    adapted = inject_fourierft(model, FourierFTConfig(n_frequency=60, targets=("qkv",), grad_mode=grad_mode))
    assert adapted == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    with torch.no_grad():
        for name in adapted:
            model.get_submodule(name).fourierft_spectrum["full"].copy_(
                reference.get_submodule(name).fourierft_spectrum["default"]
            )
    x = images()
    expected, actual = reference(x), model(x)
    assert rel_err(actual, expected) < 1e-5
    expected.square().sum().backward()
    actual.square().sum().backward()
    for name in adapted:
        expected_grad = reference.get_submodule(name).fourierft_spectrum["default"].grad
        assert rel_err(model.get_submodule(name).fourierft_spectrum["full"].grad, expected_grad) < 1e-4


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_q_v_blocks_equal_peft_on_separate_q_k_v_layers(grad_mode):
    torch.manual_seed(0)
    dim = 16
    qkv = nn.Linear(dim, 3 * dim)
    ours = FourierFTLinear(copy.deepcopy(qkv), FourierFTConfig(n_frequency=40, grad_mode=grad_mode), blocks=("v", "q"))
    assert ours.block_names == ("q", "v")
    assert set(dict(ours.named_parameters())) == {
        "fourierft_spectrum.q",
        "fourierft_spectrum.v",
        "base_layer.weight",
        "base_layer.bias",
    }
    parts = []
    for index, block in enumerate("qkv"):
        part = nn.Linear(dim, dim)
        with torch.no_grad():
            part.weight.copy_(qkv.weight[index * dim : (index + 1) * dim])
            part.bias.copy_(qkv.bias[index * dim : (index + 1) * dim])
        if block in "qv":
            part = peft_layer(part, n_frequency=40)
            with torch.no_grad():
                part.fourierft_spectrum["default"].copy_(ours.fourierft_spectrum[block])
        parts.append(part)
    x = torch.randn(4, 3, dim)
    expected = torch.cat([part(x) for part in parts], dim=-1)
    actual = ours(x)
    assert rel_err(actual, expected) < 1e-6
    # the k rows are untouched
    torch.testing.assert_close(ours.get_delta_weight()[dim : 2 * dim], torch.zeros(dim, dim), rtol=0, atol=0)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (actual * upstream).sum().backward()
    for index, block in ((0, "q"), (2, "v")):
        expected_grad = parts[index].fourierft_spectrum["default"].grad
        assert rel_err(ours.fourierft_spectrum[block].grad, expected_grad) < 1e-5


def test_vit_base_q_v_has_72000_coefficients_named_fourierft():
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", pretrained=False)
    model.requires_grad_(False)
    adapted = inject_fourierft(model, FourierFTConfig(n_frequency=3000, targets=("q", "v")))
    assert adapted == [f"blocks.{i}.attn.qkv" for i in range(12)]
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == 72_000
    assert len(trainable) == 24 and all("fourierft" in name for name in trainable)
    # one wrapper per qkv: q and v blocks (768 x 768) share their locations
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, FourierFTLinear) and layer.block_names == ("q", "v") and layer.block_rows == 768


# ---------------------------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize(
    ("blocks", "d_out", "d_in"), [(None, 12, 10), (None, 7, 13), (("q", "v"), 24, 8), (("k",), 9, 7)]
)
def test_gradcheck_float64(grad_mode, blocks, d_out, d_in):
    torch.manual_seed(1)
    layer = FourierFTLinear(
        nn.Linear(d_in, d_out), FourierFTConfig(n_frequency=20, grad_mode=grad_mode), blocks=blocks
    ).double()
    keys = list(layer.fourierft_spectrum)

    def forward(x, weight, bias, *coefficients):
        parameters = {f"fourierft_spectrum.{k}": c for k, c in zip(keys, coefficients, strict=True)}
        parameters |= {"base_layer.weight": weight, "base_layer.bias": bias}
        return functional_call(layer, parameters, (x,))

    inputs = (
        torch.randn(2, 3, d_in, dtype=torch.float64),
        layer.base_layer.weight.detach().clone(),
        layer.base_layer.bias.detach().clone(),
        *(layer.fourierft_spectrum[k].detach().clone() for k in keys),
    )
    assert torch.autograd.gradcheck(forward, tuple(t.requires_grad_() for t in inputs))


def test_batched_dense_route_matches_peft_and_passes_gradcheck(accelerator_route):
    # the accelerators' route (deltas in autograd, one rfft2 per bank group) run on the CPU
    test_timm_qkv_matches_peft_on_qkv("dense")
    test_q_v_blocks_equal_peft_on_separate_q_k_v_layers("dense")
    for blocks, d_out, d_in in ((None, 12, 10), (("q", "v"), 24, 8), (("k",), 9, 7)):
        test_gradcheck_float64("dense", blocks, d_out, d_in)


def test_auto_grad_mode_picks_fft_for_large_cpu_layers_and_dense_otherwise():
    cpu, cuda, f32 = torch.device("cpu"), torch.device("cuda"), torch.float32
    assert _choose_grad_mode("auto", cpu, f32, 1, 2304, 768, 3000) == "fft"  # ViT-B qkv
    assert _choose_grad_mode("auto", cpu, f32, 1, 3072, 768, 3000) == "fft"  # ViT-B fc1
    assert _choose_grad_mode("auto", cpu, f32, 1, 4096, 1024, 3000) == "fft"  # ViT-L fc1
    assert _choose_grad_mode("auto", cpu, f32, 1, 1152, 384, 3000) == "dense"  # ViT-S qkv
    assert _choose_grad_mode("auto", cpu, f32, 1, 32, 32, 500) == "dense"
    assert _choose_grad_mode("auto", cpu, torch.bfloat16, 1, 2304, 768, 3000) == "dense"  # fast bf16 products
    assert _choose_grad_mode("auto", cuda, f32, 1, 3072, 768, 3000) == "dense"
    assert _choose_grad_mode("fft", cuda, f32, 1, 32, 32, 500) == "fft"
    assert _choose_grad_mode("dense", cpu, f32, 1, 3072, 768, 3000) == "dense"


def test_fft_gradient_over_several_token_chunks_matches_dense():
    torch.manual_seed(0)
    x = torch.randn(2, 600, 24)  # 1200 tokens: three chunks of the FFT path
    linear = nn.Linear(24, 40)
    grads = {}
    for grad_mode in GRAD_MODES:
        torch.manual_seed(1)
        layer = FourierFTLinear(copy.deepcopy(linear), FourierFTConfig(n_frequency=300, grad_mode=grad_mode))
        out = layer(x)
        out.square().sum().backward()
        grads[grad_mode] = layer.fourierft_spectrum["full"].grad
    assert rel_err(grads["fft"], grads["dense"]) < 1e-5


def test_only_coefficients_and_head_train_and_frozen_weights_get_no_grad():
    model = tiny_vit()
    model.head.requires_grad_(True)
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "proj", "fc1", "fc2")))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    labels = torch.tensor([0, 3])
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(images()), labels).backward()
        optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        if "fourierft" in name or name.startswith("head."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert changed, name
        else:
            assert p.grad is None and not changed, name
    assert len(optimizer.state) == len(trainable)


# ---------------------------------------------------------------------------------------------------------------------
# merging, caching, state


def test_merge_unmerge_round_trip_and_merged_output_equals_unmerged():
    torch.manual_seed(0)
    linear = nn.Linear(32, 96)
    original = linear.weight.detach().clone()
    layer = FourierFTLinear(linear, FourierFTConfig(n_frequency=100), blocks=("q", "v"))
    x = torch.randn(5, 32)
    unmerged = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.base_layer.weight, original + layer.get_delta_weight())
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, original, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)


def test_merge_fourierft_returns_plain_model_with_equal_outputs():
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "fc2")))
    x = images()
    with torch.no_grad():
        adapted = model(x)
    merged = merge_fourierft(model)
    assert not any(isinstance(m, FourierFTLinear) for m in merged.modules())
    assert type(merged.blocks[0].attn.qkv) is nn.Linear and type(merged.blocks[1].mlp.fc2) is nn.Linear
    assert not any("fourierft" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), adapted, rtol=1e-5, atol=1e-5)


def test_zero_init_reproduces_the_base_model():
    model = tiny_vit()
    x = images()
    with torch.no_grad():
        base = model(x)
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("qkv", "fc1"), init="zeros"))
    with torch.no_grad():
        torch.testing.assert_close(model(x), base, rtol=0, atol=0)


def test_no_grad_cache_is_reused_and_invalidated_when_coefficients_change():
    torch.manual_seed(1)
    layer = FourierFTLinear(nn.Linear(16, 24), FourierFTConfig(n_frequency=30))
    x = torch.randn(4, 16)
    with torch.no_grad():
        first = layer(x)
        cached = layer._cache[1]
        layer(x)
        assert layer._cache[1] is cached
        layer.fourierft_spectrum["full"].add_(1.0)
        changed = layer(x)
    assert layer._cache[1] is not cached
    torch.testing.assert_close(changed, layer(x))  # grad path computes W + dW afresh
    assert not torch.allclose(changed, first)
    assert layer._cache is None  # a training forward drops the evaluation cache


def test_state_dict_round_trip_regenerates_locations():
    config = FourierFTConfig(n_frequency=40, targets=("q", "v", "fc1"))
    model = tiny_vit()
    inject_fourierft(model, config)
    state = fourierft_state_dict(model)
    assert sorted(state) == sorted(
        [f"blocks.{i}.attn.qkv.fourierft_spectrum.{b}" for i in range(2) for b in "qv"]
        + [f"blocks.{i}.mlp.fc1.fourierft_spectrum.full" for i in range(2)]
    )
    assert not any("location" in key for key in model.state_dict())
    restored = tiny_vit()
    torch.manual_seed(123)  # different random coefficients before loading
    inject_fourierft(restored, config)
    x = images()
    with torch.no_grad():
        assert not torch.allclose(restored(x), model(x))
        load_fourierft_state_dict(restored, state)
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        load_fourierft_state_dict(restored, {k: v for k, v in state.items() if "fc1" not in k})
    bad = dict(state) | {"blocks.0.mlp.fc1.fourierft_spectrum.full": torch.zeros(3)}
    with pytest.raises(ValueError, match="shape"):
        load_fourierft_state_dict(restored, bad)


# ---------------------------------------------------------------------------------------------------------------------
# the bank: deltas of equal shapes synthesised together


def inverse_ffts(run, kernel: str = "aten::_fft_c2r") -> int:
    """FFT kernels (``irfft2``: ``aten::_fft_c2r``; ``rfft2``: ``aten::_fft_r2c``) launched by ``run()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    return sum(event.name == kernel for event in prof.events())


def one_bank_per_layer(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, FourierFTLinear):
            FourierFTBank([module])
    return model


@pytest.fixture
def accelerator_route(monkeypatch):
    """The accelerators' route on the CPU: dense coefficient gradients deferred to one batched rfft2 per group."""
    monkeypatch.setattr(fourierft_functional, "_CPU_BATCHES_DENSE_GRADIENT", True)


@pytest.mark.parametrize(("grad_mode", "batched"), [("dense", True), ("dense", False), ("fft", False)])
def test_bank_synthesises_each_shape_once_and_equals_layers_on_their_own(grad_mode, batched, monkeypatch):
    monkeypatch.setattr(fourierft_functional, "_CPU_BATCHES_DENSE_GRADIENT", batched)
    model = tiny_vit()
    # 32x32: q and v blocks of both qkv layers and both proj layers (6 deltas); 128x32: both fc1 layers
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "proj", "fc1"), grad_mode=grad_mode))
    alone = one_bank_per_layer(copy.deepcopy(model))
    x = images()
    outputs = {}
    assert inverse_ffts(lambda: outputs.setdefault("bank", model(x))) == 2
    assert inverse_ffts(lambda: outputs.setdefault("alone", alone(x))) == 6
    torch.testing.assert_close(outputs["bank"], outputs["alone"], rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(outputs["bank"])
    backward = {key: lambda key=key: (outputs[key] * upstream).sum().backward() for key in outputs}
    if grad_mode == "dense":  # batched: one rfft2 per shape gives every coefficient gradient; else one per layer
        assert inverse_ffts(backward["bank"], "aten::_fft_r2c") == (2 if batched else 6)
        assert inverse_ffts(backward["alone"], "aten::_fft_r2c") == 6
    else:
        backward["bank"]()
        backward["alone"]()
    for name, parameter in model.named_parameters():
        if "fourierft" in name:
            assert rel_err(parameter.grad, alone.get_parameter(name).grad) < 1e-5, name
    layer = model.blocks[1].attn.qkv
    assert not layer.bank._synthesis  # released once every layer took its deltas


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_bank_synthesises_again_for_every_forward_and_after_every_step(grad_mode, accelerator_route):
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "fc2"), grad_mode=grad_mode))
    parameters = [p for p in model.parameters() if p.requires_grad]
    x = images()
    model(x).square().sum().backward()
    single = [p.grad.clone() for p in parameters]
    # two forwards before one backward (gradient accumulation): each has its own deltas
    first, second = model(x), model(images(seed=2))
    model.zero_grad(set_to_none=True)
    (first.square().sum() + model(x).square().sum()).backward()
    for parameter, grad in zip(parameters, single, strict=True):
        torch.testing.assert_close(parameter.grad, 2 * grad, rtol=1e-5, atol=1e-6)
    torch.optim.SGD(parameters, lr=1.0).step()
    with torch.no_grad():
        after = model(x)
        fresh = one_bank_per_layer(copy.deepcopy(model))(x)
    assert not torch.allclose(after, first)
    torch.testing.assert_close(after, fresh, rtol=1e-5, atol=1e-6)
    assert second.shape == first.shape


class _TwoLarge(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(768, 2304), nn.Linear(768, 2304)  # a ViT-B qkv shape: 7 MiB half spectra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x)


def test_cpu_batches_of_deltas_stay_cache_sized(accelerator_route):
    cpu, cuda, mib = torch.device("cpu"), torch.device("cuda"), 2**20
    assert _fft_batch(12, 7 * mib, cpu) == 1 and _fft_batch(12, mib // 10, cpu) == 10
    assert _fft_batch(12, 7 * mib, cuda) == 12
    torch.manual_seed(0)
    model = _TwoLarge().requires_grad_(False)
    inject_fourierft(model, FourierFTConfig(n_frequency=100, targets=("a", "b"), grad_mode="dense"))
    x = torch.randn(3, 768)
    out = {}
    assert inverse_ffts(lambda: out.setdefault("bank", model(x))) == 2  # one group, two cache-sized batches
    torch.testing.assert_close(out["bank"], one_bank_per_layer(copy.deepcopy(model))(x), rtol=1e-5, atol=1e-5)
    assert inverse_ffts(lambda: out["bank"].sum().backward(), "aten::_fft_r2c") == 2


def test_bank_without_gradients_synthesises_only_stale_layers_and_holds_nothing():
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("qkv", "fc1")))
    x = images()
    with torch.no_grad():
        assert inverse_ffts(lambda: model(x)) == 2  # (96, 32) and (128, 32)
        assert inverse_ffts(lambda: model(x)) == 0  # merged weights cached
        model.blocks[0].mlp.fc1.fourierft_spectrum["full"].mul_(2.0)
        stale = model(x)
        assert inverse_ffts(lambda: model(x)) == 0
    bank = model.blocks[0].mlp.fc1.bank
    assert not bank._synthesis
    torch.testing.assert_close(stale, one_bank_per_layer(copy.deepcopy(model))(x), rtol=1e-5, atol=1e-6)
    # a forward in progress (one layer of a group ran with gradients) is neither copied nor kept by the copy
    model.blocks[0].mlp.fc1(torch.randn(3, 32))
    assert bank._synthesis
    copied = copy.deepcopy(model)
    assert not copied.blocks[0].mlp.fc1.bank._synthesis
    assert copied.blocks[0].mlp.fc1.bank is copied.blocks[1].mlp.fc1.bank is not bank


# ---------------------------------------------------------------------------------------------------------------------
# targets and errors


def test_regex_and_layer_name_targets():
    model = tiny_vit()
    adapted = inject_fourierft(model, FourierFTConfig(n_frequency=20, targets=(r"re:blocks\.1\.mlp\.fc\d", "proj")))
    assert adapted == ["blocks.0.attn.proj", "blocks.1.attn.proj", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    # patch_embed.proj is a convolution: never adapted
    assert isinstance(model.patch_embed.proj, nn.Conv2d)
    with pytest.raises(ValueError, match="already has FourierFT layers"):
        inject_fourierft(model, FourierFTConfig(n_frequency=20, targets=("fc1",)))


@pytest.mark.parametrize(
    "targets",
    [
        ("q", "v"),
        ("qkv",),
        ("q", "k", "v", "fc1"),
        ("proj", "fc2"),
        (r"re:blocks\.1\..*",),
        ("v", r"re:blocks\.0\.mlp\.fc1"),
    ],
)
def test_dry_count_equals_the_injected_matrices(targets):
    model = tiny_vit()
    config = FourierFTConfig(n_frequency=20, targets=targets)
    counted = count_fourierft_matrices(model, config)
    assert not any(isinstance(m, FourierFTLinear) for m in model.modules())  # counting injects nothing
    inject_fourierft(model, config)
    spectra = [p for name, p in model.named_parameters() if "fourierft_spectrum" in name]
    assert counted == len(spectra) and all(p.numel() == 20 for p in spectra)


def test_dry_count_refuses_what_injection_refuses():
    with pytest.raises(ValueError, match="match no layer"):
        count_fourierft_matrices(tiny_vit(), FourierFTConfig(targets=("v", "query")))
    with pytest.raises(ValueError, match="both whole and as blocks"):
        count_fourierft_matrices(tiny_vit(), FourierFTConfig(targets=("q", r"re:blocks\.0\.attn\.qkv")))


def test_unknown_target_lists_available_layers():
    with pytest.raises(ValueError, match=r"\['query'\].*'fc1'.*'qkv'.*'q'/'k'/'v'"):
        inject_fourierft(tiny_vit(), FourierFTConfig(targets=("v", "query")))


def test_n_frequency_larger_than_matrix_names_the_layer():
    # q/v blocks are 32 x 32 = 1024 entries
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv.*n_frequency=2000.*32x32"):
        inject_fourierft(tiny_vit(), FourierFTConfig(n_frequency=2000, targets=("q",)))
    with pytest.raises(ValueError, match="n_frequency=500"):
        FourierFTLinear(nn.Linear(10, 10), FourierFTConfig(n_frequency=500))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_frequency": 0}, "n_frequency"),
        ({"scaling": float("nan")}, "scaling"),
        ({"seed": -1}, "seed"),
        ({"targets": "qkv"}, "sequence of strings"),
        ({"targets": ()}, "empty"),
        ({"targets": ("re:(",)}, "regular expression"),
        ({"targets": ("q", "q")}, "repeats"),
        ({"targets": ("qkv", "v")}, "cannot be combined"),
        ({"init": "uniform"}, "init='uniform'"),
        ({"grad_mode": "sparse"}, "grad_mode='sparse'"),
        ({"dtype": "float64"}, "dtype='float64'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FourierFTConfig(**kwargs)


def test_config_accepts_lists_from_yaml():
    assert FourierFTConfig(targets=["q", "v"]).targets == ("q", "v")


def test_qkv_blocks_need_three_equal_row_blocks():
    with pytest.raises(ValueError, match="multiple of 3"):
        FourierFTLinear(nn.Linear(8, 10), FourierFTConfig(n_frequency=4), blocks=("q",))


# ---------------------------------------------------------------------------------------------------------------------
# mixed precision and compilation


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_bf16_autocast_on_cpu_runs_with_float32_coefficients(grad_mode):
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "fc1"), grad_mode=grad_mode))
    layer = model.blocks[0].attn.qkv
    x = images()
    reference = model(x)
    reference.square().sum().backward()
    reference_grad = layer.fourierft_spectrum["q"].grad.clone()
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        qkv_out = layer(torch.randn(3, 32))
    assert out.dtype == qkv_out.dtype == torch.bfloat16
    assert rel_err(out.float(), reference) < 5e-2
    out.float().square().sum().backward()
    grad = layer.fourierft_spectrum["q"].grad
    assert layer.fourierft_spectrum["q"].dtype == grad.dtype == torch.float32
    assert rel_err(grad, reference_grad) < 0.1


# storage dtype of the coefficients: relative error of outputs and gradients against the float32 path (coefficients
# rounded once, the delta once more after the FFT)
ADAPTER_DTYPES = {"bfloat16": (torch.bfloat16, 1e-2), "float16": (torch.float16, 2e-3)}


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("dtype", sorted(ADAPTER_DTYPES))
def test_adapter_dtype_stores_coefficients_and_matches_float32_and_peft(dtype, grad_mode):
    torch_dtype, tolerance = ADAPTER_DTYPES[dtype]
    torch.manual_seed(0)
    qkv = nn.Linear(32, 96)
    torch.manual_seed(1)
    fp32 = FourierFTLinear(copy.deepcopy(qkv), FourierFTConfig(n_frequency=80, grad_mode=grad_mode), blocks=("q", "v"))
    torch.manual_seed(1)
    layer = FourierFTLinear(
        copy.deepcopy(qkv), FourierFTConfig(n_frequency=80, grad_mode=grad_mode, dtype=dtype), blocks=("q", "v")
    )
    for block in ("q", "v"):  # the same normal draws, rounded
        coefficients = layer.fourierft_spectrum[block]
        assert coefficients.dtype == torch_dtype
        torch.testing.assert_close(coefficients, fp32.fourierft_spectrum[block].to(torch_dtype), rtol=0, atol=0)
    assert layer.get_delta_weight().dtype == torch_dtype
    x = torch.randn(4, 3, 32)
    expected, actual = fp32(x), layer(x)
    assert actual.dtype == torch.float32  # the compute dtype is the weight's, not the adapter's
    assert rel_err(actual, expected) < tolerance
    with torch.no_grad():  # the cached merged weight
        torch.testing.assert_close(layer(x), actual, rtol=0, atol=0)
    upstream = torch.randn_like(expected)
    (expected * upstream).sum().backward()
    (actual * upstream).sum().backward()
    for block in ("q", "v"):
        grad = layer.fourierft_spectrum[block].grad
        assert grad.dtype == torch_dtype
        assert rel_err(grad.float(), fp32.fourierft_spectrum[block].grad) < tolerance
    # PEFT with its spectrum in the same dtype (FFT in float32, delta cast after it) on the separate q and v layers
    for index, block in ((0, "q"), (2, "v")):
        part = nn.Linear(32, 32)
        with torch.no_grad():
            part.weight.copy_(qkv.weight[index * 32 : (index + 1) * 32])
            part.bias.copy_(qkv.bias[index * 32 : (index + 1) * 32])
        part = peft_layer(part, n_frequency=80)
        spectrum = part.fourierft_spectrum["default"]
        spectrum.data = layer.fourierft_spectrum[block].detach().clone()
        torch.testing.assert_close(
            layer.get_delta_weight()[index * 32 : (index + 1) * 32], part.get_delta_weight("default"), rtol=0, atol=0
        )
        reference = part(x)
        assert rel_err(actual[..., index * 32 : (index + 1) * 32], reference) < tolerance  # PEFT rounds x too
        (reference_grad,) = torch.autograd.grad(
            (reference * upstream[..., index * 32 : (index + 1) * 32]).sum(), spectrum
        )
        assert reference_grad.dtype == torch_dtype
        assert rel_err(layer.fourierft_spectrum[block].grad.float(), reference_grad.float()) < tolerance


@pytest.mark.parametrize("dtype", sorted(ADAPTER_DTYPES))
def test_adapter_dtype_survives_model_conversion_and_state_dict_round_trip(dtype):
    torch_dtype, tolerance = ADAPTER_DTYPES[dtype]
    config = FourierFTConfig(n_frequency=40, targets=("q", "v", "fc1"), dtype=dtype)
    model = tiny_vit()
    inject_fourierft(model, config)
    state = fourierft_state_dict(model)
    assert {value.dtype for value in state.values()} == {torch_dtype}
    x = images()
    with torch.no_grad():
        before = model(x)
        # Lightning's bf16-true / a user's .double(): the weights follow, the coefficients keep their dtype and values
        model.to(torch.float64)
        assert {v.dtype for v in fourierft_state_dict(model).values()} == {torch_dtype}
        assert all(torch.equal(fourierft_state_dict(model)[k], v) for k, v in state.items())
        assert model.head.weight.dtype == torch.float64
        assert rel_err(model(x.double()).float(), before) < tolerance
        model.float()
        restored = tiny_vit()
        inject_fourierft(restored, config)
        load_fourierft_state_dict(restored, state)
        assert {v.dtype for v in fourierft_state_dict(restored).values()} == {torch_dtype}
        torch.testing.assert_close(restored(x), before, rtol=0, atol=0)
    # the default (None) converts with the model, as before
    default = tiny_vit()
    inject_fourierft(default, FourierFTConfig(n_frequency=40))
    default.to(torch.bfloat16)
    assert {v.dtype for v in fourierft_state_dict(default).values()} == {torch.bfloat16}


@pytest.mark.parametrize("dtype", sorted(ADAPTER_DTYPES))
def test_adapter_dtype_under_bf16_autocast_and_merge(dtype):
    torch_dtype, _ = ADAPTER_DTYPES[dtype]
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v"), dtype=dtype))
    x = images()
    with torch.no_grad():
        reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16 and rel_err(out.float(), reference) < 5e-2
    out.float().square().sum().backward()
    grad = model.blocks[0].attn.qkv.fourierft_spectrum["q"].grad
    assert grad.dtype == torch_dtype and torch.isfinite(grad).all()
    with torch.no_grad():
        merged = merge_fourierft(copy.deepcopy(model))
        torch.testing.assert_close(merged(x), reference, rtol=1e-5, atol=1e-5)


class _TinyBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.fc1, self.fc2 = nn.Linear(16, 48), nn.Linear(48, 32), nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(self.qkv(x))))


def assert_compiled_matches_eager(model: nn.Module, x: torch.Tensor, backend: str) -> None:
    eager = model(x)
    eager.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    assert grads and all("fourierft" in name for name in grads)
    model.zero_grad(set_to_none=True)
    out = torch.compile(model, backend=backend)(x)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert set(grads) == {name for name, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("grad_mode", GRAD_MODES)
def test_torch_compile_inductor_matches_eager(grad_mode):
    torch.manual_seed(0)
    model = _TinyBlock().requires_grad_(False)
    inject_fourierft(model, FourierFTConfig(n_frequency=30, targets=("q", "v", "fc1"), grad_mode=grad_mode))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
        assert_compiled_matches_eager(model, torch.randn(4, 5, 16), backend="inductor")


@pytest.mark.slow
def test_torch_compile_traces_adapted_vit_without_graph_breaks():
    model = tiny_vit()
    inject_fourierft(model, FourierFTConfig(n_frequency=50, targets=("q", "v", "fc1"), grad_mode="fft"))
    assert torch._dynamo.explain(model)(images()).graph_break_count == 0
    assert_compiled_matches_eager(model, images(), backend="aot_eager")


# ---------------------------------------------------------------------------------------------------------------------
# benchmark command


def test_benchmark_command_runs_all_methods_on_equal_layers(tmp_path):
    from fftprompt.bench.fourierft import main

    path = tmp_path / "report.json"
    argv = ["--model", "vit_tiny_patch16_224", "--img-size", "32", "--batch-size", "2", "--steps", "1"]
    argv += ["--warmup", "0", "--threads", "1", "--n-frequency", "100", "--no-memory", "--json", str(path)]
    assert main(argv) == 0
    report = json.loads(path.read_text())
    params = {r["method"]: r["trainable_params"] for r in report["results"]}
    head = 192 * 10 + 10
    layers = 12 * 4  # qkv, proj, fc1, fc2 in each of the 12 blocks
    assert report["settings"]["adapted_layers"] == layers
    assert params["linear_probe"] == head
    assert params["fourierft"] == params["peft_fourierft"] == head + layers * 100
    lora = 12 * 16 * ((192 + 576) + (192 + 192) + (192 + 768) + (768 + 192))
    assert params["lora"] == head + lora
    assert {"time_fourierft/peft_fourierft", "time_fourierft/lora", "cpu_time_fourierft/lora"} <= set(report["ratios"])
    assert all(r["step_ms"] > 0 for r in report["results"])
