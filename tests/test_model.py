from __future__ import annotations

import functools
import json

import pytest
import torch

from fftprompt.backbone import Backbone, create_backbone
from fftprompt.fourierft import FourierFTConfig
from fftprompt.heads import ClassificationHead, LinearDecoder, PUPDecoder
from fftprompt.model import PromptedViT, create_model, load_model
from fftprompt.prompts import FrequencyPrompt, NoPrompt, VFPTPrompt, VPTPrompt
from fftprompt.spectral import FrequencyFeatures

TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}
PROMPTS = {
    "vpt": functools.partial(VPTPrompt, num_tokens=3),
    "vpt_deep": functools.partial(VPTPrompt, num_tokens=3, deep=True),
    "vfpt": functools.partial(VFPTPrompt, num_tokens=4, alpha=0.5),
    "fft": functools.partial(FrequencyPrompt, num_tokens=3),
    "fft_deep": functools.partial(FrequencyPrompt, num_tokens=3, deep=True, use_patch_tokens=True),
    "fft_scales": functools.partial(FrequencyPrompt, num_tokens=3, use_statistics=True),
}


def tiny_backbone(name: str = "vit_tiny_patch16_224", seed: int = 0, **kwargs) -> Backbone:
    torch.manual_seed(seed)
    return create_backbone(name, **{**TINY, **kwargs})


def tiny_model(prompt: str | None = "vpt", adapter: FourierFTConfig | None = None, **kwargs) -> PromptedViT:
    features = FrequencyFeatures if prompt is not None and prompt.startswith("fft") else None
    if prompt == "fft_scales":  # map statistics at half and twice the patch size too
        features = functools.partial(FrequencyFeatures, statistics_scales=(0.5, 2))
    kwargs.setdefault("features", features)
    return create_model(
        kwargs.pop("backbone", None) or tiny_backbone(),
        4,
        prompt=None if prompt is None else PROMPTS[prompt],
        adapter=adapter,
        **kwargs,
    )


def images(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("name", "extra", "pooling"),
    [
        ("vit_tiny_patch16_224", {}, "cls"),
        ("deit_tiny_distilled_patch16_224", {}, "cls"),
        ("vit_small_patch16_224", {"reg_tokens": 4}, "cls"),
        ("vit_small_patch16_224", {"class_token": False, "global_pool": "avg"}, "mean"),
        ("vit_small_patch16_224", {"class_token": False, "reg_tokens": 2, "global_pool": "avg"}, "mean"),
        ("vit_tiny_patch16_224", {"dynamic_img_size": True, "no_embed_class": True}, "cls"),
    ],
)
def test_no_prompt_reproduces_the_backbone_exactly(name, extra, pooling):
    backbone = tiny_backbone(name, **extra)
    model = create_model(backbone, 3, prompt=None, pooling=pooling)
    model.train()  # the backbone stays in eval: no dropout anywhere
    x = images()
    timm_model = backbone.model
    expected = timm_model.forward_features(x)
    assert torch.equal(model.forward_features(x), expected)
    assert torch.equal(model.forward_pooled(x), timm_model.forward_head(expected, pre_logits=True))
    grid = model.forward_patch_tokens(x)
    assert grid.shape == (2, 32, 4, 4)
    patch_tokens = expected[:, backbone.num_prefix_tokens :]
    assert torch.equal(grid.flatten(2).transpose(1, 2), patch_tokens)


def test_prompts_sit_between_prefix_and_patch_tokens_without_positional_embedding():
    backbone = tiny_backbone("vit_small_patch16_224", reg_tokens=2)
    model = tiny_model("vpt", backbone=backbone)
    captured = []
    handle = backbone.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    x = images()
    model(x)
    handle.remove()
    tokens = captured[0]
    embedded, _ = backbone.embed(x)
    prefix = backbone.num_prefix_tokens
    assert tokens.shape == (2, prefix + 3 + 16, 32)
    assert torch.equal(tokens[:, :prefix], embedded[:, :prefix])
    assert torch.equal(tokens[:, prefix : prefix + 3], model.prompt.prompt_embeddings.expand(2, -1, -1))
    assert torch.equal(tokens[:, prefix + 3 :], embedded[:, prefix:])


