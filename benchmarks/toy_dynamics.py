"""Toy dynamics: maps a momentum network represents and a ResNet should not.

The two toy experiments of Momentum ResNets (Sander et al., "Momentum
Residual Neural Networks", ICML 2021), the continuous-time argument behind
m-RevNet (Li & Gao, "m-RevNet: Deep Reversible Neural Networks with
Momentum", ICCV 2021), run with this project's :class:`MomentumSequential`:

* ``cube`` (1-D): learn ``x -> -x**3`` on ``[-1, 1]``. A first-order ODE
  flow is a homeomorphism and preserves order on the line, so its best fit
  is the constant 0 (MSE 1/7). A second-order (momentum) flow can make the
  trajectories cross. A discrete ResNet with large steps can in principle
  fold the line too.
* ``rings`` (2-D): four nested rings with alternating labels, then a
  linear classifier. A homeomorphism of the plane cannot pull the inner
  ring out through the next one, so a linear boundary cannot separate the
  labels after a first-order flow.

Both models share everything but the coupling: ``F`` is
``Linear(d, 16)-Tanh-Linear(16, d)``, one module shared by 15 steps
(``[f] * 15``: its gradient is the sum over the steps). m-RevNet is
``MomentumSequential(..., gamma=0.99, memory_saving=True)`` and trains
through the reconstructing backward; the ResNet is
``MomentumSequential(..., gamma=0.0, memory_saving=False)``, i.e.
``x <- x + F(x)``. Intermediate states for the plots come from
:func:`mmrevnet.reversible.forward_step`, the stage's own step.

Protocol (fixed before any result was looked at, identical for both
models):

* Optimiser Adam, learning-rate grid :data:`LR_GRID` = 0.003, 0.01, 0.03,
  0.1 (half-decade steps around the recipes' 0.01), the same number of
  steps for every run; a seed fixes the initialisation (identical for both
  models) and the training data.
* ``cube``: 1000 steps, each on 200 fresh ``U[-1, 1]`` samples. Validation:
  1000 ``U[-1, 1]`` samples from a fixed seed; test: the evenly spaced grid
  of 1001 points on ``[-1, 1]``. Metric: MSE against ``-x**3``.
* ``rings``: radii ``3 * (r + 0.2 * U)``, ``r`` in 0.5, 1, 1.5, 2, labels
  0, 1, 0, 1, uniform angles; 250 training points per ring (one set per
  seed), 1000 full-batch steps of cross-entropy; validation 250 and test
  1000 fresh points per ring from fixed seeds. Metric: accuracy.
* Selection: for each model separately, the learning rate with the best
  median **validation** metric over the seeds (lowest MSE; highest
  accuracy, ties broken by the lower median validation cross-entropy, then
  the smaller learning rate). A run whose loss or metric turned non-finite
  is reported as diverged and counts as the worst value (MSE = inf,
  accuracy = 0) in that median; it is never dropped. Test metrics are
  reported for every learning rate and seed, the selected one highlighted.

The budgets are smaller than the recipes' (momentumnet's rings script uses
1000 points per ring and Adam at lr 0.2; its 1-D example SGD at lr 0.01)
so that each experiment, all learning rates and seeds of both models, runs
in under two minutes on a 2-core CPU.
"""

import concurrent.futures
import math
import multiprocessing
import os
import statistics
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as nnf
from torch import Tensor, nn

from mmrevnet.reversible import MomentumSequential, forward_step

__all__ = [
    'LR_GRID',
    'MODELS',
    'EXPERIMENTS',
    'ToyNet',
    'build_model',
    'cube_batch',
    'cube_grid',
    'cube_bound',
    'nested_rings',
    'experiment_config',
    'train_run',
    'run_experiment',
    'select_lr',
    'fold_statistics',
    'FOLD_TOLERANCE',
    'markdown_report',
    'plot_cube',
    'plot_rings',
    'default_workers',
]

#: Learning rates tried for every model of every experiment.
LR_GRID: Tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)

#: The two couplings compared: keyword arguments of MomentumSequential.
MODELS: Dict[str, Dict] = {
    'm-RevNet': dict(gamma=0.99, memory_saving=True),
    'ResNet': dict(gamma=0.0, memory_saving=False),
}

