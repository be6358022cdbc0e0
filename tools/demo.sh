#!/usr/bin/env bash
# Quick-start demo (this command line stays stable):
#
#   bash tools/demo.sh [options passed on to tools/run_demo.py]
#
# Creates/refreshes .venv (tools/setup_env.sh), generates a Cityscapes-layout
# data set, trains and evaluates the demo PSPNet-m-RevNet on the CPU and
# paints prediction overlays (see README.md, "Quick start").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup_env.sh

exec .venv/bin/python tools/run_demo.py "$@"
