"""``fftprompt-bench``: speed and memory benchmarks, one sub-command per concern.

Every sub-command measures the methods it compares side by side in one process and one run, and reports
ratios, because absolute timings on shared machines are noisy. The command line is argparse, not Hydra: a benchmark
takes measurement options (sizes, repetitions, threads, device), not the config of a training run.
"""

from __future__ import annotations

import importlib
import sys

# sub-command -> module under fftprompt.bench exposing ``main(argv) -> int``
_COMMANDS = {
    "features": "Frequency feature extraction vs a frozen ViT forward.",
    "fourierft": "Train step and memory: linear probe, LoRA, PEFT's FourierFT, ours.",
    "prompts": "Train step of frequency-conditioned prompts vs VPT prompts.",
    "methods": "Every method side by side: trainable params, train step, inference, peak memory.",
    "augment": "What the frequency-domain augmentations (fda, amp_mix, band) add to a train step.",
    "train": "End-to-end fftprompt-train throughput (Lightning, JPEG decoding, workers) vs the raw step.",
    "ops": "Operator, copy, FFT and kernel-launch counts of one train step per method (torch.profiler).",
}


def _usage() -> str:
    lines = ["usage: fftprompt-bench COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, text in _COMMANDS.items()]
    lines += ["", "fftprompt-bench COMMAND --help shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in _COMMANDS:
        print(f"fftprompt-bench: unknown command {command!r}; expected one of {sorted(_COMMANDS)}\n", file=sys.stderr)
        print(_usage(), file=sys.stderr)
        return 2
    module = importlib.import_module(f"fftprompt.bench.{command}")
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