#: Default settings per experiment (see the module docstring).
EXPERIMENTS: Dict[str, Dict] = {
    'cube': dict(
        dim=1,
        num_classes=0,
        steps=1000,
        batch=200,
        val_points=1000,
        test_points=1001,
        seeds=(0, 1, 2, 3, 4),
    ),
    'rings': dict(
        dim=2,
        num_classes=2,
        steps=1000,
        train_per_ring=250,
        val_per_ring=250,
        test_per_ring=1000,
        seeds=(0, 1, 2),
    ),
}

DEPTH = 15
HIDDEN = 16
RING_RADII = (0.5, 1.0, 1.5, 2.0)
# Fixed, distinct from any training seed, so that every run of an
# experiment is scored on the same points.
_VAL_SEED = 10_001
_TEST_SEED = 20_002
# The training data stream of a run: offset so that it never repeats the
# stream that initialised the weights.
_DATA_SEED_OFFSET = 1_000


def cube_batch(n: int, generator: torch.Generator) -> Tuple[Tensor, Tensor]:
    """``n`` samples ``x ~ U[-1, 1]`` and targets ``-x**3``.

    Args:
        n (int): Number of samples.
        generator (torch.Generator): Source of randomness.

    Returns:
        tuple[Tensor, Tensor]: ``x`` and ``y``, both of shape ``(n, 1)``.
    """
    x = torch.rand(n, 1, generator=generator) * 2.0 - 1.0
    return x, -(x**3)


def cube_grid(n: int = 1001) -> Tuple[Tensor, Tensor]:
    """Evenly spaced points on ``[-1, 1]`` and their targets ``-x**3``.

    Args:
        n (int): Number of points, both ends included. Defaults to 1001.

    Returns:
        tuple[Tensor, Tensor]: ``x`` and ``y``, both of shape ``(n, 1)``.
    """
    x = torch.linspace(-1.0, 1.0, n).view(-1, 1)
    return x, -(x**3)


def cube_bound(n: int = 1001) -> float:
    """MSE of the constant 0 on :func:`cube_grid`: the order-preserving best.

    An increasing map's best fit of the decreasing ``-x**3`` is a constant,
    and the best constant is 0 by symmetry; on ``U[-1, 1]`` its MSE is
    ``E[x**6] = 1/7``. On the grid it is slightly above that.

    Args:
        n (int): Number of grid points. Defaults to 1001.
    """
    _, y = cube_grid(n)
    return float(y.pow(2).mean())


