"""Sparsity schedules: which target sparsity holds at each optimizer step."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CubicSchedule:
    """Gradual pruning of Zhu & Gupta (2017):

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0))^3   for t_0 <= t <= t_1,

    evaluated at t_0 and every `frequency` steps after it, s_i before t_0 and s_f from t_1 on.
    """

    initial_sparsity: float
    final_sparsity: float
    start_step: int
    end_step: int
    frequency: int = 1

    def __post_init__(self):
        if not 0 <= self.initial_sparsity <= self.final_sparsity < 1:
            raise ValueError(f"need 0 <= initial ({self.initial_sparsity}) <= final ({self.final_sparsity}) < 1")
        if not 0 <= self.start_step < self.end_step or self.frequency < 1:
            raise ValueError(f"need 0 <= start_step < end_step and frequency >= 1, got {self}")

    def sparsity_at(self, step: int) -> float:
        if step < self.start_step:
            return self.initial_sparsity
        if step >= self.end_step:
            return self.final_sparsity
        step = self.start_step + (step - self.start_step) // self.frequency * self.frequency
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        return step == self.end_step or (
            self.start_step <= step < self.end_step and (step - self.start_step) % self.frequency == 0
        )


@dataclass(frozen=True)
class OneShotSchedule:
    """All pruning at one step (step 0: before training starts)."""

    final_sparsity: float
    step: int = 0

    def sparsity_at(self, step: int) -> float:
        return self.final_sparsity if step >= self.step else 0.0

    def is_update_step(self, step: int) -> bool:
        return step == self.step


@dataclass(frozen=True)
class ConstantSchedule:
    """Masks fixed as they are (sparse transfer): no update ever, masks re-applied after each step."""

    def sparsity_at(self, step: int) -> None:
        return None

    def is_update_step(self, step: int) -> bool:
        return False
