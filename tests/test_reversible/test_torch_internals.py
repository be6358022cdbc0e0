"""The torch internals the fast reversed backward reads, held to what it
assumes: each test fails when torch changes one of them.

``function._graph_kept`` asks autograd whether the running backward keeps
its graph (``torch._C._autograd._get_current_graph_task_keep_graph``);
``function._output_reusable`` reads a node's ``_saved_result`` (the output
it keeps), a custom Function node's ``_forward_cls`` and a tensor's
``_base``; ``function._only_autograd_holds`` counts the users of a
tensor's memory and object (``torch._C._storage_Use_Count``,
``Tensor._use_count``, ``sys.getrefcount``) against a probe Function. A
changed name would not make the backward wrong (unknown means
"kept" / "not reusable"), only use more memory; these tests make that
visible.
"""

import torch
from torch import nn

from mmrevnet.reversible import function


class _AskKept(torch.autograd.Function):
    answers = []

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        _AskKept.answers.append(function._graph_kept())
        return grad * 2


def test_graph_kept_query_exists_and_answers():
    assert callable(torch._C._autograd._get_current_graph_task_keep_graph)
    _AskKept.answers.clear()
    x = torch.randn(3, requires_grad=True)
    out = _AskKept.apply(x).sum()
    out.backward(retain_graph=True)
    out.backward()
    assert _AskKept.answers == [True, False]


def test_output_reusable_reads_the_nodes_it_expects():
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    y = conv(x)
    assert y._base is None and not hasattr(y.grad_fn, '_saved_result')
    assert function._output_reusable(y, y.detach())
    # ReLU's backward reads its output: not reusable.
    r = torch.relu(y)
    assert hasattr(r.grad_fn, '_saved_result')
    assert not function._output_reusable(r, r.detach())
    # A view shares its base's memory: not reusable.
    view = y[:, :2]
    assert view._base is y
    assert not function._output_reusable(view, view.detach())
    # A custom Function's node names its class.
    c = _AskKept.apply(y)
    assert isinstance(c.grad_fn, torch.autograd.function.BackwardCFunction)
    assert c.grad_fn._forward_cls is _AskKept
    assert not function._output_reusable(c, c.detach())


def test_holder_counts_are_measured_and_tell_a_held_output():
    assert callable(torch._C._storage_Use_Count)
    counts = function._autograd_holder_counts()
    assert counts is not None and set(counts) == {'saved', 'grad'}
    x = torch.randn(3)
    alias = x.detach()
    assert function._users(x)[0] == function._users(alias)[0]
    del alias
    assert function._users(x)[0] == 2  # x and the asking storage object