def nested_rings(
    points_per_ring: int,
    generator: torch.Generator,
    radii: Sequence[float] = RING_RADII,
    noise: float = 0.2,
    scale: float = 3.0,
) -> Tuple[Tensor, Tensor]:
    """Points on nested rings with alternating labels.

    Ring ``i`` has radius ``scale * (radii[i] + noise * U[0, 1])``, a uniform
    angle and label ``i % 2``.

    Args:
        points_per_ring (int): Points drawn on each ring.
        generator (torch.Generator): Source of randomness.
        radii (Sequence[float]): Base radii, inner to outer.
            Defaults to (0.5, 1.0, 1.5, 2.0).
        noise (float): Width of each ring relative to ``scale``.
            Defaults to 0.2.
        scale (float): Overall scale. Defaults to 3.0.

    Returns:
        tuple[Tensor, Tensor]: Points ``(N, 2)`` and labels ``(N,)`` (long).
    """
    xs, ys = [], []
    for index, radius in enumerate(radii):
        theta = (
            2.0 * math.pi * torch.rand(points_per_ring, generator=generator)
        )
        rho = scale * (
            radius + noise * torch.rand(points_per_ring, generator=generator)
        )
        xs.append(
            torch.stack([rho * torch.cos(theta), rho * torch.sin(theta)], 1)
        )
        ys.append(torch.full((points_per_ring,), index % 2, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


class ToyNet(nn.Module):
    """A momentum stage of one shared ``F``, then an optional linear head.

    Args:
        stage (MomentumSequential): The stage; its functions may repeat.
        head (nn.Module, optional): Applied to the stage output.
            Defaults to None (the output is the stage's ``x_T``).
    """

    def __init__(
        self, stage: MomentumSequential, head: Optional[nn.Module] = None
    ):
        super().__init__()
        self.stage = stage
        self.head = head if head is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage(x))

    @torch.no_grad()
    def trajectory(self, x: Tensor) -> Tensor:
        """States ``x_0 .. x_T`` of the stage (``v_0 = 0``), without grad.

        Args:
            x (Tensor): Inputs ``(N, d)``.

        Returns:
            Tensor: ``(T + 1, N, d)``.
        """
        gamma = self.stage.gamma
        v = torch.zeros_like(x)
        states = [x]
        for function in self.stage.functions:
            x, v = forward_step(x, v, function(x), gamma)
            states.append(x)
        return torch.stack(states)


def build_model(
    model: str,
    dim: int,
    num_classes: int = 0,
    seed: int = 0,
    depth: int = DEPTH,
    hidden: int = HIDDEN,
    dtype: torch.dtype = torch.float32,
) -> ToyNet:
    """The toy network of one coupling, initialised from ``seed``.

    Both models built from the same seed have identical weights: only the
    coupling differs.

    Args:
        model (str): A key of :data:`MODELS`.
        dim (int): Input and state dimension.
        num_classes (int): Classes of a linear head; 0 for no head.
            Defaults to 0.
        seed (int): Initialisation seed. Defaults to 0.
        depth (int): Steps sharing the one ``F``. Defaults to 15.
        hidden (int): Hidden width of ``F``. Defaults to 16.
        dtype (torch.dtype): Parameter dtype. Defaults to torch.float32.
    """
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        function = nn.Sequential(
            nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)
        )
        head = nn.Linear(dim, num_classes) if num_classes else None
    finally:
        torch.random.set_rng_state(generator_state)
    stage = MomentumSequential([function] * depth, **MODELS[model])
    return ToyNet(stage, head).to(dtype)


def experiment_config(name: str, quick: bool = False, **overrides) -> Dict:
    """Settings of an experiment: the defaults, the quick variant, overrides.

    Args:
        name (str): ``'cube'`` or ``'rings'``.
        quick (bool): A smoke-test budget (a few seconds, not a result).
            Defaults to False.
        **overrides: Settings replacing the defaults (``steps``, ``seeds``,
            ``lrs``, ...); None values are ignored.

    Returns:
        dict: Settings including ``name``, ``lrs`` and ``models``.
    """
    if name not in EXPERIMENTS:
        raise ValueError(
            f'unknown experiment {name!r}; expected one of '
            f'{sorted(EXPERIMENTS)}'
        )
    config = dict(EXPERIMENTS[name], name=name, lrs=LR_GRID)
    config['models'] = tuple(MODELS)
    if quick:
        config.update(steps=100, seeds=(0,), lrs=(0.03,))
        if name == 'rings':
            config.update(train_per_ring=100, val_per_ring=100)
    config.update({k: v for k, v in overrides.items() if v is not None})
    config['seeds'] = tuple(int(s) for s in config['seeds'])
    config['lrs'] = tuple(float(lr) for lr in config['lrs'])
    return config


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def _data(config: Dict, split: str, seed: int = 0):
    if config['name'] == 'cube':
        if split == 'val':
            return cube_batch(config['val_points'], _generator(_VAL_SEED))
        return cube_grid(config['test_points'])
    per_ring = config[f'{split}_per_ring']
    split_seed = {
        'train': seed + _DATA_SEED_OFFSET,
        'val': _VAL_SEED,
        'test': _TEST_SEED,
    }[split]
    return nested_rings(per_ring, _generator(split_seed))


@torch.no_grad()
def _evaluate(net: ToyNet, config: Dict, split: str) -> Dict[str, float]:
    net.eval()
    x, y = _data(config, split)
    out = net(x)
    if config['name'] == 'cube':
        return {'mse': float(nnf.mse_loss(out, y))}
    return {
        'accuracy': float((out.argmax(1) == y).float().mean()),
        'cross_entropy': float(nnf.cross_entropy(out, y)),
    }


