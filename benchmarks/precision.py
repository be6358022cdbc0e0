"""Memory-saving against plain gradients of a real backbone, per precision.

The equality tests run on the CPU with small tensors. This module repeats
the comparison on whatever device it is given (a GPU in
``tools/analysis_tools/check_precision.py``), at a realistic input size,
for fp32 and for 16-bit autocast. For each setting it builds two
``MRevNetV1c`` models with the same weights, one with
``memory_saving=False``, runs one training forward and backward on the
same batch in each, and reports:

* the largest absolute difference of the stage outputs,
* per-parameter relative gradient errors ``|g - g_ref| / |g_ref|``
  (median and max over all parameters),
* the largest absolute difference of the BN running statistics,

and, for scale, the same gradient errors between two plain runs (which
is not zero when the device's kernels are not deterministic) and, under
autocast, between the plain autocast run and plain fp32.
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence

import torch

_DTYPES = {
    'fp32': None,
    'fp16': torch.float16,
    'bf16': torch.bfloat16,
}


def _build_pair(depth: int, base_channels: int, device: str, seed: int):
    from mmrevnet.models import MRevNetV1c

    torch.manual_seed(seed)
    kwargs = dict(
        depth=depth,
        base_channels=base_channels,
        stem_channels=base_channels,
        # Zero-initialised last BN would hide the residual branches'
        # gradients from the comparison.
        zero_init_residual=False,
    )
    # PyTorch's default initialisation: the comparison needs equal
    # weights, not mmengine's init (which only adds log noise here).
    plain = MRevNetV1c(memory_saving=False, **kwargs)
    saving = MRevNetV1c(memory_saving=True, **kwargs)
    saving.load_state_dict(plain.state_dict())
    return plain.to(device), saving.to(device)


def _run(model, x, autocast_dtype: Optional[torch.dtype]):
    model.train()
    with torch.autocast(
        x.device.type,
        dtype=autocast_dtype or torch.float32,
        enabled=autocast_dtype is not None,
    ):
        outs = model(x)
    loss = sum(o.float().square().mean() for o in outs)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return [o.detach() for o in outs], grads


def _grad_errors(grads, reference) -> List[float]:
    return sorted(
        (
            (g.float() - r.float()).norm() / r.float().norm().clamp_min(1e-30)
        ).item()
        for g, r in zip(grads, reference)
    )


def _summary(errors: List[float]) -> Dict[str, float]:
    return dict(median=statistics.median(errors), max=max(errors))


def compare_gradients(
    precision: str = 'fp32',
    depth: int = 50,
    base_channels: int = 64,
    batch_size: int = 2,
    size: Sequence[int] = (256, 512),
    device: str = 'cuda',
    seed: int = 0,
    float64_reference: bool = False,
) -> Dict:
    """One row: memory-saving against plain MRevNetV1c at one precision.

    Args:
        precision (str): 'fp32', or 'fp16' / 'bf16' autocast.
            Defaults to 'fp32'.
        depth (int): Backbone depth. Defaults to 50.
        base_channels (int): Width of the first stage. Defaults to 64.
        batch_size (int): Batch size. Defaults to 2.
        size (Sequence[int]): Input ``(H, W)``. Defaults to (256, 512).
        device (str): Device. Defaults to 'cuda'.
        seed (int): Seed of the weights and the input. Defaults to 0.
        float64_reference (bool): For fp32, also compare both paths with
            the plain path in float64, to show fp32's own error beside the
            reconstruction's. Defaults to False.

    Returns:
        dict: ``output_max_abs``, ``grad_rel`` (median, max),
        ``buffer_max_abs``, ``plain_repeat_grad_rel`` (two plain runs),
        under autocast ``autocast_vs_fp32_grad_rel``, and with
        ``float64_reference`` ``plain_vs_fp64_grad_rel`` and
        ``saving_vs_fp64_grad_rel``.
    """
    if precision not in _DTYPES:
        raise ValueError(
            f'precision must be one of {sorted(_DTYPES)}, got {precision!r}'
        )
    dtype = _DTYPES[precision]
    plain, saving = _build_pair(depth, base_channels, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, 3, *size, generator=generator).to(device)

    # The plain model runs twice; keep its buffers from the first run for
    # the BN comparison.
    outs_ref, grads_ref = _run(plain, x, dtype)
    buffers_after_one = {
        k: v.clone() for k, v in plain.state_dict().items() if 'running' in k
    }
    outs, grads = _run(saving, x, dtype)
    _, grads_repeat = _run(plain, x, dtype)

    buffer_diff = max(
        (saving.state_dict()[k].float() - v.float()).abs().max().item()
        for k, v in buffers_after_one.items()
    )
    row = dict(
        precision=precision,
        depth=depth,
        base_channels=base_channels,
        batch_size=batch_size,
        size=list(size),
        device=str(device),
        output_max_abs=max(
            (o - r).abs().max().item() for o, r in zip(outs, outs_ref)
        ),
        grad_rel=_summary(_grad_errors(grads, grads_ref)),
        buffer_max_abs=buffer_diff,
        plain_repeat_grad_rel=_summary(_grad_errors(grads_repeat, grads_ref)),
    )
    if dtype is not None:
        _, grads_fp32 = _run(plain, x, None)
        row['autocast_vs_fp32_grad_rel'] = _summary(
            _grad_errors(grads_ref, grads_fp32)
        )
    elif float64_reference:
        # Last, because it converts the plain model in place. Weights are
        # unchanged by the runs above (no optimizer step) and train-mode BN
        # does not read its running statistics.
        _, grads_fp64 = _run(plain.double(), x.double(), None)
        row['plain_vs_fp64_grad_rel'] = _summary(
            _grad_errors(grads_ref, grads_fp64)
        )
        row['saving_vs_fp64_grad_rel'] = _summary(
            _grad_errors(grads, grads_fp64)
        )
    return row


def loss_scale_overflow(
    depth: int = 50,
    base_channels: int = 64,
    size: Sequence[int] = (256, 512),
    device: str = 'cuda',
    scale: float = 2.0**100,
) -> Dict:
    """Backward of an overflowing fp16 loss scale through the memory-saving
    path: the infinite gradients must reach the parameters (so that a loss
    scaler sees them and skips the step) without an error; only
    non-finite activations are errors.

    Returns:
        dict: ``error`` (None, or the exception's text) and
        ``nonfinite_grads`` (number of parameters with a non-finite grad).
    """
    _, saving = _build_pair(depth, base_channels, device, 0)
    saving.train()
    x = torch.randn(2, 3, *size, device=device)
    error, nonfinite = None, None
    try:
        with torch.autocast(x.device.type, dtype=torch.float16):
            outs = saving(x)
        loss = sum(o.float().square().mean() for o in outs) * scale
        loss.backward()
        nonfinite = sum(
            int(not torch.isfinite(p.grad).all())
            for p in saving.parameters()
            if p.grad is not None
        )
    except Exception as exc:  # reported, not hidden: it is the finding
        error = f'{type(exc).__name__}: {exc}'
    return dict(scale=scale, error=error, nonfinite_grads=nonfinite)


def markdown_table(rows: Sequence[Dict]) -> str:
    """The rows as a markdown table."""
    header = (
        '| precision | cudnn.benchmark | output max abs diff | '
        'grad rel. err. median / max | plain vs plain again | '
        'autocast vs fp32 (plain) | plain / memory-saving vs fp64 | '
        'BN buffers max abs diff |'
    )
    lines = [header, '|' + '---|' * 8]

    def pair(summary):
        if summary is None:
            return '-'
        return f'{summary["median"]:.1e} / {summary["max"]:.1e}'

    def fp64(row):
        if 'plain_vs_fp64_grad_rel' not in row:
            return '-'
        return (
            f'{pair(row["plain_vs_fp64_grad_rel"])}; '
            f'{pair(row["saving_vs_fp64_grad_rel"])}'
        )

    for r in rows:
        lines.append(
            f'| {r["precision"]} | {r.get("cudnn_benchmark", "-")} | '
            f'{r["output_max_abs"]:.1e} | {pair(r["grad_rel"])} | '
            f'{pair(r["plain_repeat_grad_rel"])} | '
            f'{pair(r.get("autocast_vs_fp32_grad_rel"))} | '
            f'{fp64(r)} | {r["buffer_max_abs"]:.1e} |'
        )
    return '\n'.join(lines) + '\n'


# -- the precision table: memory-saving and plain against float64 ----------

#: The table's grid (docs/numerics.md).
TABLE_DEPTHS = (50, 101, 152)
TABLE_GAMMAS = (0.5, 0.9, 0.99, 0.999999)
TABLE_PRECISIONS = ('fp32', 'bf16')


def tensor_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """Norm-wise relative error ``||e - r||_2 / ||r||_2`` of one tensor.

    Both are taken in float64; a reference of norm 0 gives the absolute
    error ``||e||_2``.
    """
    estimate = estimate.detach().double()
    reference = reference.detach().double()
    scale = reference.norm().item()
    error = (estimate - reference).norm().item()
    return error / scale if scale > 0 else error


def error_ratio(saving: float, plain: float) -> float:
    """``saving / plain`` (1 when both are 0, inf when only plain is 0)."""
    if plain > 0:
        return saving / plain
    return 1.0 if saving == 0 else math.inf


def _stored_states(model, low_precision: bool) -> int:
    return sum(
        (s.config.num_reversed - 1) // interval
        for s in model.stages.values()
        for interval in [s.config.anchor_interval_for(low_precision)]
        if interval and s.config.num_reversed
    )


def tensor_errors(
    depth: int,
    gamma: float,
    precisions: Sequence[str] = TABLE_PRECISIONS,
    base_channels: int = 64,
    batch_size: int = 2,
    size: Sequence[int] = (64, 64),
    seed: int = 0,
    device: str = 'cpu',
    max_amplification: Optional[float] = None,
) -> Dict:
    """Every parameter gradient of MRevNetV1c against plain float64.

    Three models with the same weights (PyTorch's default initialisation,
    ``zero_init_residual=False``): the plain path in float64 (the
    reference), the plain path and the memory-saving path with default
    settings (whatever stored states the stages plan for themselves). For
    each precision (``'fp32'``, or ``'bf16'`` / ``'fp16'`` autocast) the
    plain and the memory-saving gradients of one training step are
    compared, tensor by tensor, with :func:`tensor_error`, against the
    reference.

    Args:
        depth (int): Backbone depth.
        gamma (float): Momentum of every stage.
        precisions (Sequence[str]): Defaults to ('fp32', 'bf16').
        base_channels (int): Defaults to 64 (the real width).
        batch_size (int): Defaults to 2.
        size (Sequence[int]): Input ``(H, W)``. Defaults to (64, 64).
        seed (int): Seed of the weights and the input. Defaults to 0.
        device (str): Defaults to 'cpu'.
        max_amplification (float, optional): The memory-saving model's
            bound (None: its default). Defaults to None.

    Returns:
        dict: ``names`` (parameter names), ``stored_states`` per precision
        (states ``(x, v)`` the default plan stores) and ``errors``:
        per precision, ``saving`` and ``plain``, one error per name.
    """
    import copy
    import warnings

    from mmrevnet.models import MRevNetV1c

    for precision in precisions:
        if precision not in _DTYPES:
            raise ValueError(
                f'precision must be one of {sorted(_DTYPES)}, '
                f'got {precision!r}'
            )
    torch.manual_seed(seed)
    kwargs = dict(
        depth=depth,
        base_channels=base_channels,
        stem_channels=base_channels,
        zero_init_residual=False,
        gamma=gamma,
    )
    plain = MRevNetV1c(memory_saving=False, **kwargs)
    with warnings.catch_warnings():
        # Small gamma: the stages say they store states; the table shows it.
        warnings.simplefilter('ignore', UserWarning)
        saving = MRevNetV1c(
            memory_saving=True, max_amplification=max_amplification, **kwargs
        )
    saving.load_state_dict(plain.state_dict())
    reference = copy.deepcopy(plain).double()
    plain, saving, reference = (
        m.to(device) for m in (plain, saving, reference)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch_size, 3, *size, generator=generator).to(device)
    _, grads_64 = _run(reference, x.double(), None)
    errors = {}
    for precision in precisions:
        dtype = _DTYPES[precision]
        _, grads_plain = _run(plain, x, dtype)
        _, grads_saving = _run(saving, x, dtype)
        errors[precision] = dict(
            saving=[
                tensor_error(g, r) for g, r in zip(grads_saving, grads_64)
            ],
            plain=[tensor_error(g, r) for g, r in zip(grads_plain, grads_64)],
        )
    return dict(
        depth=depth,
        gamma=gamma,
        base_channels=base_channels,
        batch_size=batch_size,
        size=list(size),
        seed=seed,
        names=[name for name, _ in plain.named_parameters()],
        stored_states={
            p: _stored_states(saving, _DTYPES[p] is not None)
            for p in precisions
        },
        errors=errors,
    )


def ratio_summary(result: Dict, precision: str) -> Dict:
    """Worst and median ``saving / plain`` error ratio of one result."""
    errors = result['errors'][precision]
    ratios = [
        error_ratio(s, p) for s, p in zip(errors['saving'], errors['plain'])
    ]
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    return dict(
        max_ratio=ratios[worst],
        tensor=result['names'][worst],
        saving_error=errors['saving'][worst],
        plain_error=errors['plain'][worst],
        median_ratio=statistics.median(ratios),
        above_2=sum(r > 2 for r in ratios),
        tensors=len(ratios),
        max_saving_error=max(errors['saving']),
        max_plain_error=max(errors['plain']),
    )


def summary_table(results: Sequence[Dict]) -> str:
    """One row per depth, gamma and precision (markdown)."""
    lines = [
        '| depth | gamma | precision | stored states | tensors | '
        'max ratio | at tensor (memory-saving / plain error) | '
        'tensors with ratio > 2 | median ratio | max error memory-saving | '
        'max error plain |',
        '|' + '---|' * 11,
    ]
    for result in results:
        for precision in result['errors']:
            s = ratio_summary(result, precision)
            lines.append(
                f'| {result["depth"]} | {result["gamma"]:g} | {precision} | '
                f'{result["stored_states"][precision]} | {s["tensors"]} | '
                f'{s["max_ratio"]:.2f} | `{s["tensor"]}` '
                f'({s["saving_error"]:.2e} / {s["plain_error"]:.2e}) | '
                f'{s["above_2"]} | {s["median_ratio"]:.3f} | '
                f'{s["max_saving_error"]:.2e} | {s["max_plain_error"]:.2e} |'
            )
    return '\n'.join(lines) + '\n'


def tensor_table(results: Sequence[Dict]) -> str:
    """Every tensor of one depth: memory-saving / plain error per column."""
    names = results[0]['names']
    columns = [
        (r, p) for r in results for p in r['errors'] if r['names'] == names
    ]
    header = ' | '.join(f'g={r["gamma"]:g} {p}' for r, p in columns)
    lines = [
        f'| tensor | {header} |',
        '|' + '---|' * (len(columns) + 1),
    ]
    for i, name in enumerate(names):
        cells = ' | '.join(
            f'{r["errors"][p]["saving"][i]:.1e} / '
            f'{r["errors"][p]["plain"][i]:.1e}'
            for r, p in columns
        )
        lines.append(f'| `{name}` | {cells} |')
    return '\n'.join(lines) + '\n'
