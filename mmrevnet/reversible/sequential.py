"""MomentumSequential: a momentum stage as a self-contained nn.Module."""

from typing import Optional, Sequence

from torch import Tensor, nn

from .function import StageReport
from .stage import MomentumStage, StageConfig


class MomentumSequential(nn.Module):
    """A stack of momentum residual updates with a memory-free backward.

    For each function ``F`` in order::

        v <- gamma * v + (1 - gamma) * F(x);    x <- x + v

    (m-RevNet, Li & Gao, ICCV 2021; Momentum ResNets, Sander et al.,
    ICML 2021). With ``memory_saving=True``, in training with grad enabled,
    the backward reconstructs every ``x_t`` from the stage end instead of
    storing it. In eval mode or under ``torch.no_grad()`` the functions run
    plainly.

    Args:
        functions (Sequence[nn.Module]): The residual functions; ``F(x)``
            must have ``x``'s shape. A module may appear several times
            (shared weights); its gradient is the sum over its uses.
        gamma (float): Momentum ``gamma = 1 - mu``. Defaults to 0.9.
        memory_saving (bool): Use the reconstructing backward.
            Defaults to True.
        **kwargs: Further settings of :class:`~.stage.MomentumStage`
            (``with_cp``, ``name``, ``max_amplification``,
            ``preserve_rng_state``, ``track_drift``).

    Example:
        >>> stage = MomentumSequential([nn.Linear(4, 4)] * 3, gamma=0.9)
        >>> y = stage(torch.randn(2, 4, requires_grad=True))
    """

    def __init__(
        self,
        functions: Sequence[nn.Module],
        gamma: float = 0.9,
        memory_saving: bool = True,
        **kwargs,
    ):
        super().__init__()
        self.functions = nn.ModuleList(functions)
        self.stage = MomentumStage(
            len(self.functions),
            gamma=gamma,
            memory_saving=memory_saving,
            **kwargs,
        )

    @property
    def gamma(self) -> float:
        return self.stage.gamma

    @property
    def config(self) -> StageConfig:
        """The validated settings (read-only; see :meth:`configure`)."""
        return self.stage.config

    def configure(self, **changes) -> StageConfig:
        """Change settings, validated like the constructor's arguments."""
        return self.stage.configure(**changes)

    @property
    def report(self) -> StageReport:
        """Drift measured by the last backward (with ``track_drift``)."""
        return self.stage.report

    def forward(self, x: Tensor, v0: Optional[Tensor] = None) -> Tensor:
        return self.stage(list(self.functions), x, v0, self.training)

    def extra_repr(self) -> str:
        return (
            f'gamma={self.stage.gamma}, '
            f'memory_saving={self.stage.memory_saving}'
        )
