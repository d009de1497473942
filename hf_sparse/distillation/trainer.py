"""`DistillationTrainer`: the stock `Trainer` with a teacher, through `compute_loss` only."""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass
from typing import Optional

import torch
from transformers import Trainer

from ..models.sparse_bert.modeling_sparse_bert import mean_pool
from ..pruning.callback import PruningCallback

from .losses import (
    attention_loss,
    contrastive_loss,
    ensemble_logits,
    hidden_state_loss,
    kd_loss,
    same_example_positives,
    same_label_positives,
)


@dataclass
class DistillationConfig:
    """Weights of the loss terms (0 disables a term) and their settings.

    `task_weight * task loss + kd_weight * logits KD + hidden_weight * hidden MSE
    + attention_weight * attention KL + prc/snc/fic weights * CAP contrastive losses`.
    """

    task_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 2.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    prc_weight: float = 0.0  # contrast with the pre-trained (dense) model
    snc_weight: float = 0.0  # contrast with the model's own earlier pruning snapshots
    fic_weight: float = 0.0  # contrast with a fine-tuned model, same-label positives
    contrastive_temperature: float = 0.1
    contrastive_pooling: str = "cls"  # sentence vector for PrC/SnC/FiC: "cls" (CAP) or "mean" (sentence encoders)
    max_snapshots: int = 3
    labelled_logits_only: bool = False  # MLM: logits only where labels != -100 (SparseBertForMaskedLM)

    def __post_init__(self):
        check_contrastive_pooling(self.contrastive_pooling)


CONTRASTIVE_POOLINGS = ("cls", "mean")


def check_contrastive_pooling(pooling: str) -> str:
    """Raises ValueError unless `pooling` is one that `sentence_vector` implements."""
    if pooling not in CONTRASTIVE_POOLINGS:
        raise ValueError(f"contrastive_pooling={pooling!r}; expected one of {CONTRASTIVE_POOLINGS}")
    return pooling


def sentence_vector(last_hidden: torch.Tensor, attention_mask: Optional[torch.Tensor], pooling: str) -> torch.Tensor:
    """Sentence vector from the last hidden layer: its [CLS] vector, or the mean over real tokens.

    Mean pooling is how sentence encoders such as all-MiniLM-L6-v2 were trained to represent a text,
    so contrasting on it keeps the geometry downstream tasks inherit.
    """
    return last_hidden[:, 0] if pooling == "cls" else mean_pool(last_hidden, attention_mask)


def _last_hidden(outputs) -> torch.Tensor:
    hidden = getattr(outputs, "hidden_states", None)
    return hidden[-1] if hidden is not None else outputs.last_hidden_state


def _frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    snapshot = copy.deepcopy(model).eval()
    for param in snapshot.parameters():
        param.requires_grad_(False)
    return snapshot


