"""LP-FT: the classification head fitted as an L-BFGS linear probe before training (``task.module.head_init``)."""

from __future__ import annotations

import json

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import tiny_config
from fftprompt.heads import ClassificationHead
from fftprompt.linear_probe import fit_linear_probe, select_linear_probe
from fftprompt.lit import ClassificationModule
from fftprompt.run import train
from test_lit import NUM_CLASSES, tiny_model, trainer


def separable(count: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % NUM_CLASSES
    centres = torch.randn(NUM_CLASSES, width, generator=generator) * 3
    features = centres[labels] + torch.randn(count, width, generator=generator) * torch.linspace(0.2, 5, width)
    return features.double() + 7.0, labels  # offset and uneven scales: the standardisation matters


def test_folded_probe_gives_the_probe_logits_on_raw_features():
    features, labels = separable(60, 6, seed=0)
    probe = fit_linear_probe(features, labels, NUM_CLASSES, 1e-2)
    weight, bias = probe.folded()
    torch.testing.assert_close(features @ weight.T + bias, probe.logits(features))


def test_select_linear_probe_keeps_the_best_validation_accuracy_and_the_earlier_of_ties():
    train, val = separable(60, 6, seed=0), separable(30, 6, seed=0)
    grid = [1e-4, 1e-2, 1e3]
    probe, scores = select_linear_probe(train, val, NUM_CLASSES, grid)
    expected = [
        float((fit_linear_probe(*train, NUM_CLASSES, w).predict(val[0]) == val[1]).double().mean()) for w in grid
    ]
    assert scores == expected
    best = max(expected)
    assert probe.weight_decay == grid[expected.index(best)]
    with pytest.raises(ValueError, match="weight_decays is empty"):
        select_linear_probe(train, val, NUM_CLASSES, [])


@pytest.mark.parametrize(("norm", "standardize"), [(False, False), (True, False), (False, True)])
def test_head_loaded_from_a_probe_computes_the_probe_logits(norm, standardize):
    torch.manual_seed(0)
    head = ClassificationHead(6, NUM_CLASSES, norm=norm, standardize=standardize).eval()
    pooled, labels = separable(60, 6, seed=1)
    inputs = head.probe_inputs(pooled.float()).double()
    probe = fit_linear_probe(inputs, labels, NUM_CLASSES, 1e-3)
    head.load_probe(probe)
    torch.testing.assert_close(head(pooled.float()), probe.logits(inputs).float(), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"probe weight \(3, 5\); this head expects \(3, 6\)"):
        head.load_probe(fit_linear_probe(inputs[:, :5], labels, NUM_CLASSES, 1e-3))


class SplitData(L.LightningDataModule):
    """The two things ``fit_head_probe`` reads from a data module: ``evaluation_dataset(split)`` and ``batch_size``."""

    def __init__(self, val_count: int = 12) -> None:
        super().__init__()
        self.batch_size = 4
        generator = torch.Generator().manual_seed(3)
        counts = {"train": 15, "val": val_count}
        self.datasets = {
            split: TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.arange(n) % NUM_CLASSES)
            for split, n in counts.items()
        }

    def evaluation_dataset(self, split: str) -> TensorDataset:
        return self.datasets[split]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True)


def pooled_inputs(model, dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = dataset.tensors
    with torch.no_grad():
        return model.head.probe_inputs(model.eval().forward_pooled(images)).double(), labels


def test_fit_head_probe_sets_the_head_to_the_probe_chosen_on_validation(tmp_path):
    model = tiny_model()
    module = ClassificationModule(
        model, NUM_CLASSES, lr=0.0, head_init="probe", head_init_weight_decays=[1e-4, 1e-1]
    )  # lr 0: the one step leaves the fitted head as it is
    data = SplitData()
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=data)
    train, val = (
        pooled_inputs(model, data.evaluation_dataset("train")),
        pooled_inputs(model, data.evaluation_dataset("val")),
    )
    probe, scores = select_linear_probe(train, val, NUM_CLASSES, [1e-4, 1e-1])
    assert module.head_probe == {"weight_decay": probe.weight_decay, "val_accuracy": scores, "train_images": 15}
    with torch.no_grad():
        logits = model.eval()(data.evaluation_dataset("train").tensors[0])
    torch.testing.assert_close(logits, probe.logits(train[0]).float(), rtol=1e-4, atol=1e-4)


def test_head_probe_is_not_refitted_on_a_resume_nor_with_a_random_head(tmp_path):
    data = SplitData()
    random_head = ClassificationModule(tiny_model(), NUM_CLASSES, lr=0.0)
    before = random_head.model.head.classifier.weight.clone()
    trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(random_head, datamodule=data)
    assert random_head.head_probe is None and torch.equal(random_head.model.head.classifier.weight, before)

    module = ClassificationModule(tiny_model(), NUM_CLASSES, lr=0.05, head_init="probe", head_init_weight_decays=[1e-2])
    run = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    run.fit(module, datamodule=data)
    assert module.head_probe is not None and module.head_probe["val_accuracy"] == [None]  # a grid of one: no choice
    run.save_checkpoint(tmp_path / "step2.ckpt")
    trained = module.model.head.classifier.weight.detach().clone()
    # lr 0 after the resume: the head must stay what the checkpoint holds, not become a fresh probe
    resumed = ClassificationModule(tiny_model(), NUM_CLASSES, lr=0.0, head_init="probe", head_init_weight_decays=[1e-2])
    resume = trainer(tmp_path, max_steps=3, max_epochs=10, limit_val_batches=0)
    resume.fit(resumed, datamodule=data, ckpt_path=tmp_path / "step2.ckpt")
    assert resumed.head_probe is None
    torch.testing.assert_close(resumed.model.head.classifier.weight, trained)


def test_head_probe_bad_settings_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match=r"task.module.head_init='lbfgs'; expected one of \['random', 'probe'\]"):
        ClassificationModule(tiny_model(), NUM_CLASSES, head_init="lbfgs")
    with pytest.raises(ValueError, match=r"task.module.head_init_weight_decays=\[0.0\]: expected a non-empty list"):
        ClassificationModule(tiny_model(), NUM_CLASSES, head_init="probe", head_init_weight_decays=[0.0])
    module = ClassificationModule(tiny_model(), NUM_CLASSES, head_init="probe")
    with pytest.raises(ValueError, match="validation split, which is empty; give one value"):
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=SplitData(val_count=0))
    plain = ClassificationModule(tiny_model(), NUM_CLASSES, head_init="probe")
    loader = DataLoader(SplitData().evaluation_dataset("train"), batch_size=4)
    with pytest.raises(ValueError, match="reads the training and validation splits from the trainer's data module"):
        trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(plain, train_dataloaders=loader)


def test_a_training_run_records_what_the_probe_chose(tmp_path):

    run = tmp_path / "run"
    metrics, objects = train(tiny_config(run, "trainer.fast_dev_run=true", "task.module.head_init=probe"))
    chosen = objects["module"].head_probe
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["head_probe_weight_decay"] == chosen["weight_decay"] == metrics["head_probe_weight_decay"]
    assert saved["head_probe_val_acc"] == max(chosen["val_accuracy"])
    assert chosen["train_images"] == 16  # the tiny benchmark's training split, every image once
