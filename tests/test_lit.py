"""Lightning modules: parameter groups, schedule, losses, metrics against hand computations, checkpoints."""

from __future__ import annotations

import math
from functools import partial

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fftprompt.backbone import create_backbone
from fftprompt.fourierft import FourierFTConfig
from fftprompt.lit import (
    ClassificationModule,
    SegmentationModule,
    classification_metrics,
    lr_factor,
    segmentation_metrics,
    soft_dice_loss,
)
from fftprompt.model import create_model
from fftprompt.prompts import NoPrompt, VPTPrompt

NUM_CLASSES = 3


def tiny_model(task: str = "classification", prompt: bool = True, adapter: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    backbone = create_backbone("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    return create_model(
        backbone,
        NUM_CLASSES,
        task=task,
        prompt=partial(VPTPrompt, num_tokens=2) if prompt else NoPrompt,
        adapter=FourierFTConfig(n_frequency=20, scaling=10.0) if adapter else None,
    )


def loaders(task: str, count: int = 8, batch_size: int = 4) -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(count, 3, 32, 32, generator=generator)
    shape = (count,) if task == "classification" else (count, 32, 32)
    targets = torch.randint(0, NUM_CLASSES, shape, generator=generator)
    return DataLoader(TensorDataset(images, targets), batch_size=batch_size)


def trainer(tmp_path, **kwargs) -> L.Trainer:
    settings = dict(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    settings.update(kwargs)
    return L.Trainer(**settings)


def test_param_groups_have_their_own_lr_and_skip_empty_groups():
    model = tiny_model()
    module = ClassificationModule(
        model,
        NUM_CLASSES,
        optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
        prompt_lr=0.01,
        adapter_lr=0.2,
        adapter_weight_decay=0.0,
    )
    optimizer = module.optimizer_factory(module.param_groups())
    by_name = {group["name"]: group for group in optimizer.param_groups}
    assert list(by_name) == ["prompt", "adapter", "head"]
    assert by_name["prompt"]["lr"] == 0.01 and by_name["adapter"]["lr"] == 0.2
    assert by_name["head"]["lr"] == 1e-3  # no head_lr: the factory's default
    assert by_name["adapter"]["weight_decay"] == 0.0 and by_name["head"]["weight_decay"] == 0.05
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert optimised == trainable
    assert all(p.requires_grad for group in optimizer.param_groups for p in group["params"])

    linear_probe = ClassificationModule(tiny_model(prompt=False, adapter=False), NUM_CLASSES, lr=0.3)
    groups = linear_probe.param_groups()
    assert [g["name"] for g in groups] == ["head"] and groups[0]["lr"] == 0.3


def test_param_groups_reject_trainable_parameters_outside_the_groups():
    model = tiny_model(prompt=False, adapter=False)
    model.register_parameter("stray_scale", torch.nn.Parameter(torch.ones(1)))
    module = ClassificationModule(model, NUM_CLASSES)
    with pytest.raises(ValueError, match="outside"):
        module.param_groups()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scheduler": "linear"}, "scheduler"),
        ({"warmup_epochs": 1.0, "warmup_steps": 5}, "not both"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClassificationModule(tiny_model(prompt=False, adapter=False), NUM_CLASSES, **kwargs)


def test_lr_factor_warmup_then_cosine():
    schedule = partial(lr_factor, warmup_steps=4, total_steps=14, schedule="cosine", min_ratio=0.1)
    assert schedule(0) == pytest.approx(1 / 5)
    assert schedule(3) == pytest.approx(4 / 5)
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the decay
    assert schedule(14) == pytest.approx(0.1)
    assert schedule(20) == pytest.approx(0.1)
    assert lr_factor(7, 0, 10, "constant", 0.0) == 1.0


@pytest.mark.slow
def test_fit_trains_only_trainable_parameters_with_frozen_backbone_in_eval(tmp_path):
    model = tiny_model()
    module = ClassificationModule(model, NUM_CLASSES, lr=0.05, adapter_lr=0.3, warmup_steps=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modes: list[tuple[bool, bool]] = []
    lrs: list[float] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append((pl_module.model.backbone.model.training, pl_module.model.prompt.training))
            lrs.append(trainer.optimizers[0].param_groups[1]["lr"])

    fit = trainer(tmp_path, max_epochs=2, callbacks=[Probe()], enable_checkpointing=False)
    fit.fit(module, loaders("classification"), loaders("classification"))
    assert modes and all(not backbone and prompt for backbone, prompt in modes)
    # per-step schedule: warm-up 1 step, then cosine over 4 steps (2 epochs x 2 batches) towards 0
    assert lrs == pytest.approx([0.3 * 0.5, 0.3, 0.3 * 0.5 * (1 + math.cos(math.pi / 3)), 0.3 * 0.25])
    for name, parameter in model.named_parameters():
        changed = not torch.equal(before[name], parameter.detach())
        assert changed == parameter.requires_grad, name
    assert "train/loss_epoch" in fit.callback_metrics and "val/acc" in fit.callback_metrics
    assert "lr/adapter" in fit.callback_metrics


@pytest.mark.slow
def test_checkpoint_holds_no_frozen_weights_and_checks_the_backbone(tmp_path):
    model = tiny_model()
    module = ClassificationModule(model, NUM_CLASSES, lr=0.05)
    fit = trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    fit.fit(module, loaders("classification"))
    path = tmp_path / "m.ckpt"
    fit.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert not any(".base_layer." in k or k.endswith("blocks.0.mlp.fc1.weight") for k in state)
    assert any(k.startswith("model.prompt.") for k in state) and any("fourierft" in k for k in state)

    same = ClassificationModule(tiny_model(seed=0), NUM_CLASSES)
    trainer(tmp_path).test(same, loaders("classification"), ckpt_path=path, verbose=False)
    for key, value in state.items():
        assert torch.equal(same.state_dict()[key], value), key

    other_backbone = ClassificationModule(tiny_model(seed=1), NUM_CLASSES)
    with pytest.raises(ValueError, match="different frozen weights"):
        trainer(tmp_path).test(other_backbone, loaders("classification"), ckpt_path=path, verbose=False)
    other_model = ClassificationModule(tiny_model(adapter=False), NUM_CLASSES)
    with pytest.raises(ValueError, match="does not match"):
        trainer(tmp_path).test(other_model, loaders("classification"), ckpt_path=path, verbose=False)


@pytest.mark.slow
def test_segmentation_fit_and_test_logs_miou_and_dice(tmp_path):
    module = SegmentationModule(tiny_model("segmentation"), NUM_CLASSES, lr=0.01, dice_weight=0.5)
    fit = trainer(tmp_path, max_steps=2, enable_checkpointing=False)
    fit.fit(module, loaders("segmentation"))
    (results,) = fit.test(module, loaders("segmentation"), verbose=False)
    assert set(results) == {"test/loss", "test/miou", "test/dice"}
    assert all(0.0 <= results[k] <= 1.0 for k in ("test/miou", "test/dice"))


def test_segmentation_metrics_match_a_hand_computation():
    # two images (batches) whose per-image scores average differently from the dataset-level scores
    target_1 = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    pred_1 = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    target_2 = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]])
    pred_2 = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    metrics = segmentation_metrics(2)
    metrics.update(pred_1, target_1)
    metrics.update(pred_2, target_2)
    scores = metrics.compute()
    # pooled over both images: foreground tp=4+4, fp=1+0, fn=0+8; background tp=11+4, fp=0+8, fn=1+0
    iou_foreground = 8 / (8 + 1 + 8)
    iou_background = 15 / (15 + 8 + 1)
    assert scores["miou"].item() == pytest.approx((iou_foreground + iou_background) / 2, abs=1e-6)
    assert scores["dice"].item() == pytest.approx(2 * 8 / (2 * 8 + 1 + 8), abs=1e-6)

    # three classes: dice is the mean over the foreground classes 1 and 2
    target = torch.tensor([[[0, 1, 1, 2], [0, 1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 2, 2], [1, 1, 2, 0]]])
    three = segmentation_metrics(3)
    three.update(pred, target)
    scores = three.compute()
    dice_1 = 2 * 2 / (3 + 3)  # class 1: tp 2, predicted 3, true 3
    dice_2 = 2 * 2 / (3 + 3)  # class 2: tp 2, predicted 3, true 3
    iou = [1 / 3, 2 / 4, 2 / 4]  # class 0: tp 1, union 3; classes 1 and 2: tp 2, union 4
    assert scores["dice"].item() == pytest.approx((dice_1 + dice_2) / 2, abs=1e-6)
    assert scores["miou"].item() == pytest.approx(sum(iou) / 3, abs=1e-6)


def test_classification_metrics_match_a_hand_computation():
    probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2], [0.45, 0.55]])
    target = torch.tensor([0, 0, 1, 1, 1])
    metrics = classification_metrics(2)
    metrics.update(probs, target)
    scores = metrics.compute()
    assert scores["acc"].item() == pytest.approx(3 / 5)
    # class 0: tp 1 fp 1 fn 1 -> F1 1/2; class 1: tp 2 fp 1 fn 1 -> F1 2/3
    assert scores["f1_macro"].item() == pytest.approx((1 / 2 + 2 / 3) / 2)
    # positive scores 0.7, 0.2, 0.55 vs negative 0.1, 0.6: pairs ranked correctly 2 + 0 + 1 of 6
    assert scores["auroc"].item() == pytest.approx(4 / 6)


def test_soft_dice_loss():
    target = torch.tensor([[[0, 1], [1, 1]]])
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 2, 2, 2)  # p = 0.5 everywhere; foreground: 2*1.5 / (2 + 3) with smooth 1
    assert soft_dice_loss(uniform, target).item() == pytest.approx(1 - (2 * 1.5 + 1) / (2 + 3 + 1))
    both = soft_dice_loss(uniform, target, include_background=True).item()
    background = (2 * 0.5 + 1) / (2 + 1 + 1)
    assert both == pytest.approx(1 - ((2 * 1.5 + 1) / 6 + background) / 2)
