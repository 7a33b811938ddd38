"""``fftprompt-robustness``: in-domain, cross-domain and corruption accuracy of the compared methods, with and without
frequency-domain augmentation, over seeds (the study behind ``docs/robustness.md``).

Every run is :func:`fftprompt.run.train` on a config composed from the packaged Hydra configs, every evaluation
:func:`fftprompt.run.evaluate` (the shifted test domains through ``data.test_domain=``, the corruptions through
``corruptions=``), so the study measures exactly what ``fftprompt-train`` / ``fftprompt-eval`` produce. Finished runs
and evaluations whose saved config equals the composed one are reused: an interrupted study continues.

Modules: :mod:`~fftprompt.study.runner` (configs, runs, evaluations), :mod:`~fftprompt.study.tables` (statistics
over seeds, goal check, markdown), :mod:`~fftprompt.study.cli` (the command line).
"""

from fftprompt.study.cli import main
from fftprompt.study.runner import StudySettings, run_study

__all__ = ["StudySettings", "main", "run_study"]
