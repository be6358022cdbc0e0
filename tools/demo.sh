#!/usr/bin/env bash
# Quick-start demo (this command line stays stable):
#
#   bash tools/demo.sh [options passed on to tools/run_demo.py]
#
# Creates/refreshes .venv (tools/setup_env.sh), then runs the demo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash tools/setup_env.sh

if [[ -f tools/run_demo.py ]]; then
    exec .venv/bin/python tools/run_demo.py "$@"
fi

echo '[demo] tools/run_demo.py does not exist yet: the demo arrives later.'
echo '[demo] Checking that the environment imports instead.'
exec .venv/bin/python -c "
import mmrevnet, mmseg.models, mmpretrain.models
import mmengine, mmseg, mmpretrain, torch
print('[demo] OK: mmrevnet %s imports with mmseg %s, mmpretrain %s, '
      'mmengine %s, torch %s.' % (mmrevnet.__version__, mmseg.__version__,
      mmpretrain.__version__, mmengine.__version__, torch.__version__))
"