class DistillationTrainer(Trainer):
    """A `Trainer` whose loss adds distillation terms from separate, frozen models.

    Args:
        teacher: the dense teacher for logits / hidden / attention distillation (Prune OFA: the dense
            pre-trained model upstream, a dense fine-tuned model downstream).
        pretrained: the pre-trained model for CAP's PrC (defaults to `teacher`).
        finetuned: the fine-tuned model for CAP's FiC (defaults to `teacher`).
        ensemble: more fine-tuned teachers (e.g. other seeds of the dense model): the logits KD target becomes the mean
            of all teachers' distributions at the KD temperature (`ensemble_logits`; the mean output for regression);
            hidden-state, attention and contrastive terms still use `teacher` alone. Needs `kd_weight`.
        distillation: a `DistillationConfig`.
    Other arguments go to `Trainer`. Attention distillation needs `attn_implementation="eager"` on both models.
    """

    def __init__(
        self, *args, teacher=None, pretrained=None, finetuned=None, ensemble=(), distillation: Optional[DistillationConfig] = None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.distillation = distillation or DistillationConfig()
        cfg = self.distillation
        needs_teacher = cfg.kd_weight or cfg.hidden_weight or cfg.attention_weight
        if needs_teacher and teacher is None:
            raise ValueError("kd/hidden/attention distillation needs a teacher model")
        self.teacher = self._prepare(teacher)
        if ensemble and not (cfg.kd_weight and teacher is not None):
            raise ValueError("an ensemble of teachers averages the logits KD target: it needs a teacher and kd_weight > 0")
        self.ensemble = [self._prepare(member) for member in ensemble]
        self.pretrained = self._prepare(pretrained) if pretrained is not None else self.teacher
        self.finetuned = self._prepare(finetuned) if finetuned is not None else self.teacher
        if (cfg.prc_weight and self.pretrained is None) or (cfg.fic_weight and self.finetuned is None):
            raise ValueError("PrC needs a pre-trained model and FiC a fine-tuned model (or a teacher)")
        # compute_loss ignores num_items_in_batch: let the Trainer average over accumulation steps
        self.model_accepts_loss_kwargs = False
        self.snapshots: deque = deque(maxlen=cfg.max_snapshots)
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}
        if cfg.snc_weight:  # CAP's snapshots: the model as it was just before each pruning step
            pruning = [cb for cb in self.callback_handler.callbacks if isinstance(cb, PruningCallback)]
            if not pruning:
                raise ValueError("SnC needs a PruningCallback among the callbacks: snapshots are taken at its pruning steps")
            pruning[0].before_update.append(self._take_snapshot)
        if cfg.attention_weight:  # attentions are returned after dropout: distil the undropped ones
            for module in self.model.modules():
                if type(module).__name__.endswith("SelfAttention") and isinstance(getattr(module, "dropout", None), torch.nn.Dropout):
                    module.dropout.p = 0.0

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Adds each loss term's mean since the last training log (this process's micro-batches) as `loss_<term>`."""
        if "loss" in logs and self._term_counts:
            logs.update({f"loss_{name}": round(float(self._term_sums[name]) / self._term_counts[name], 4) for name in self._term_counts})
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, *args, **kwargs)

    def record_term(self, name: str, value: torch.Tensor) -> None:
        """Averages a loss term into the next training log as `loss_<name>`."""
        self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach()
        self._term_counts[name] = self._term_counts.get(name, 0) + 1

    def _take_snapshot(self, model) -> None:
        if model.sparsity() > 0:  # the dense model is PrC's job
            self.snapshots.append(_frozen_copy(model))

    @property
    def unwrapped_student(self):
        return self.accelerator.unwrap_model(self.model)

    def _prepare(self, model):
        if model is None:
            return None
        model = model.to(self.args.device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    def _teacher_pass(self, teacher, model_inputs: dict, labels, flags: dict):
        """A frozen model's outputs and logits (with `labelled_logits_only`, its logits at the labelled positions only)."""
        if self.distillation.labelled_logits_only and labels is not None:
            base = getattr(teacher, teacher.base_model_prefix)
            out = base(**model_inputs, **flags, return_dict=True)
            return out, teacher.cls(out.last_hidden_state[labels != -100])
        out = teacher(**model_inputs, **flags)
        return out, getattr(out, "logits", None)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the task loss and logits only
            outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        cfg = self.distillation
        want_hidden = bool(cfg.hidden_weight or cfg.prc_weight or cfg.snc_weight or cfg.fic_weight)
        want_attn = bool(cfg.attention_weight)
        labels = inputs.get("labels")
        extra = {"only_labelled_logits": True} if cfg.labelled_logits_only and labels is not None else {}
        outputs = model(**inputs, output_hidden_states=want_hidden or None, output_attentions=want_attn or None, **extra)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        attention_mask = inputs.get("attention_mask")
        terms = {"task": outputs.loss * cfg.task_weight} if (cfg.task_weight and outputs.loss is not None) else {}
        teacher_out = None
        # PrC / FiC against the teacher itself reuse the teacher's forward pass
        contrasts_teacher = (cfg.prc_weight and self.pretrained is self.teacher) or (cfg.fic_weight and self.finetuned is self.teacher)
        if self.teacher is not None and (cfg.kd_weight or cfg.hidden_weight or cfg.attention_weight):
            with torch.no_grad():
                flags = dict(output_hidden_states=(cfg.hidden_weight > 0 or contrasts_teacher) or None, output_attentions=want_attn or None)
                teacher_out, teacher_logits = self._teacher_pass(self.teacher, model_inputs, labels, flags)
                members = [self._teacher_pass(member, model_inputs, labels, {}) for member in self.ensemble] if cfg.kd_weight else []
            question_answering = getattr(outputs, "start_logits", None) is not None
            if members:  # the KD target: the teachers' averaged distribution
                t = cfg.temperature
                if question_answering:
                    teacher_start = ensemble_logits([teacher_out.start_logits] + [out.start_logits for out, _ in members], t)
                    teacher_end = ensemble_logits([teacher_out.end_logits] + [out.end_logits for out, _ in members], t)
                else:
                    teacher_logits = ensemble_logits([teacher_logits] + [logits for _, logits in members], t)
            elif question_answering:
                teacher_start, teacher_end = teacher_out.start_logits, teacher_out.end_logits
            if cfg.kd_weight and question_answering:
                terms["kd"] = cfg.kd_weight * 0.5 * (
                    kd_loss(outputs.start_logits, teacher_start, cfg.temperature)
                    + kd_loss(outputs.end_logits, teacher_end, cfg.temperature)
                )
            elif cfg.kd_weight:
                token_level = labels is not None and labels.dim() > 1 and labels.dim() == outputs.logits.dim() - 1
                mask = labels != -100 if token_level and not cfg.labelled_logits_only else None
                terms["kd"] = cfg.kd_weight * kd_loss(outputs.logits, teacher_logits, cfg.temperature, mask)
            if cfg.hidden_weight:
                terms["hidden"] = cfg.hidden_weight * hidden_state_loss(outputs.hidden_states, teacher_out.hidden_states, attention_mask)
            if cfg.attention_weight:
                terms["attention"] = cfg.attention_weight * attention_loss(outputs.attentions, teacher_out.attentions, attention_mask)
        if cfg.prc_weight or cfg.snc_weight or cfg.fic_weight:
            def sentence(out):
                return sentence_vector(_last_hidden(out), attention_mask, cfg.contrastive_pooling)

            def frozen_sentence(frozen):
                if frozen is self.teacher and teacher_out is not None:
                    return sentence(teacher_out)
                return sentence(frozen(**model_inputs, output_hidden_states=True))

            anchors = sentence(outputs)
            batch = anchors.shape[0]
            with torch.no_grad():
                if cfg.prc_weight:
                    prc = frozen_sentence(self.pretrained)
                if cfg.snc_weight and self.snapshots:
                    snc = torch.cat([frozen_sentence(s) for s in self.snapshots])
                if cfg.fic_weight:
                    fic = frozen_sentence(self.finetuned)
            t = cfg.contrastive_temperature
            if cfg.prc_weight:
                terms["prc"] = cfg.prc_weight * contrastive_loss(anchors, prc, same_example_positives(batch, 1, anchors.device), t)
            if cfg.snc_weight and self.snapshots:
                views = snc.shape[0] // batch
                terms["snc"] = cfg.snc_weight * contrastive_loss(anchors, snc, same_example_positives(batch, views, anchors.device), t)
            if cfg.fic_weight:
                if labels is None or labels.dim() != 1:
                    raise ValueError("FiC needs one class label per example")
                terms["fic"] = cfg.fic_weight * contrastive_loss(anchors, fic, same_label_positives(labels, labels), t)
        loss = 0.0
        for name, value in terms.items():
            loss = loss + value
            self.record_term(name, value)
        if not torch.is_tensor(loss):
            raise ValueError("every loss term is disabled or unavailable: set task_weight or a distillation weight")
        return (loss, outputs) if return_outputs else loss
