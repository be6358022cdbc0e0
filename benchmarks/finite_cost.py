"""Step time of memory-saving training with and without non-finite checks.

Two MRevNetV1c models with the same weights, one with every stage's
``check_finite`` on (the default) and one with it off, timed round-robin in
one process (so machine load hits both alike), each step a forward and a
backward plus :func:`mmrevnet.reversible.check_finite` for the checked one
(what the runner's hook does after every iteration).

Example:
    python -m benchmarks.finite_cost --depth 50 --size 64 128 --rounds 10
"""

import argparse
import json
import statistics
import time

import torch


def _model(depth, base_channels, check):
    from mmrevnet.models import MRevNetV1c

    torch.manual_seed(0)
    model = MRevNetV1c(
        depth=depth, base_channels=base_channels, stem_channels=base_channels
    )
    for stage in model.stages.values():
        stage.configure(check_finite=check)
    return model.train()


def step_times(
    depth=50,
    base_channels=64,
    batch_size=2,
    size=(64, 128),
    rounds=10,
    device='cpu',
):
    """Median step time of each variant and their ratio.

    Returns:
        dict: ``checked_s``, ``unchecked_s`` (medians over ``rounds``) and
        ``ratio`` (checked over unchecked, median of per-round ratios).
    """
    from mmrevnet.reversible import check_finite

    checked = _model(depth, base_channels, True).to(device)
    unchecked = _model(depth, base_channels, False).to(device)
    unchecked.load_state_dict(checked.state_dict())
    x = torch.randn(batch_size, 3, *size, device=device)

    def step(model, check):
        model.zero_grad(set_to_none=True)
        outs = model(x)
        sum(o.square().mean() for o in outs).backward()
        if check:
            check_finite(model)
        if device != 'cpu':
            torch.cuda.synchronize()

    times = {True: [], False: []}
    for model, check in ((checked, True), (unchecked, False)):
        step(model, check)  # warm-up
    for r in range(rounds):
        # Alternate which goes first, so drift in load cancels.
        order = (True, False) if r % 2 == 0 else (False, True)
        for check in order:
            model = checked if check else unchecked
            start = time.perf_counter()
            step(model, check)
            times[check].append(time.perf_counter() - start)
    ratios = [a / b for a, b in zip(times[True], times[False])]
    return dict(
        depth=depth,
        base_channels=base_channels,
        batch_size=batch_size,
        size=list(size),
        rounds=rounds,
        device=device,
        threads=torch.get_num_threads(),
        checked_s=statistics.median(times[True]),
        unchecked_s=statistics.median(times[False]),
        ratio=statistics.median(ratios),
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=50)
    parser.add_argument('--base-channels', type=int, default=64)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--size', type=int, nargs=2, default=[64, 128])
    parser.add_argument('--rounds', type=int, default=10)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import mmrevnet  # noqa: F401  (registration and shims)

    result = step_times(
        depth=args.depth,
        base_channels=args.base_channels,
        batch_size=args.batch_size,
        size=args.size,
        rounds=args.rounds,
        device=args.device,
    )
    print(json.dumps(result))


if __name__ == '__main__':
    main()