@pytest.mark.parametrize("prompt", ["vpt_deep", "vfpt", "fft_deep"])
def test_deep_prompts_replace_the_prompt_slots_of_every_block(prompt):
    model = tiny_model(prompt)
    inputs, outputs = [], []
    hooks = [block.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for block in model.backbone.blocks]
    hooks += [block.register_forward_hook(lambda m, args, out: outputs.append(out)) for block in model.backbone.blocks]
    x = images()
    model(x)
    for hook in hooks:
        hook.remove()
    num_tokens = model.prompt.num_tokens
    lengths = {t.shape[1] for t in inputs + outputs}
    assert lengths == {1 + num_tokens + 16}
    prompts = model.prompt(x, model.compute_maps(x), model.backbone.embed(x)[0][:, 1:])
    for layer, block_input in enumerate(inputs):
        torch.testing.assert_close(block_input[:, 1 : 1 + num_tokens], prompts[layer])
    # block 1 reads the new prompts, not block 0's prompt outputs; patch tokens flow through
    assert not torch.allclose(inputs[1][:, 1 : 1 + num_tokens], outputs[0][:, 1 : 1 + num_tokens])
    assert torch.equal(inputs[1][:, 1 + num_tokens :], outputs[0][:, 1 + num_tokens :])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_pooling_ignores_prompt_tokens(pooling):
    model = tiny_model("vpt", pooling=pooling).eval()
    x = images()
    reference = model.forward_pooled(x)
    tokens = model.forward_features(x)
    if pooling == "mean":
        torch.testing.assert_close(reference, tokens[:, 1 + 3 :].mean(1))
    last = model.backbone.blocks[-1]

    def perturb_prompt_outputs(module, args, out):
        out = out.clone()
        out[:, 1:4] += 100.0
        return out

    handle = last.register_forward_hook(perturb_prompt_outputs)
    perturbed = model.forward_pooled(x)
    logits = model(x)
    handle.remove()
    assert torch.equal(perturbed, reference)
    torch.testing.assert_close(logits, model(x))


def test_fft_prompts_depend_on_the_image_and_stay_finite_on_constant_images():
    model = tiny_model("fft").eval()
    x = images(batch=2)
    maps = model.compute_maps(x)
    prompts = model.prompt(x, maps, model.backbone.embed(x)[0][:, 1:])
    assert not torch.allclose(prompts[0], prompts[1])
    constant = torch.full((2, 3, 32, 32), -0.3)
    logits = model(constant)
    assert torch.isfinite(logits).all()
    assert model.prompt.last_attention.shape == (2, 3, 16)
    assert not torch.allclose(model(x)[0], model(x)[1])


@pytest.mark.parametrize("prompt", ["vpt", "vpt_deep", "vfpt", "fft", "fft_deep"])
@pytest.mark.parametrize("with_adapter", [False, True])
def test_training_changes_only_prompt_adapter_and_head(prompt, with_adapter):
    adapter = FourierFTConfig(n_frequency=16, targets=("q", "v")) if with_adapter else None
    model = tiny_model(prompt, adapter=adapter)
    groups = model.trainable_parameters()
    assert bool(groups["adapter"]) is with_adapter
    trainable = {id(p) for group in groups.values() for p in group}
    named = dict(model.named_parameters())
    assert {n for n, p in named.items() if p.requires_grad} == {n for n, p in named.items() if id(p) in trainable}
    before = {n: p.detach().clone() for n, p in named.items()}
    optimizer = torch.optim.AdamW([p for group in groups.values() for p in group], lr=1e-2)
    model.train()
    targets = torch.tensor([0, 3])
    grads = {}
    for step in range(3):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(images(seed=step)), targets)
        loss.backward()
        for name, parameter in named.items():
            if parameter.requires_grad:
                grads.setdefault(name, []).append(parameter.grad.abs().sum().item())
        optimizer.step()
    assert not any(m.training for m in model.backbone.model.modules())
    for name, parameter in named.items():
        changed = not torch.equal(before[name], parameter.detach())
        if id(parameter) in trainable:
            assert changed, f"{name} did not change"
            assert all(g > 0 for g in grads[name]), f"{name} got a zero gradient: {grads[name]}"
        else:
            assert not changed, f"frozen {name} changed"
    assert model.num_trainable_parameters() == sum(p.numel() for g in groups.values() for p in g)
    if with_adapter:
        with pytest.raises(ValueError, match="already holds FourierFT layers"):
            create_model(model.backbone, 4, adapter=adapter)
    assert model.num_total_parameters() > model.num_trainable_parameters()
    if with_adapter:
        assert all("fourierft" in n for n, p in model.backbone.model.named_parameters() if p.requires_grad)


