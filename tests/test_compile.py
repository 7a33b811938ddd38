"""The compiled path: the whole model (features, prompt generator, FourierFT layers) traced by torch.compile without
graph breaks, numerically equal to eager, and the ``compile_mode`` option of the Lightning modules."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch

from conftest import tiny_config
from fftprompt.backbone import create_backbone
from fftprompt.fourierft import FourierFTConfig
from fftprompt.fourierft import functional as fourierft_functional
from fftprompt.lit import ClassificationModule
from fftprompt.model import PromptedViT, create_model
from fftprompt.prompts import FrequencyPrompt
from fftprompt.run import build
from fftprompt.spectral import FrequencyFeatures

pytestmark = pytest.mark.slow  # each test traces the model (seconds)

TINY_BACKBONE = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_model(grad_mode: str = "auto") -> PromptedViT:
    """fft prompts + FourierFT on q, v and fc1 of a 2-block ViT: every part the compiled path must trace."""
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny_patch16_224", **TINY_BACKBONE)
    prompt = functools.partial(FrequencyPrompt, num_tokens=3, hidden_dim=16, num_heads=2, spectrum_dim=8)
    adapter = FourierFTConfig(n_frequency=50, targets=("q", "v", "fc1"), grad_mode=grad_mode)
    return create_model(backbone, 5, prompt=prompt, features=FrequencyFeatures, adapter=adapter).train()


def images(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def outputs_and_grads(model: torch.nn.Module, run, x: torch.Tensor, dtype: torch.dtype | None):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = run(x)
    out.float().square().sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.float().detach(), grads


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_model_traces_without_graph_breaks(dtype):
    model = tiny_model()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        explained = torch._dynamo.explain(model)(images())
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    assert explained.graph_count == 1


@pytest.mark.parametrize(
    ("grad_mode", "batched", "dtype"),
    [("dense", False, None), ("dense", True, None), ("fft", False, None), ("dense", True, torch.bfloat16)],
)
def test_compiled_model_equals_eager(grad_mode, batched, dtype, monkeypatch):
    # batched: the accelerators' dense route (deltas in autograd, one rfft2 per group), run on the CPU
    monkeypatch.setattr(fourierft_functional, "_CPU_BATCHES_DENSE_GRADIENT", batched)
    model = tiny_model(grad_mode)
    x = images()
    eager, eager_grads = outputs_and_grads(model, model, x, dtype)
    compiled = torch.compile(model, backend="aot_eager", dynamic=False)
    out, grads = outputs_and_grads(model, compiled, x, dtype)
    torch._dynamo.reset()
    assert set(grads) == set(eager_grads) and any("fourierft" in name for name in grads)
    # float32: equal up to rounding; bfloat16 autocast: within bfloat16 tolerance
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype is None else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(out, eager, **tolerance)
    for name, grad in eager_grads.items():
        scale = grad.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(grads[name] / scale, grad / scale, **tolerance, msg=name)


@pytest.mark.slow
def test_inductor_compiled_model_equals_eager():
    model = tiny_model("dense")
    x = images()
    eager, eager_grads = outputs_and_grads(model, model, x, None)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Torchinductor does not support code generation for complex")
        out, grads = outputs_and_grads(model, torch.compile(model, dynamic=False), x, None)
    torch._dynamo.reset()
    torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-5)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_lightning_module_compile_option(tmp_path):
    model = tiny_model()
    eager = ClassificationModule(model, 5)
    compiled = ClassificationModule(model, 5, compile_mode="default", compile_backend="aot_eager")
    assert eager._compiled_forward is None and compiled._compiled_forward is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()
    with pytest.raises(ValueError, match="compile_mode='fast'.*reduce-overhead"):
        ClassificationModule(model, 5, compile_mode="fast")
    # the option is a config key of both tasks
    cfg = tiny_config(tmp_path, "task.module.compile_mode=reduce-overhead", "task.module.compile_backend=aot_eager")
    assert build(cfg)["module"].compile_mode == "reduce-overhead"
