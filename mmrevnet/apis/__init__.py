from .inference import save_overlays
from .logs import plot_training_curve, read_scalars

__all__ = ['save_overlays', 'read_scalars', 'plot_training_curve']
