"""Frequency features vs a frozen ViT forward; see ``fftprompt-bench features --help``."""

from fftprompt.bench.features import main

raise SystemExit(main())
