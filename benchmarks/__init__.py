"""Studies and benchmark harnesses of mmrevnet (not installed).

Imported from the repository root by ``tools/analysis_tools/*`` and the
tests under ``tests/test_benchmarks``; they use the installed library the
way a user would and are not part of its API.

* :mod:`.benchmark`: activation memory and step time of segmentors with
  m-RevNet, ResNetV1c and ResNetV1c with ``with_cp`` backbones.
* :mod:`.precision`: memory-saving against plain gradients per precision.
* :mod:`.drift`: reconstruction drift against depth and gamma
  (``python -m benchmarks.drift`` prints the table).
* :mod:`.toy_dynamics`: the toy experiments of Momentum ResNets.
* :mod:`.bad_inputs`: invalid inputs and the errors they must give.
"""