def test_trainable_groups_count_prompt_and_head():
    model = tiny_model("vpt")
    groups = model.trainable_parameters()
    assert sum(p.numel() for p in groups["prompt"]) == model.prompt.num_parameters() == 3 * 32
    assert sum(p.numel() for p in groups["head"]) == 32 * 4 + 4
    assert groups["adapter"] == []


@pytest.mark.parametrize(
    ("prompt", "adapter_dtype"), [("vpt_deep", None), ("fft", None), ("fft", "bfloat16"), ("fft_scales", None)]
)
def test_save_load_round_trip(tmp_path, prompt, adapter_dtype):
    adapter = FourierFTConfig(n_frequency=16, dtype=adapter_dtype)
    model = tiny_model(prompt, adapter=adapter)
    with torch.no_grad():  # move every trainable tensor away from its initial value
        for group in model.trainable_parameters().values():
            for parameter in group:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    model.eval()
    x = images()
    expected = model(x)
    model.save_trainable(tmp_path)
    description = json.loads((tmp_path / "adapter.json").read_text())
    assert description["backbone"]["name"] == "vit_tiny_patch16_224"
    assert description["prompt"]["class"] == type(model.prompt).__name__
    assert set(description["tensors"]) == set(model.trainable_state_dict())
    assert not list(tmp_path.glob("*.tmp"))

    torch.manual_seed(123)  # different trainable init, same backbone weights
    fresh = tiny_model(prompt, adapter=adapter).eval()
    assert not torch.equal(fresh(x), expected)
    fresh.load_trainable(tmp_path)
    assert torch.equal(fresh(x), expected)
    rebuilt = load_model(tmp_path / "adapter.json", backbone=tiny_backbone()).eval()
    assert torch.equal(rebuilt(x), expected)
    coefficient_dtype = torch.float32 if adapter_dtype is None else torch.bfloat16
    for loaded in (fresh, rebuilt):  # the adapter keeps its dtype through adapter.json and adapter.safetensors
        assert {p.dtype for _, p in loaded._named_trainable()["adapter"]} == {coefficient_dtype}


def test_features_without_other_patch_sizes_are_described_as_before_them():
    # adapters written before statistics_scales existed record exactly these keys, and must still load
    keys = {"class", "patch_size", "window", "orientation_bins", "radial_bins", "global_symmetry", "groups"}
    assert set(tiny_model("fft").describe()["features"]) == keys
    assert tiny_model("fft_scales").describe()["features"]["statistics_scales"] == [0.5, 2.0]


@pytest.mark.parametrize("recorded", [None, [], [2.0]])
def test_adapters_load_whether_or_not_they_record_empty_statistics_scales(tmp_path, recorded):
    model = tiny_model("fft").eval()
    model.save_trainable(tmp_path)
    path = tmp_path / "adapter.json"
    description = json.loads(path.read_text())
    if recorded is not None:  # [] as written for a while; [2.0]: features this model does not have
        description["features"]["statistics_scales"] = recorded
        path.write_text(json.dumps(description))
    if recorded == [2.0]:
        with pytest.raises(ValueError, match="features is .*statistics_scales"):
            model.load_trainable(tmp_path)
    else:
        model.load_trainable(tmp_path)
        rebuilt = load_model(path, backbone=tiny_backbone()).eval()
        assert torch.equal(rebuilt(images()), model(images()))