#: A final map whose value drops by more than this between two inputs
#: (``x_i < x_j`` but ``x_T(x_i) - x_T(x_j) > FOLD_TOLERANCE``) folded the
#: line. The target's own drop is 2; the tolerance only keeps float32
#: rounding of a flat (constant) fit from counting as a fold.
FOLD_TOLERANCE = 0.01


def fold_statistics(net: ToyNet, n: int = 1001) -> Dict:
    """How far a 1-D network reverses the order of evenly spaced inputs.

    Args:
        net (ToyNet): A 1-D network.
        n (int): Points of :func:`cube_grid`. Defaults to 1001.

    Returns:
        dict: ``max_drop``: the largest ``x_T(x_i) - x_T(x_j)`` over
        ``x_i < x_j`` (0 for a non-decreasing map); ``folded``:
        ``max_drop > FOLD_TOLERANCE``; ``crossed_depth``: the first depth at
        which two trajectories have swapped order by more than
        ``FOLD_TOLERANCE`` (None if never).
    """
    x, _ = cube_grid(n)
    states = net.trajectory(x)[:, :, 0]
    # Largest drop below the running maximum, per depth.
    running_max = torch.cummax(states, dim=1).values
    drops = (running_max - states).max(dim=1).values
    crossed = (drops > FOLD_TOLERANCE).nonzero()
    max_drop = float(drops[-1])
    return {
        'max_drop': max_drop,
        'folded': max_drop > FOLD_TOLERANCE,
        'crossed_depth': int(crossed[0]) if len(crossed) else None,
    }


