"""Train the two digits recipes over seeds; write results.json and .md.

Example:
    python tools/analysis_tools/digits_results.py --out-dir docs/digits
"""

import argparse
import json
import os
import os.path as osp
import sys

# benchmarks/ is not installed with mmrevnet: import it from the checkout.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import mmrevnet  # noqa: E402,F401
from benchmarks.digits import markdown_table, run_digits  # noqa: E402


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument('--out-dir', default='work_dirs/digits_results')
    parser.add_argument('--data-root', default='data/digits')
    parser.add_argument('--work-dir', default='work_dirs/digits_runs')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    args = parser.parse_args()
    results = run_digits(_REPO, args.data_root, args.work_dir, args.seeds)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(osp.join(args.out_dir, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
        f.write('\n')
    table = markdown_table(results)
    with open(osp.join(args.out_dir, 'results.md'), 'w') as f:
        f.write(
            '# Digits: ResNetV1c-18 and m-RevNet-V1c-18\n\n'
            'Written by `python tools/analysis_tools/digits_results.py '
            f'--out-dir {args.out_dir}` (recipes in configs/digits/; see '
            'docs/classification.md).\n\n' + table + '\n'
        )
    print(table)


if __name__ == '__main__':
    main()
