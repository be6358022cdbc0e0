"""Every documented invalid input raises the documented error."""

import re
import warnings

import pytest

from benchmarks.bad_inputs import CASES, run_case


@pytest.mark.parametrize('case', CASES, ids=[c.what for c in CASES])
def test_bad_input_raises(case):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        error, message = run_case(case)
    assert error is not None, f'{case.what} raised nothing'
    assert issubclass(error, case.error), (error, message)
    assert re.search(case.match, message), message


def test_catalogue_has_at_least_12_cases():
    assert len(CASES) >= 12
