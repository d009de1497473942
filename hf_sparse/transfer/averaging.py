"""`WeightAveragingCallback`: the model that training ends with is the average of its weights over the last steps.

The uniform average of the weights after every optimizer step from `start` on (the average of stochastic weight
averaging, Izmailov et al. 2018, taken along the Trainer's own learning-rate schedule). A weight pruned at every
averaged step is zero in the average, so with a fixed pattern (a locked upstream pattern, or pruning that ended before
`start`) the average keeps it; the masks are applied to the average anyway.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .callback import unwrap_model

AVERAGE_FILE = "weight_average.safetensors"  # written next to each Trainer checkpoint, read back on resume
_COUNT = "__steps_averaged__"


class WeightAveragingCallback(TrainerCallback):
    """Averages the trainable parameters over the optimizer steps from `start` on; at the end of training the model
    holds the average (what `trainer.evaluate()` and `save_pretrained` then see).

    Args:
        start: where averaging begins, as a fraction of training in [0, 1): the first step averaged is the one after
            `int(start * max_steps)` steps. With pruning during fine-tuning, start at or after the step where pruning
            reaches its target, so every averaged step has the final pattern.

    Checkpoints get the running average as `weight_average.safetensors`, and resuming from
    `<output_dir>/checkpoint-<step>` reads it back, so a resumed run ends with the same average. Not combinable with
    `load_best_model_at_end` (the average would replace the best model).
    """

    def __init__(self, start: float):
        if not 0.0 <= float(start) < 1.0:
            raise ValueError(f"start is a fraction of training in [0, 1), got {start!r}")
        self.start = float(start)
        self.start_step: Optional[int] = None
        self.steps_averaged = 0
        self.average: dict[str, torch.Tensor] = {}

    @staticmethod
    def _parameters(kwargs) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in unwrap_model(kwargs["model"]).named_parameters() if p.requires_grad}

    @staticmethod
    def _checkpoint_file(args, step: int) -> Path:
        return Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}" / AVERAGE_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if args.load_best_model_at_end:
            raise ValueError("WeightAveragingCallback replaces the weights at the end of training: it cannot be combined "
                             "with load_best_model_at_end=True")
        self.start_step = int(self.start * state.max_steps)  # < max_steps: at least the last step is averaged
        self.average, self.steps_averaged = {}, 0
        if state.global_step > self.start_step:  # resumed past the start: the checkpoint holds the average so far
            self._load(self._checkpoint_file(args, state.global_step), kwargs, state.global_step)

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step <= self.start_step:
            return
        self.steps_averaged += 1
        for name, p in self._parameters(kwargs).items():
            average = self.average.get(name)
            if average is None:  # not setdefault: its default would allocate a tensor on every step
                average = self.average[name] = torch.zeros_like(p, dtype=torch.float32)
            average.lerp_(p.detach().float(), 1.0 / self.steps_averaged)  # the running mean; the first step copies

    def on_save(self, args, state, control, **kwargs):
        if not self.average or not state.is_world_process_zero:
            return
        path = self._checkpoint_file(args, state.global_step)
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.average.items()}
        tensors[_COUNT] = torch.tensor(self.steps_averaged)
        partial = path.with_name(AVERAGE_FILE + ".partial")
        save_file(tensors, str(partial))
        os.replace(partial, path)  # whole or absent

    def _load(self, path: Path, kwargs, step: int) -> None:
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: resuming at step {step}, after weight averaging began (step {self.start_step}), needs the "
                f"average saved with that checkpoint ({AVERAGE_FILE}); it is missing"
            )
        state = load_file(str(path))
        parameters = self._parameters(kwargs)
        if set(state) - {_COUNT} != set(parameters):
            raise ValueError(f"{path}: the saved average has other tensors than the model's trainable parameters")
        self.steps_averaged = int(state.pop(_COUNT))
        self.average = {name: t.to(parameters[name].device) for name, t in state.items()}

    @torch.no_grad()
    def on_train_end(self, args, state, control, **kwargs):
        if not self.average:
            return
        parameters = self._parameters(kwargs)
        for name, value in self.average.items():
            parameters[name].copy_(value.to(parameters[name].dtype))
        model = unwrap_model(kwargs["model"])
        if hasattr(model, "masked_linears"):
            for module in model.masked_linears().values():
                module.weight.mul_(module.weight_mask.to(module.weight.dtype))
