"""The training-step core every kind of run shares: recipe, optimizer, lr schedule, precision, one step,
evaluation.

The common loop (harness.train) and every pipeline stage (harness.eam) call these, so a difference
between architectures is never a difference of optimizer set-up, clipping or evaluation. ``train_step``
is a function of (loss function, parameters, optimizer, batch, lr): nothing in it belongs to one
model object, so several seeds can later share one process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, NamedTuple

import torch
import torch.nn.functional as F

from harness.contracts import from_dict


@dataclass(frozen=True)
class Recipe:
    """The study's training recipe; defaults live once, in workflow/schemas/config.schema.yaml."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    min_lr: float
    warmup_steps: int
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float
    precision: str
    compile: bool
    log_every: int
    eval_every: int
    eval_batches: int
    eval_sampling: str
    eval_seed: int
    checkpoint_every: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return from_dict(cls, {**d, **({"betas": tuple(d["betas"])} if "betas" in d else {})}, "recipe")


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup to lr over warmup_steps, then cosine down to min_lr at the last step."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    progress = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def resolve_device(recipe: Recipe) -> tuple[torch.device, torch.dtype | None]:
    """CUDA when present; autocast dtype bf16 there under 'auto', none (fp32) on CPU."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if recipe.precision == "bf16" or (recipe.precision == "auto" and device.type == "cuda"):
        return device, torch.bfloat16
    return device, None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The recipe's precision: autocast to ``dtype``, or plain fp32 when it is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_optimizer(params: Iterable[torch.Tensor], recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with the recipe's betas and weight decay (fused on CUDA); the lr is set by every step."""
    return torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
                             fused=device.type == "cuda")


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per token, computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class StepResult(NamedTuple):
    loss: float  # the batch loss before the update (non-finite: no update was made)
    grad_norm: float  # pre-clip global gradient norm (nan when no update was made)


def train_step(loss_of: Callable[[Any], torch.Tensor], params: list[torch.Tensor],
               optimizer: torch.optim.Optimizer, batch: Any, lr: float, grad_clip: float) -> StepResult:
    """One optimizer step at ``lr`` on ``loss_of(batch)``, clipping the gradient of ``params`` to
    ``grad_clip`` (0 = no clipping). A non-finite loss makes no update: the caller ends the run."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = loss_of(batch)
    value = loss.item()
    if not math.isfinite(value):
        return StepResult(value, math.nan)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    max_norm = grad_clip if grad_clip > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm).item()
    optimizer.step()
    return StepResult(value, grad_norm)


def evaluate(model: torch.nn.Module, batches: list, device: torch.device, dtype: torch.dtype | None) -> float:
    """Mean next-token loss over fixed batches, in eval mode; the model is left in train mode."""
    model.eval()
    total = 0.0
    with torch.no_grad(), autocast(device, dtype):
        for x, y in batches:
            total += next_token_loss(model(x.to(device)), y.to(device)).item()
    model.train()
    return total / len(batches)