def train_run(config: Dict, model: str, lr: float, seed: int) -> Dict:
    """Train one model at one learning rate and seed; evaluate it.

    Args:
        config (dict): From :func:`experiment_config`.
        model (str): A key of :data:`MODELS`.
        lr (float): Adam learning rate.
        seed (int): Initialisation and training-data seed.

    Returns:
        dict: ``model``, ``lr``, ``seed``, ``diverged``, ``diverged_step``
        (None or the step whose loss was non-finite), ``final_train_loss``,
        ``val`` and ``test`` metrics (NaN when diverged), ``fold`` (1-D:
        :func:`fold_statistics`; None otherwise), ``seconds`` and
        ``state_dict`` (for the plots).
    """
    start = time.perf_counter()
    net = build_model(model, config['dim'], config['num_classes'], seed=seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    cube = config['name'] == 'cube'
    if cube:
        stream = _generator(seed + _DATA_SEED_OFFSET)
    else:
        x_train, y_train = _data(config, 'train', seed)
    diverged_step = None
    loss_value = math.nan
    net.train()
    for step in range(config['steps']):
        if cube:
            x, y = cube_batch(config['batch'], stream)
        else:
            x, y = x_train, y_train
        out = net(x)
        loss = nnf.mse_loss(out, y) if cube else nnf.cross_entropy(out, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            diverged_step = step
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    val = _evaluate(net, config, 'val')
    test = _evaluate(net, config, 'test')
    metric = 'mse' if cube else 'accuracy'
    finite = all(math.isfinite(v) for v in (*val.values(), *test.values()))
    if diverged_step is None and not finite:
        diverged_step = config['steps']
    diverged = diverged_step is not None
    if diverged:
        val = {k: math.nan for k in val}
        test = {k: math.nan for k in test}
    return {
        'model': model,
        'lr': lr,
        'seed': seed,
        'diverged': diverged,
        'diverged_step': diverged_step,
        'final_train_loss': loss_value,
        'val': val,
        'test': test,
        'metric': metric,
        'fold': fold_statistics(net) if cube and not diverged else None,
        'seconds': time.perf_counter() - start,
        'state_dict': {
            k: v.detach().clone() for k, v in net.state_dict().items()
        },
    }


def _worst(metric: str) -> float:
    return math.inf if metric == 'mse' else 0.0


def _score(run: Dict, split: str, key: str) -> float:
    value = run[split][key]
    if run['diverged'] or not math.isfinite(value):
        return _worst(key) if key != 'cross_entropy' else math.inf
    return value


def select_lr(runs: List[Dict], model: str) -> Dict:
    """Apply the selection rule of the module docstring to one model.

    Args:
        runs (list[dict]): Results of :func:`train_run`.
        model (str): The model whose learning rate is selected.

    Returns:
        dict: ``lr``, ``rule``, the per-lr ``val_median``, and the selected
        learning rate's ``test_median``, ``test_per_seed`` (seed -> value,
        NaN for a diverged run) and ``diverged`` count.
    """
    mine = [r for r in runs if r['model'] == model]
    if not mine:
        raise ValueError(f'no runs of model {model!r}')
    metric = mine[0]['metric']
    lower_is_better = metric == 'mse'
    keys = {}
    val_median = {}
    for lr in sorted({r['lr'] for r in mine}):
        at_lr = [r for r in mine if r['lr'] == lr]
        median = statistics.median(_score(r, 'val', metric) for r in at_lr)
        val_median[lr] = median
        if lower_is_better:
            keys[lr] = (median, lr)
        else:
            ce = statistics.median(
                _score(r, 'val', 'cross_entropy') for r in at_lr
            )
            keys[lr] = (-median, ce, lr)
    lr = min(keys, key=keys.get)
    chosen = sorted(
        (r for r in mine if r['lr'] == lr), key=lambda r: r['seed']
    )
    rule = (
        'lowest median validation MSE over seeds'
        if lower_is_better
        else 'highest median validation accuracy over seeds (ties: lower '
        'median validation cross-entropy, then smaller lr)'
    ) + '; a diverged run counts as the worst value'
    return {
        'lr': lr,
        'rule': rule,
        'val_median': val_median,
        'test_median': statistics.median(
            _score(r, 'test', metric) for r in chosen
        ),
        'test_per_seed': {r['seed']: r['test'][metric] for r in chosen},
        'diverged': sum(r['diverged'] for r in chosen),
    }


def _worker_init():
    # One thread per process: the tensors are tiny, so intra-op threads
    # only contend with the other worker.
    torch.set_num_threads(1)


def run_experiment(
    config: Dict, workers: int = 1, log=None
) -> Tuple[Dict, List[Dict]]:
    """All models x learning rates x seeds of one experiment.

    Args:
        config (dict): From :func:`experiment_config`.
        workers (int): Processes training runs in parallel (each with one
            thread); 1 runs them here. Results do not depend on it.
            Defaults to 1.
        log (callable, optional): Called with a line per finished run.
            Defaults to None.

    Returns:
        tuple[dict, list[dict]]: The JSON-ready summary (config, runs
        without weights, selection per model, wall time) and the full runs
        (with ``state_dict``).
    """
    jobs = [
        (model, lr, seed)
        for model in config['models']
        for lr in config['lrs']
        for seed in config['seeds']
    ]
    start = time.perf_counter()
    runs = []
    if workers <= 1:
        for job in jobs:
            runs.append(train_run(config, *job))
            if log:
                log(_run_line(config['name'], runs[-1]))
    else:
        context = multiprocessing.get_context('spawn')
        with concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_init
        ) as pool:
            futures = [pool.submit(train_run, config, *job) for job in jobs]
            for future in concurrent.futures.as_completed(futures):
                runs.append(future.result())
                if log:
                    log(_run_line(config['name'], runs[-1]))
    wall = time.perf_counter() - start
    runs.sort(key=lambda r: jobs.index((r['model'], r['lr'], r['seed'])))
    summary = {
        'config': {k: v for k, v in config.items()},
        'wall_seconds': wall,
        'workers': workers,
        'runs': [
            {k: v for k, v in r.items() if k != 'state_dict'} for r in runs
        ],
        'selection': {m: select_lr(runs, m) for m in config['models']},
    }
    if config['name'] == 'cube':
        summary['constant_zero_test_mse'] = cube_bound(config['test_points'])
    return summary, runs


def _run_line(name: str, run: Dict) -> str:
    value = run['test'][run['metric']]
    state = (
        f'DIVERGED at step {run["diverged_step"]}'
        if run['diverged']
        else f'test {run["metric"]} {value:.4f}'
    )
    return (
        f'[{name}] {run["model"]:8s} lr {run["lr"]:<6g} seed {run["seed"]}: '
        f'{state} ({run["seconds"]:.1f} s)'
    )


def _fmt(value: float, metric: str) -> str:
    if value is None or not math.isfinite(value):
        return 'diverged' if value is None or math.isnan(value) else 'inf'
    if metric == 'mse':
        return f'{value:.4f}'
    return f'{100.0 * value:.1f}%'


def markdown_report(summaries: Dict[str, Dict]) -> str:
    """Markdown tables of every run and the selection, per experiment.

    Args:
        summaries (dict): Experiment name -> summary of
            :func:`run_experiment`.

    Returns:
        str: Markdown text.
    """
    lines = []
    for name, summary in summaries.items():
        config = summary['config']
        runs = summary['runs']
        metric = runs[0]['metric']
        label = 'test MSE' if metric == 'mse' else 'test accuracy'
        seeds = list(config['seeds'])
        lines.append(f'### {name}: {label}\n')
        lines.append(
            f'{config["steps"]} Adam steps per run; seeds {seeds}; '
            f'wall time {summary["wall_seconds"]:.0f} s with '
            f'{summary["workers"]} worker(s).'
        )
        if name == 'cube':
            lines.append(
                'Constant 0 (the best order-preserving fit) scores '
                f'{summary["constant_zero_test_mse"]:.4f} on the test grid. '
                '"folded": seeds whose final map drops by more than '
                f'{FOLD_TOLERANCE} somewhere (order reversed: trajectories '
                'of the test grid cross).'
            )
        lines.append('')
        head = ['model', 'lr'] + [f'seed {s}' for s in seeds]
        head += ['median', 'val median', 'diverged']
        if name == 'cube':
            head.append('folded')
        lines.append('| ' + ' | '.join(head) + ' |')
        lines.append('|' + '---|' * len(head))
        for model in config['models']:
            selection = summary['selection'][model]
            for lr in config['lrs']:
                at_lr = {
                    r['seed']: r
                    for r in runs
                    if r['model'] == model and r['lr'] == lr
                }
                values = [at_lr[s]['test'][metric] for s in seeds]
                median = statistics.median(
                    _score(at_lr[s], 'test', metric) for s in seeds
                )
                selected = lr == selection['lr']
                lr_text = f'**{lr:g}** (selected)' if selected else f'{lr:g}'
                row = [model, lr_text]
                row += [_fmt(v, metric) for v in values]
                row += [
                    _fmt(median, metric),
                    _fmt(selection['val_median'][lr], metric),
                    str(sum(at_lr[s]['diverged'] for s in seeds)),
                ]
                if name == 'cube':
                    folded = sum(
                        bool(at_lr[s]['fold'] and at_lr[s]['fold']['folded'])
                        for s in seeds
                    )
                    row.append(f'{folded}/{len(seeds)}')
                lines.append('| ' + ' | '.join(row) + ' |')
        lines.append('')
        lines.append(
            f'Selection rule (the same for both models): '
            f'{summary["selection"][config["models"][0]]["rule"]}.'
        )
        lines.append('')
    return '\n'.join(lines)


def _net_from_run(config: Dict, run: Dict) -> ToyNet:
    net = build_model(run['model'], config['dim'], config['num_classes'])
    net.load_state_dict(run['state_dict'])
    return net.eval()


def _plot_run(config: Dict, runs: List[Dict], summary: Dict, model: str):
    """The selected lr's run of the first seed (a rule fixed in advance)."""
    lr = summary['selection'][model]['lr']
    seed = config['seeds'][0]
    for run in runs:
        if (run['model'], run['lr'], run['seed']) == (model, lr, seed):
            return run
    raise ValueError(f'no run of {model} at lr {lr}, seed {seed}')


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def plot_cube(summary: Dict, runs: List[Dict], path: str, n: int = 21):
    """Depth trajectories of ``n`` evenly spaced inputs and the final maps.

    Plots the selected learning rate's run of the first seed of each model.

    Args:
        summary (dict): From :func:`run_experiment`.
        runs (list[dict]): The full runs of :func:`run_experiment`.
        path (str): Output PNG.
        n (int): Inputs drawn. Defaults to 21.
    """
    plt = _pyplot()
    config = summary['config']
    models = config['models']
    fig, axes = plt.subplots(
        1, len(models) + 1, figsize=(4.2 * (len(models) + 1), 3.6)
    )
    x0, _ = cube_grid(n)
    colors = plt.get_cmap('coolwarm')(torch.linspace(0, 1, n).numpy())
    grid_x, grid_y = cube_grid(201)
    final_ax = axes[-1]
    final_ax.plot(grid_x, grid_y, 'k--', lw=1.5, label='target $-x^3$')
    for ax, model, color in zip(axes, models, ('C0', 'C1')):
        run = _plot_run(config, runs, summary, model)
        if run['diverged']:
            ax.set_title(f'{model}: diverged')
            continue
        net = _net_from_run(config, run)
        states = net.trajectory(x0)[:, :, 0].numpy()
        for i in range(n):
            ax.plot(range(len(states)), states[:, i], color=colors[i], lw=1)
        ax.set_title(
            f'{model} (lr {run["lr"]:g}, seed {run["seed"]}): '
            f'MSE {run["test"]["mse"]:.3f}',
            fontsize=9,
        )
        ax.set_xlabel('depth t')
        ax.set_ylabel('$x_t$')
        final = net.trajectory(grid_x)[-1, :, 0].numpy()
        final_ax.plot(grid_x[:, 0], final, color=color, lw=1.5, label=model)
    final_ax.set_xlabel('input $x_0$')
    final_ax.set_ylabel('output $x_T$')
    final_ax.set_title('final maps', fontsize=9)
    final_ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rings(
    summary: Dict,
    runs: List[Dict],
    path: str,
    depths: Sequence[int] = (0, 3, 6, 9, 12, 15),
    per_ring: int = 150,
):
    """Snapshots of test points along depth; the last with the boundary.

    Plots the selected learning rate's run of the first seed of each model.

    Args:
        summary (dict): From :func:`run_experiment`.
        runs (list[dict]): The full runs of :func:`run_experiment`.
        path (str): Output PNG.
        depths (Sequence[int]): States shown. Defaults to (0, 3, ..., 15).
        per_ring (int): Test points drawn per ring. Defaults to 150.
    """
    plt = _pyplot()
    config = summary['config']
    models = config['models']
    x, y = nested_rings(per_ring, _generator(_TEST_SEED))
    fig, axes = plt.subplots(
        len(models),
        len(depths),
        figsize=(2.1 * len(depths), 2.3 * len(models)),
        squeeze=False,
    )
    colors = ['C0' if label == 0 else 'C3' for label in y.tolist()]
    for row, model in zip(axes, models):
        run = _plot_run(config, runs, summary, model)
        row[0].set_ylabel(
            f'{model}\nlr {run["lr"]:g}, seed {run["seed"]}', fontsize=8
        )
        if run['diverged']:
            row[0].set_title('diverged')
            continue
        net = _net_from_run(config, run)
        states = net.trajectory(x)
        for ax, depth in zip(row, depths):
            z = states[depth].numpy()
            ax.scatter(z[:, 0], z[:, 1], c=colors, s=2, linewidths=0)
            ax.set_title(f't = {depth}', fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        last = row[-1]
        if depths[-1] == len(states) - 1:
            # The head is linear, so its decision boundary in the final
            # state's plane is the line where the two logits tie.
            weight = net.head.weight.detach()
            bias = net.head.bias.detach()
            w = weight[1] - weight[0]
            b = float(bias[1] - bias[0])
            x_lim, y_lim = last.get_xlim(), last.get_ylim()
            if abs(float(w[1])) > abs(float(w[0])):
                xs = torch.linspace(*x_lim, 2)
                ys = -(w[0] * xs + b) / w[1]
            else:
                ys = torch.linspace(*y_lim, 2)
                xs = -(w[1] * ys + b) / w[0]
            last.plot(xs.numpy(), ys.numpy(), 'k-', lw=1)
            last.set_xlim(x_lim)
            last.set_ylim(y_lim)
            last.set_title(
                f't = {depths[-1]}, acc {100 * run["test"]["accuracy"]:.1f}%',
                fontsize=8,
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def default_workers() -> int:
    """Worker processes for the CLI: up to 2, at most the CPU count."""
    return max(1, min(2, os.cpu_count() or 1))
