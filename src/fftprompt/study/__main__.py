"""``python -m fftprompt.study``: the ``fftprompt-robustness`` command."""

from fftprompt.study.cli import main

raise SystemExit(main())
