#!/usr/bin/env bash
# What CI does: clone the committed tree into a temporary folder and run the README's test command there.
# Usage: scripts/check_clean_clone.sh [make target ...]   (default: test)
set -euo pipefail
repo=$(git rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone --quiet "$repo" "$work/fftprompt"
cd "$work/fftprompt"
# the shared sample data sits beside the project, as in CI
[ -e ../shared ] || ln -s "$repo/../shared" ../shared
make "${@:-test}"
