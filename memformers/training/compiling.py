"""`model.compile`: torch.compile applied layer by layer, and the time it takes.

Each encoder and decoder layer is compiled on its own, as torchtitan compiles transformer blocks: the layers of a
kind run the same code on the same shapes, so they share one compiled graph (per mode: training, evaluation) and
the compile time does not grow with depth. The glue between layers (embeddings, the memory's reset, norm and gate,
the LM head and the loss) stays eager. Shapes are dynamic from the first compile: a segment batch is as wide as
its longest segment, and noising shortens the source by a varying amount, so static shapes would recompile.

Every layer kind runs through one function (transformers' checkpointing wrapper of `forward`), so all the
variants count against one recompile limit: encoder and decoder, training and evaluation, and the decoder with
and without a cross-attention mask (transformers drops the mask of a batch without padding) make up to 6 of
torch's default 8; the limit is raised to 16 so that a further variant does not silently fall back to eager.
"""

from __future__ import annotations

import time

import torch


def compile_layers(model: torch.nn.Module) -> int:
    """Compile, in place, every module of the model's repeated layer classes (a Hugging Face model's
    `_no_split_modules`: MemBART's encoder layer and BART's decoder layer). Returns how many."""
    kinds = set(model._no_split_modules)
    layers = [module for module in model.modules() if type(module).__name__ in kinds]
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)


class CompileClock:
    """Wall time spent compiling since it was made: TorchDynamo's traces and Inductor's code generation, the
    backward graphs compiled lazily at the first backward included (torch's compile callbacks). Disabled (not
    `enabled`): measures and reports nothing."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.reported = enabled, False
        self.seconds, self.compiles, self._started = 0.0, 0, None
        if enabled:
            from torch._dynamo.callback import callback_handler

            callback_handler.register_start_callback(self._start)
            callback_handler.register_end_callback(self._end)

    def close(self) -> None:
        """Stop measuring (a process that builds several models, as bench/gpu_check.py does)."""
        if self.enabled:
            from torch._dynamo.callback import callback_handler

            callback_handler.remove_start_callback(self._start)
            callback_handler.remove_end_callback(self._end)
            self.enabled = False

    def _start(self, _args) -> None:
        self._started = time.perf_counter()

    def _end(self, _args) -> None:
        if self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.compiles += 1
            self._started = None

    def report_once(self, logger, step_seconds: float) -> None:
        """Log the compile time so far, the first time it is called (after a run's first step, which compiled)."""
        if self.enabled and not self.reported:
            logger.write(
                f"model.compile: {self.compiles} compiles took {self.seconds:.1f} s "
                f"(the first step took {step_seconds:.1f} s)"
            )
            self.reported = True