def test_load_model_rebuilds_a_backbone_with_recorded_weights(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "backbone.safetensors"
    save_file(tiny_backbone(seed=5).model.state_dict(), str(weights))
    backbone = create_backbone("vit_tiny_patch16_224", checkpoint_path=weights, **TINY)
    model = tiny_model("fft_deep", backbone=backbone, adapter=FourierFTConfig(n_frequency=8)).eval()
    model.save_trainable(tmp_path / "run")
    torch.manual_seed(99)
    rebuilt = load_model(tmp_path / "run").eval()  # backbone from the recorded name, kwargs and checkpoint_path
    assert rebuilt.backbone.config == backbone.config
    assert torch.equal(rebuilt(images()), model(images()))


def test_save_refuses_to_overwrite_and_load_model_needs_real_weights(tmp_path):
    model = tiny_model("vpt")
    model.save_trainable(tmp_path)
    with pytest.raises(FileExistsError, match="adapter.safetensors"):
        model.save_trainable(tmp_path)
    model.save_trainable(tmp_path, overwrite=True)
    with pytest.raises(ValueError, match="created without weights"):
        load_model(tmp_path)


def test_segmentation_head_and_buffers_round_trip(tmp_path):
    features = FrequencyFeatures(patch_size=8)
    model = tiny_model(
        "fft",
        task="segmentation",
        features=features,
        head=PUPDecoder(32, 4, patch_size=8, feature_channels=features.num_channels, hidden_channels=8),
    )
    model.train()
    out = model(images(batch=3))
    assert out.shape == (3, 4, 32, 32)
    model.eval()
    expected = model(images())
    model.save_trainable(tmp_path)
    fresh = tiny_model(
        "fft",
        task="segmentation",
        features=FrequencyFeatures(patch_size=8),
        head=functools.partial(PUPDecoder, feature_channels=features.num_channels, hidden_channels=8),
    ).eval()
    fresh.load_trainable(tmp_path)  # BatchNorm statistics travel with the head
    assert torch.equal(fresh(images()), expected)


def test_default_segmentation_decoder_is_linear():
    model = tiny_model(None, task="segmentation")
    assert isinstance(model.head, LinearDecoder)
    assert model(images()).shape == (2, 4, 32, 32)


def test_mismatching_loads_raise(tmp_path):
    model = tiny_model("vpt")
    model.save_trainable(tmp_path / "vpt")
    deit = tiny_model("vpt", backbone=tiny_backbone("deit_tiny_distilled_patch16_224"))
    with pytest.raises(ValueError, match="backbone name is 'vit_tiny_patch16_224' in the checkpoint"):
        deit.load_trainable(tmp_path / "vpt")
    with pytest.raises(ValueError, match="prompt class is 'VPTPrompt' in the checkpoint but 'VFPTPrompt'"):
        tiny_model("vfpt").load_trainable(tmp_path / "vpt")
    more_tokens = create_model(tiny_backbone(), 4, prompt=functools.partial(VPTPrompt, num_tokens=5))
    with pytest.raises(ValueError, match=r"shape mismatch.*prompt.prompt_embeddings: \(3, 32\) vs \(5, 32\)"):
        more_tokens.load_trainable(tmp_path / "vpt")
    with pytest.raises(ValueError, match="adapter is None in the checkpoint"):
        tiny_model("vpt", adapter=FourierFTConfig(n_frequency=8)).load_trainable(tmp_path / "vpt")
    with pytest.raises(ValueError, match="adapter.safetensors not found"):
        model.load_trainable(tmp_path / "nowhere")
    (tmp_path / "vpt" / "adapter.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an fftprompt adapter config"):
        model.load_trainable(tmp_path / "vpt")


def test_load_model_only_instantiates_allowed_classes(tmp_path):
    model = tiny_model("vpt")
    model.save_trainable(tmp_path)
    description = json.loads((tmp_path / "adapter.json").read_text())
    description["prompt"]["class"] = "os.system"
    (tmp_path / "adapter.json").write_text(json.dumps(description))
    with pytest.raises(ValueError, match="prompt class 'os.system' is not one of"):
        load_model(tmp_path, backbone=tiny_backbone())


def test_model_construction_errors():
    fft_prompt = tiny_model("fft").prompt
    with pytest.raises(ValueError, match="prompt read frequency maps: pass features=FrequencyFeatures"):
        PromptedViT(tiny_backbone(), None, fft_prompt, ClassificationHead(32, 2))
    with pytest.raises(ValueError, match="features.patch_size=16"):
        create_model(tiny_backbone(), 2, features=FrequencyFeatures(patch_size=16))
    with pytest.raises(ValueError, match="pooling='cls' needs a class token"):
        create_model(tiny_backbone("vit_small_patch16_224", class_token=False, global_pool="avg"), 2)
    with pytest.raises(ValueError, match="pooling='max'"):
        create_model(tiny_backbone(), 2, pooling="max")
    with pytest.raises(ValueError, match="task='detection'"):
        create_model(tiny_backbone(), 2, task="detection")
    with pytest.raises(ValueError, match="feature_channels=5; the features give"):
        create_model(
            tiny_backbone(),
            2,
            task="segmentation",
            features=FrequencyFeatures,
            head=LinearDecoder(32, 2, patch_size=8, feature_channels=5),
        )


@pytest.mark.slow
def test_create_model_accepts_a_timm_name():
    model = create_model("vit_tiny_patch16_224", 2)  # full-size ViT-Ti/16 at 224 px, no weights
    assert isinstance(model.prompt, NoPrompt)
    assert model.backbone.embed_dim == 192 and model.backbone.grid_size == (14, 14)
