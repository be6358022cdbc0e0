"""Every committed result was made from the current code, or says it."""

import json
import shutil

import pytest

from benchmarks import provenance


def test_every_result_is_current():
    problems = provenance.stale_results()
    assert not problems, '\n'.join(f'{n}: {r}' for n, r in problems)


def test_records_name_command_commit_and_fingerprint():
    manifest = provenance.read_manifest()
    for name, result in provenance.RESULTS.items():
        record = manifest[name]
        assert record['command'] == result.command, name
        assert record['commit'], name
        if not result.historical:
            assert len(record['fingerprint']) == 64, name


@pytest.fixture
def scratch_repo(tmp_path, monkeypatch):
    """A copy of one result's files with a fresh record of them."""
    name = 'bad_input'
    result = provenance.RESULTS[name]
    sources = provenance.source_files(result)
    for path in sources + list(result.outputs):
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(provenance.REPO + '/' + path, target)
    monkeypatch.setattr(provenance, 'REPO', str(tmp_path))
    monkeypatch.setattr(provenance, 'RESULTS', {name: result})
    record = dict(
        command=result.command,
        commit='scratch',
        sources=sources,
        fingerprint=provenance.fingerprint(sources),
        outputs=list(result.outputs),
    )
    manifest = tmp_path / provenance.MANIFEST
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({name: record}))
    return tmp_path, name, result


def test_touching_a_source_makes_the_result_stale(scratch_repo):
    root, name, result = scratch_repo
    assert provenance.stale_results() == []
    source = root / provenance.source_files(result)[0]
    source.write_text(source.read_text() + '\n# changed\n')
    ((stale, reason),) = provenance.stale_results()
    assert stale == name
    assert result.command in reason
    assert f'provenance.py stamp {name}' in reason


def test_deleting_a_result_file_is_reported(scratch_repo):
    root, name, result = scratch_repo
    (root / result.outputs[0]).unlink()
    ((stale, reason),) = provenance.stale_results()
    assert stale == name and 'missing' in reason
    assert result.command in reason


def test_missing_record_is_reported(scratch_repo):
    root, name, _ = scratch_repo
    (root / provenance.MANIFEST).write_text(json.dumps({}))
    ((stale, reason),) = provenance.stale_results()
    assert stale == name and 'no record' in reason


def test_bad_input_table_is_what_the_command_writes():
    """A deterministic result, checked directly (the table is cheap)."""
    import warnings

    from benchmarks.bad_inputs import markdown_table
    from tools.analysis_tools.bad_input_table import HEADER

    with open(provenance.REPO + '/docs/bad_input.md') as f:
        committed = f.read()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        assert committed == HEADER + markdown_table()
