"""bf16 mixed precision on the CPU for MMEngine's Runner.

mmengine's ``AmpOptimWrapper`` asserts a GPU (or NPU/MLU/MUSA). On the CPU
autocast runs in bfloat16, which has fp32's exponent range and needs no
loss scaling, so this wrapper only adds the autocast context.
"""

from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class MRevNetBF16CPUAmpOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that runs the forward under CPU bf16 autocast.

    ``tools/train.py --amp`` selects it when CUDA is unavailable (and
    ``AmpOptimWrapper`` otherwise).

    Args:
        dtype (str): Autocast dtype; only ``'bfloat16'`` is supported on
            the CPU. Defaults to ``'bfloat16'``.
        **kwargs: Arguments of ``OptimWrapper``.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs):
        if dtype not in ('bfloat16', torch.bfloat16):
            raise ValueError(
                'MRevNetBF16CPUAmpOptimWrapper: dtype must be '
                f"'bfloat16', got {dtype!r}"
            )
        super().__init__(**kwargs)
        self.cast_dtype = torch.bfloat16

    @contextmanager
    def optim_context(self, model):
        with super().optim_context(model), torch.autocast(
            'cpu', dtype=self.cast_dtype
        ):
            yield
