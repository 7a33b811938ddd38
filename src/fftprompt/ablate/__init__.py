"""``fftprompt-ablate``: methods x seeds at matched trainable-parameter budgets, frequency-feature ablations, and
the real-data comparison (datasets x formula-pretrained/random backbone x few-shot sizes).

Every run is :func:`fftprompt.run.train` on a config composed from the packaged Hydra configs (the default demo:
generated symmetry benchmark, the demo ViT with its shipped weights, CPU) with the overrides of one setting and one
variant, so the ablation trains exactly what ``fftprompt-train`` trains. Runs write their directories under
``<output>/[<setting>/]runs/<variant>/seed<k>`` (the setting folder, e.g. ``dtd-random-5shot``, is left out for the
generated benchmark with the default backbone, so the classic ablation and the comparison share those runs; no
logger, no checkpoints, no validation loop: the final weights are tested, the same rule for every method; no
frequency-map figures). A finished run whose saved ``config.yaml`` equals the composed config is reused, so an
interrupted ablation continues where it stopped (``--rerun`` trains everything again). ``--jobs N`` trains the runs
in ``N`` worker processes (every ``N``-th run of each setting, logs in ``<output>/logs``) and then collects them.

Modules:

- :mod:`~fftprompt.ablate.plan`: every variant sized to the parameter budget (pure arithmetic over ``ModelDims``);
- :mod:`~fftprompt.ablate.settings`: the datasets, backbones and few-shot sizes as Hydra overrides (pure);
- :mod:`~fftprompt.ablate.runner`: the base config, the runs, the worker processes;
- :mod:`~fftprompt.ablate.tables`: statistics over seeds, the goal check, ``ablation.{json,md,png}``;
- :mod:`~fftprompt.ablate.comparison`: the comparison's tables, goals and figure, ``comparison.{json,md,png}``;
- :mod:`~fftprompt.ablate.cli`: the command line (argparse: it drives many runs, see there).

Output: ``ablation.*`` (one setting on the generated benchmark) or ``comparison.*`` in ``--output``, and at ``--doc``
the section of that name (text outside the generated sections, such as a discussion, is kept) with its figure.
"""

from fftprompt.ablate.cli import main
from fftprompt.ablate.plan import ABLATIONS, METHODS, Variant, plan_variants
from fftprompt.ablate.runner import plan_ablation, run_ablation

__all__ = ["ABLATIONS", "METHODS", "Variant", "main", "plan_ablation", "plan_variants", "run_ablation"]
