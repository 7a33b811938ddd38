"""``python -m fftprompt.ablate``: the ``fftprompt-ablate`` command (also how ``--jobs`` starts its workers)."""

from fftprompt.ablate.cli import main

raise SystemExit(main())
