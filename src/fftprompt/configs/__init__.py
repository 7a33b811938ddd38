"""Hydra configs of fftprompt-train / fftprompt-eval (a package so that Hydra can locate them when installed)."""
