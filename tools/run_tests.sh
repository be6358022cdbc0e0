#!/usr/bin/env bash
# Run the test suite (this command line stays stable):
#
#   bash tools/run_tests.sh [pytest options and/or test paths]
#
# Creates/refreshes .venv (tools/setup_env.sh), then runs pytest with the
# options configured in pyproject.toml ([tool.pytest.ini_options]). Without a
# test path it runs everything under tests/; with one (e.g.
# tests/test_compat.py or tests/test_compat.py::test_name) only that.
#
# The whole suite runs in two pytest-xdist workers, one test file at a time
# per worker (--dist loadfile: a file's module fixtures are built once),
# the files in the order tests/conftest.py collects them, longest first
# (--no-loadscope-reorder keeps xdist from reordering by number of tests),
# each worker and the tools it starts with one intra-op thread
# (OMP_NUM_THREADS=1), so that the two workers share the 2 cores instead of
# oversubscribing them. A selection runs in this process as before. Pass
# -n N (or -n 0, or -p no:xdist) to choose otherwise; set OMP_NUM_THREADS
# to keep another thread count.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup_env.sh

# Only add the default `tests` when no test path was given, so that a
# selection such as `bash tools/run_tests.sh tests/test_compat.py` runs
# just that file.
targets=(tests)
workers=(-n 2 --dist loadfile --no-loadscope-reorder)
for arg in "$@"; do
    case "$arg" in
        -n | -n* | --numprocesses | --numprocesses=* | no:xdist) workers=() ;;
        -*) ;;
        *) if [[ -e "${arg%%::*}" ]]; then targets=() workers=(); fi ;;
    esac
done
if (( ${#workers[@]} )); then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi

# ${a[@]+"${a[@]}"}: an empty array is fine under `set -u` in old bash too.
cmd=(.venv/bin/python -m pytest -p no:cacheprovider
    ${workers[@]+"${workers[@]}"} ${targets[@]+"${targets[@]}"} "$@")
echo "[run_tests] ${cmd[*]}"
exec "${cmd[@]}"
