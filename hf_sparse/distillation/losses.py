"""Distillation losses: logits KD, hidden states and attentions (SparseBERT), CAP's contrastive losses.

All losses are means over the selected positions / examples and return a 0-dim tensor.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0, mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Hinton et al.: T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dimension.

    A single output (regression, e.g. STS-B) has no distribution to match: there the loss is the
    mean squared error between student and teacher outputs (the temperature does not apply).

    Args:
        mask: boolean mask over the leading dimensions (e.g. the MLM positions with a label).
    """
    s = student_logits.reshape(-1, student_logits.shape[-1])
    t = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    if mask is not None:
        keep = mask.reshape(-1)
        s, t = s[keep], t[keep]
    if s.shape[0] == 0:
        return student_logits.sum() * 0.0
    if s.shape[-1] == 1:
        return F.mse_loss(s.float(), t.float())
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    log_p_t = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * temperature**2


def ensemble_logits(logits: Sequence[torch.Tensor], temperature: float = 2.0) -> torch.Tensor:
    """One teacher's worth of logits for several teachers (Hinton et al.'s ensemble distillation).

    Returns logits whose softmax at `temperature` is the mean of the teachers' softmaxes at that temperature, so
    `kd_loss(student, ensemble_logits(teachers, T), T)` is the KL to the teachers' averaged distribution. A single
    output (regression) has no distribution: there the teachers' outputs are averaged.

    Args:
        logits: the teachers' logits, all of one shape.
    """
    if not logits:
        raise ValueError("ensemble_logits needs at least one teacher's logits")
    shapes = {tuple(t.shape) for t in logits}
    if len(shapes) != 1:
        raise ValueError(f"the teachers' logits differ in shape: {sorted(shapes)}")
    stacked = torch.stack([t.float() for t in logits])
    if stacked.shape[-1] == 1:
        return stacked.mean(0)
    log_mean = torch.logsumexp(F.log_softmax(stacked / temperature, dim=-1), dim=0) - math.log(len(logits))
    return log_mean * temperature


def _layer_pairs(n_student: int, n_teacher: int, layer_map: Optional[Sequence[int]]) -> list[tuple[int, int]]:
    if layer_map is None:
        if n_teacher % n_student:
            raise ValueError(f"cannot map {n_student} student layers onto {n_teacher} teacher layers; pass layer_map")
        step = n_teacher // n_student
        layer_map = [(i + 1) * step - 1 for i in range(n_student)]
    if len(layer_map) != n_student:
        raise ValueError(f"layer_map has {len(layer_map)} entries for {n_student} student layers")
    return list(enumerate(layer_map))


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: Optional[torch.Tensor] = None,
    layer_map: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Mean squared error between matched hidden states (embeddings excluded), averaged over layers.

    `student_hidden` / `teacher_hidden` are the models' `hidden_states` tuples (embeddings first).
    """
    pairs = _layer_pairs(len(student_hidden) - 1, len(teacher_hidden) - 1, layer_map)
    total = 0.0
    for s_idx, t_idx in pairs:
        diff = (student_hidden[s_idx + 1] - teacher_hidden[t_idx + 1]).pow(2).mean(-1)
        if attention_mask is not None:
            weights = attention_mask.to(diff.dtype)
            total = total + (diff * weights).sum() / weights.sum().clamp(min=1)
        else:
            total = total + diff.mean()
    return total / len(pairs)


def attention_loss(
    student_attentions: Sequence[torch.Tensor],
    teacher_attentions: Sequence[torch.Tensor],
    attention_mask: Optional[torch.Tensor] = None,
    layer_map: Optional[Sequence[int]] = None,
    eps: float = 1e-12,
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions [batch, heads, query, key], averaged.

    Padded query positions are ignored; the models need `attn_implementation="eager"` to return attentions.
    """
    pairs = _layer_pairs(len(student_attentions), len(teacher_attentions), layer_map)
    total = 0.0
    for s_idx, t_idx in pairs:
        p_t = teacher_attentions[t_idx]
        if p_t.shape != student_attentions[s_idx].shape:
            raise ValueError(f"attention distillation pairs student layer {s_idx} with teacher layer {t_idx}, whose attentions "
                             f"have shapes {tuple(student_attentions[s_idx].shape)} and {tuple(p_t.shape)} "
                             "[batch, heads, query, key]: the models need the same number of heads")
        kl = (p_t * ((p_t + eps).log() - (student_attentions[s_idx] + eps).log())).sum(-1)  # [b, h, q]
        if attention_mask is not None:
            weights = attention_mask[:, None, :].to(kl.dtype).expand_as(kl)
            total = total + (kl * weights).sum() / weights.sum().clamp(min=1)
        else:
            total = total + kl.mean()
    return total / len(pairs)


def contrastive_loss(
    anchors: torch.Tensor, candidates: torch.Tensor, positives: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """CAP's contrastive objective (supervised InfoNCE with several positives).

    For anchor i: -log( sum_{j in P(i)} exp(sim(i, j) / T) / sum_j exp(sim(i, j) / T) ), with cosine
    similarity, averaged over anchors that have at least one positive. The positives' probabilities
    are summed inside the log (the "L_in" form of Khosla et al. 2020); with one positive per anchor
    (PrC, or SnC with one snapshot) this equals the per-positive average form.

    Args:
        anchors: [B, D] representations of the pruned model.
        candidates: [N, D] representations to contrast with (pre-trained model: PrC, earlier pruning
            snapshots: SnC, fine-tuned model: FiC).
        positives: [B, N] boolean, true where candidate j is a positive for anchor i (the same
            example for PrC/SnC; the same label for FiC).
    """
    if positives.shape != (anchors.shape[0], candidates.shape[0]):
        raise ValueError(f"positives has shape {list(positives.shape)}, expected [{anchors.shape[0]}, {candidates.shape[0]}]")
    sim = F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T / temperature
    log_prob = sim - torch.logsumexp(sim, dim=-1, keepdim=True)
    has_positive = positives.any(dim=-1)
    if not bool(has_positive.any()):
        return anchors.sum() * 0.0
    masked = log_prob.masked_fill(~positives, float("-inf"))
    per_anchor = -torch.logsumexp(masked[has_positive], dim=-1)
    return per_anchor.mean()


def same_example_positives(n_anchors: int, n_views: int, device=None) -> torch.Tensor:
    """Positives when the candidates are `n_views` stacked copies of the batch (PrC / SnC)."""
    eye = torch.eye(n_anchors, dtype=torch.bool, device=device)
    return eye.repeat(1, n_views)


def same_label_positives(anchor_labels: torch.Tensor, candidate_labels: torch.Tensor) -> torch.Tensor:
    """Positives for FiC: candidates with the anchor's label."""
    return anchor_labels[:, None] == candidate_labels[None, :]
