"""A model and data set small enough to kill and resume many times.

Registered in mmengine's root registries (``default_scope=None``) for the
kill-loop test's config (``kill_loop_config.py``). A 4 MB buffer that the
forward does not use makes a checkpoint take a while to write, so that a
kill lands inside a save without making iterations slower.
"""

import torch
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, MODELS
from torch.utils.data import Dataset

WIDTH = 256
#: Samples: 32 iterations of batch 4 per epoch. mmengine's iteration-based
#: loop sleeps 2 s at every epoch end, also while a resumed run skips the
#: batches already trained, so short epochs would make each late run of the
#: kill loop wait; a few epoch ends are still crossed.
SAMPLES = 128
#: Elements of the unused buffer (float32).
BALLAST = 1 << 20


@MODELS.register_module(force=True)
class KillLoopToyModel(BaseModel):
    """BatchNorm, a linear layer and a large unused buffer."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.norm = torch.nn.BatchNorm1d(WIDTH)
        self.linear = torch.nn.Linear(WIDTH, WIDTH)
        self.register_buffer('ballast', torch.zeros(BALLAST))

    def forward(self, inputs, targets=None, mode='tensor'):
        out = self.linear(self.norm(torch.stack(inputs)))
        if mode == 'loss':
            return dict(loss=((out - torch.stack(targets)) ** 2).mean())
        return out


@DATASETS.register_module(force=True)
class KillLoopToyDataset(Dataset):
    """``SAMPLES`` generated samples of a fixed linear map."""

    def __init__(self):
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(SAMPLES, WIDTH, generator=gen)
        self.y = self.x.roll(1, dims=1) * 0.5

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):
        return dict(inputs=self.x[idx], targets=self.y[idx])
