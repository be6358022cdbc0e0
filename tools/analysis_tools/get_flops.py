"""FLOPs and parameters of a segmentor or classifier config, on the eval path.

mmseg 1.2.2's ``tools/analysis_tools/get_flops.py`` passes both
``input_shape`` and ``inputs`` to mmengine's ``get_model_complexity_info``,
which mmengine 0.10 refuses (``ValueError: "input_shape" and "inputs"
cannot be both set``); this tool counts the same thing for mmseg and
mmpretrain configs: the model built from the config (``default_scope``
picks the registry), in eval mode (so every m-RevNet module runs plainly),
on one zero image of ``--shape``, with mmengine's counter.

Example:
    python tools/analysis_tools/get_flops.py CONFIG --shape 512 1024
"""

import argparse

import torch
from torch import nn

import mmrevnet  # noqa: F401  (shims and registration before mmseg)


class _TensorForward(nn.Module):
    """``model(inputs, mode='tensor')`` as a module for the counter."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model(inputs, mode='tensor')


def build_model(config: str, cfg_options=None) -> nn.Module:
    """The config's model, in eval mode, with no pretrained weights loaded."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmseg')
    if scope == 'mmpretrain':
        from mmpretrain.registry import MODELS
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        raise ValueError(
            f'default_scope must be mmseg or mmpretrain, got {scope!r}'
        )
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    return model.eval()


def complexity(model: nn.Module, shape) -> dict:
    """FLOPs and parameters of ``model`` on one ``(3, H, W)`` zero image."""
    from mmengine.analysis import get_model_complexity_info

    height, width = shape
    inputs = torch.zeros(1, 3, height, width)
    with torch.no_grad():
        result = get_model_complexity_info(
            _TensorForward(model),
            inputs=(inputs,),
            show_table=False,
            show_arch=False,
        )
    return dict(
        flops=result['flops'],
        params=result['params'],
        flops_str=result['flops_str'],
        params_str=result['params_str'],
    )


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='FLOPs and parameters of a model config (eval path)'
    )
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[512, 512],
        help='input size: H W, or one number for a square',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config (key=value)',
    )
    args = parser.parse_args(argv)
    if len(args.shape) == 1:
        args.shape = [args.shape[0]] * 2
    if len(args.shape) != 2 or min(args.shape) <= 0:
        parser.error(f'--shape takes H W or one size, got {args.shape}')
    return args


def main(argv=None):
    args = parse_args(argv)
    model = build_model(args.config, args.cfg_options)
    result = complexity(model, args.shape)
    print(
        f'Input shape: (3, {args.shape[0]}, {args.shape[1]})\n'
        f'Flops: {result["flops_str"]}\nParams: {result["params_str"]}'
    )
    return result


if __name__ == '__main__':
    main()
