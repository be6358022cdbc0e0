"""Record or check how the committed results under docs/ were made.

Examples:
    # after rerunning a result's command (see benchmarks/provenance.py)
    python tools/analysis_tools/provenance.py stamp toy_dynamics
    # list results whose sources changed since they were made
    python tools/analysis_tools/provenance.py check
"""

import argparse
import os.path as osp
import sys

# benchmarks/ is not installed with mmrevnet: import it from the checkout.
_REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from benchmarks.provenance import RESULTS, stale_results, stamp  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='action', required=True)
    record = sub.add_parser('stamp', help='record a regenerated result')
    record.add_argument('names', nargs='+', choices=sorted(RESULTS))
    sub.add_parser('check', help='list missing or stale results')
    args = parser.parse_args(argv)
    if args.action == 'stamp':
        for name in args.names:
            entry = stamp(name)
            print(f'{name}: {entry["commit"]} {entry["fingerprint"][:12]}')
        return 0
    problems = stale_results()
    for name, reason in problems:
        print(f'{name}: {reason}')
    if not problems:
        print(f'all {len(RESULTS)} results are current')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
