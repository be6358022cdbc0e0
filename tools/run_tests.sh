#!/usr/bin/env bash
# Run the test suite (this command line stays stable):
#
#   bash tools/run_tests.sh [pytest options and/or test paths]
#
# Creates/refreshes .venv (tools/setup_env.sh), then runs pytest with the
# options configured in pyproject.toml ([tool.pytest.ini_options]). Without a
# test path it runs everything under tests/; with one (e.g.
# tests/test_compat.py or tests/test_compat.py::test_name) only that.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup_env.sh

# Only add the default `tests` when no test path was given, so that a
# selection such as `bash tools/run_tests.sh tests/test_compat.py` runs
# just that file.
targets=(tests)
for arg in "$@"; do
    case "$arg" in
        -*) ;;
        *) if [[ -e "${arg%%::*}" ]]; then targets=(); fi ;;
    esac
done

# ${a[@]+"${a[@]}"}: an empty array is fine under `set -u` in old bash too.
cmd=(.venv/bin/python -m pytest -p no:cacheprovider
    ${targets[@]+"${targets[@]}"} "$@")
echo "[run_tests] ${cmd[*]}"
exec "${cmd[@]}"
