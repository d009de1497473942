"""`PruningCallback`: drives a pruning method and schedule from the stock transformers `Trainer`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

from .base import PruningMethod
STATE_FILE = "pruning_state.safetensors"


def _broadcast_masks(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rank 0's masks on every rank, so replicas can never diverge."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return masks
    out = {}
    for name in sorted(masks):
        tensor = masks[name].to(torch.uint8)
        if dist.get_backend() == "nccl":
            tensor = tensor.cuda()
        dist.broadcast(tensor, src=0)
        out[name] = tensor.to(masks[name].device).bool()
    return out


class PruningCallback(TrainerCallback):
    """Updates masks on the schedule's steps, keeps pruned weights (and their optimizer state) at zero.

    Args:
        method: a `PruningMethod` (magnitude, block, N:M, movement, structured).
        schedule: a `CubicSchedule`, `OneShotSchedule` or `ConstantSchedule`.
        model: the `SparseBert*` model being trained (the Trainer's model, unwrapped).

    Method state (movement scores) is saved next to each Trainer checkpoint and read back on resume.
    """

    def __init__(self, method: PruningMethod, schedule, model):
        self.method = method
        self.schedule = schedule
        self.model = model
        self.history: list[dict] = []
        self.before_update: list = []  # callables(model) run just before masks change (e.g. CAP snapshots)

    # ---- helpers ---------------------------------------------------------------------------
    def _update(self, step: int, optimizer=None) -> None:
        sparsity = self.schedule.sparsity_at(step)
        if sparsity is None:
            return
        # nothing to prune at 0: keep the masks (movement methods have no scores before the first step)
        masks = self.model.get_masks() if sparsity == 0 else _broadcast_masks(self.method.masks(self.model, sparsity))
        for listener in self.before_update:
            listener(self.model)
        self.model.set_masks(masks)
        if optimizer is not None:
            self._mask_optimizer_state(optimizer)
        self.history.append({"step": step, "target": round(sparsity, 6), "sparsity": round(self.model.sparsity(), 6)})

    @torch.no_grad()
    def _mask_optimizer_state(self, optimizer) -> None:
        """Zeroes momentum of pruned weights, so an optimizer step cannot move them off zero."""
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the optimizer
        for module in self.model.masked_linears().values():
            state = inner.state.get(module.weight, {})
            for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                if isinstance(state.get(key), torch.Tensor) and state[key].shape == module.weight_mask.shape:
                    state[key].mul_(module.weight_mask)

    # ---- Trainer events --------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step > 0:  # resuming: masks came back with the weights; restore method state
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            history = checkpoint.with_name("pruning_history.json")
            if history.is_file():
                self.history = json.loads(history.read_text())
            if self.method.stateful:
                if not checkpoint.is_file():
                    raise FileNotFoundError(
                        f"{checkpoint}: the {self.method.name} scores of the resumed checkpoint are missing "
                        "(resume from a checkpoint inside output_dir)"
                    )
                from safetensors.torch import load_file

                self.method.load_state_dict(load_file(str(checkpoint)))
        elif self.schedule.is_update_step(0):
            self._update(0, kwargs.get("optimizer"))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.method.observe(self.model)

    def on_step_end(self, args, state, control, **kwargs):
        if self.schedule.is_update_step(state.global_step):
            self._update(state.global_step, kwargs.get("optimizer"))
        else:
            self.model.apply_masks_()

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(args.output_dir) / "pruning_history.json").write_text(json.dumps(self.history, indent=1))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["sparsity"] = round(self.model.sparsity(), 6)
            # the Trainer stored its copy of `logs` before the callbacks ran: keep the curve in trainer_state.json too
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["sparsity"] = logs["sparsity"]

    def on_save(self, args, state, control, **kwargs):
        method_state = self.method.state_dict()
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            if method_state:
                from safetensors.torch import save_file

                tmp = folder / (STATE_FILE + ".tmp")
                save_file({k: v.contiguous() for k, v in method_state.items()}, str(tmp))
                os.replace(tmp, folder / STATE_FILE)
            (folder / "pruning_history.json").write_text(json.dumps(self.history, indent=1))
