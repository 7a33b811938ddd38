"""``fftprompt-ablate``: methods x seeds at matched trainable-parameter budgets, and frequency-feature ablations.

Every run is :func:`fftprompt.run.train` on a config composed from the packaged Hydra configs (the default demo:
generated symmetry benchmark, small randomly initialised ViT, CPU) with the overrides of one variant, so the ablation
trains exactly what ``fftprompt-train`` trains. Runs write their directories under ``<output>/runs/<variant>/seed<k>``
(no logger, no checkpoints, no validation loop: the final weights are tested, the same rule for every method; no
frequency-map figures). A finished run whose saved ``config.yaml`` equals the composed config is reused, so an
interrupted ablation continues where it stopped (``--rerun`` trains everything again). ``--jobs N`` trains the runs
in ``N`` worker processes (every ``N``-th run each, logs in ``<output>/logs``) and then collects them.

Modules:

- :mod:`~fftprompt.ablate.plan`: every variant sized to the parameter budget (pure arithmetic over ``ModelDims``);
- :mod:`~fftprompt.ablate.runner`: the base config, the runs, the worker processes;
- :mod:`~fftprompt.ablate.tables`: statistics over seeds, the goal check, ``ablation.{json,md,png}``;
- :mod:`~fftprompt.ablate.cli`: the command line (argparse: it drives many runs, see there).

Output: ``ablation.json``, ``ablation.md`` and ``ablation.png`` in ``--output``, and the markdown (with the figure
next to it) at ``--doc`` when given.
"""

from fftprompt.ablate.cli import main
from fftprompt.ablate.plan import ABLATIONS, METHODS, Variant, plan_variants
from fftprompt.ablate.runner import plan_ablation, run_ablation

__all__ = ["ABLATIONS", "METHODS", "Variant", "main", "plan_ablation", "plan_variants", "run_ablation"]
