"""The message hub saved in plain types and restored element for element."""

import io

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub

from mmrevnet.engine.plain_state import (
    PLAIN_MARK,
    MRevNetPlainCheckpointHook,
    plain_message_hub,
    restore_message_hub,
)


def _hub():
    hub = MessageHub(f'plain_state_{id(object())}')
    for value in (0.25, 1.0 / 3.0, 7.5):
        hub.update_scalar('train/loss', value)
    for value in (1, 2, 3):
        hub.update_scalar('train/lr', value, count=2)
    hub.update_info('iter', 3)
    hub.update_info('epoch', np.int64(1))
    hub.update_info('dataset_meta', dict(classes=('a', 'b'), palette=[[1]]))
    return hub


def _weights_only_round_trip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_round_trip_is_exact_and_weights_only_loadable():
    allowed = set(map(str, torch.serialization.get_safe_globals()))
    assert not [
        name for name in allowed if 'mmengine' in name or 'numpy' in name
    ]
    hub = _hub()
    state = hub.state_dict()
    with pytest.raises(Exception, match='HistoryBuffer'):
        _weights_only_round_trip(state)
    plain = plain_message_hub(state)
    assert plain[PLAIN_MARK] is True
    loaded = _weights_only_round_trip(plain)
    restored = restore_message_hub(loaded)
    assert PLAIN_MARK not in restored
    fresh = MessageHub(f'plain_state_fresh_{id(object())}')
    fresh.load_state_dict(restored)
    for key, buffer in hub.log_scalars.items():
        new = fresh.log_scalars[key]
        assert isinstance(new, HistoryBuffer)
        for old_array, new_array in zip(buffer.data, new.data):
            assert old_array.dtype == new_array.dtype, key
            assert np.array_equal(old_array, new_array), key
        assert new.max_length == buffer.max_length
        assert new.mean() == buffer.mean()
    assert fresh.get_info('iter') == 3
    assert fresh.get_info('epoch') == 1
    assert fresh.get_info('dataset_meta') == dict(
        classes=('a', 'b'), palette=[[1]]
    )
    assert set(map(str, torch.serialization.get_safe_globals())) == allowed


def test_other_states_pass_through():
    state = _hub().state_dict()
    assert restore_message_hub(state) is state
    assert plain_message_hub(plain_message_hub(state))[PLAIN_MARK]


def test_hook_converts_on_save_and_load():
    hook = MRevNetPlainCheckpointHook()
    checkpoint = dict(message_hub=_hub().state_dict())
    hook.before_save_checkpoint(None, checkpoint)
    assert checkpoint['message_hub'][PLAIN_MARK]
    hook.after_load_checkpoint(None, checkpoint)
    scalars = checkpoint['message_hub']['log_scalars']
    assert all(isinstance(b, HistoryBuffer) for b in scalars.values())


def test_unplain_runtime_info_is_named():
    hub = _hub()
    hub.update_info('opened', object())
    with pytest.raises(TypeError, match="runtime_info.opened|'opened'"):
        plain_message_hub(hub.state_dict())


def test_malformed_saved_buffer_is_refused():
    plain = plain_message_hub(_hub().state_dict())
    plain['log_scalars']['train/loss'] = dict(log_history=[1.0])
    with pytest.raises(ValueError, match="log_scalars\\['train/loss'\\]"):
        restore_message_hub(plain)
