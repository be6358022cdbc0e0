from .encoder_decoder import MRevNetEncoderDecoder, enable_memory_saving_heads

__all__ = ['MRevNetEncoderDecoder', 'enable_memory_saving_heads']
