from .encoder_decoder import (
    MRevNetEncoderDecoder,
    enable_memory_saving_heads,
    segmentor_heads,
)

__all__ = [
    'MRevNetEncoderDecoder',
    'enable_memory_saving_heads',
    'segmentor_heads',
]
