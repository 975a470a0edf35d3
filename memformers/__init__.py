"""memformers: MemBART, a BART encoder-decoder with recurrent memory, and a DeepSpeed system to pretrain it.

Subpackages: `memformers.models` (the model; imports nothing of training or data), `memformers.data` (shards and
the segment-stream loader), `memformers.noising` (BART's denoising objective), `memformers.training` (the engine).
"""

__version__ = "0.1.0"
