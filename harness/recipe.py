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
    optimizer: str
    muon_lr: float
    muon_momentum: float
    muon_nesterov: bool
    muon_ns_steps: int
    muon_weight_decay: float
    embed_lr: float | None
    head_lr: float | None
    scalar_lr: float | None
    schedule: str
    warmdown_steps: int
    warmdown_shape: str
    z_loss: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        return from_dict(cls, {**d, **({"betas": tuple(d["betas"])} if "betas" in d else {})}, "recipe")


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup to lr over warmup_steps; then (schedule cosine) cosine down to min_lr at the last
    step, or (schedule warmdown) flat at lr until the last warmdown_steps, which go down to min_lr
    (warmdown_shape linear: reaching it after the last step; cosine: half a cosine period)."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    if r.schedule == "warmdown":
        start = r.steps - r.warmdown_steps
        if r.warmdown_steps <= 0 or step < start:
            return r.lr
        progress = (step - start) / r.warmdown_steps
        scale = 1 - progress if r.warmdown_shape == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return r.min_lr + (r.lr - r.min_lr) * max(0.0, scale)
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


def make_optimizer(params: Iterable[torch.Tensor], recipe: Recipe, device: torch.device,
                   model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``params``; the lr is set by every step (``train_step``).

    adamw: AdamW with the recipe's betas and weight decay (fused on CUDA). muon_adam: see
    ``split_params`` and ``MuonAdam``; each group's lr is the step's lr times its ``lr_ratio``."""
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
                                 fused=device.type == "cuda")
    params = list(params)
    groups = split_params(params, model)
    muon = torch.optim.Muon(groups["muon"], lr=recipe.muon_lr, momentum=recipe.muon_momentum,
                            nesterov=recipe.muon_nesterov, ns_steps=recipe.muon_ns_steps,
                            weight_decay=recipe.muon_weight_decay) if groups["muon"] else None
    for group in muon.param_groups if muon else ():
        group["lr_ratio"] = recipe.muon_lr / recipe.lr
    adam_groups = [{"params": groups[k], "lr_ratio": (getattr(recipe, f"{k}_lr") or recipe.lr) / recipe.lr}
                   for k in ("embed", "head", "scalar") if groups[k]]
    adam = torch.optim.AdamW(adam_groups, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay,
                             fused=device.type == "cuda") if adam_groups else None
    return MuonAdam(params, [o for o in (muon, adam) if o is not None])


def split_params(params: list[torch.Tensor], model: torch.nn.Module | None = None) -> dict[str, list[torch.Tensor]]:
    """The muon_adam split, by rule, for any architecture: the weight of an ``nn.Embedding`` -> embed;
    another 2-D parameter with a dimension equal to an embedding's vocabulary -> head (a tied head is
    the embedding itself); any other 2-D parameter with both sides >= 8 (the blocks' matrices) -> muon;
    the rest (vectors, scalars, gates, tiny matrices) -> scalar. Without ``model`` nothing is an
    embedding or head: 2-D -> muon, the rest -> scalar."""
    embeds = [m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)] if model is not None else []
    embed_ids = {id(w) for w in embeds}
    vocab = {w.shape[0] for w in embeds}
    out: dict[str, list[torch.Tensor]] = {"muon": [], "embed": [], "head": [], "scalar": []}
    for p in params:
        if id(p) in embed_ids:
            out["embed"].append(p)
        elif p.ndim == 2 and (p.shape[0] in vocab or p.shape[1] in vocab):
            out["head"].append(p)
        elif p.ndim == 2 and min(p.shape) >= 8:
            out["muon"].append(p)
        else:
            out["scalar"].append(p)
    return out


class MuonAdam:
    """Muon and AdamW as one optimizer: one ``step``/``zero_grad``, their ``param_groups`` in one list,
    and a ``state_dict`` whose per-parameter state is keyed by the index of the parameter in
    ``params`` (the model's parameter order), as ``harness.checkpoint`` saves and restores it."""

    def __init__(self, params: list[torch.Tensor], optimizers: list[torch.optim.Optimizer]):
        self.params, self.optimizers = list(params), optimizers
        index = {id(p): i for i, p in enumerate(self.params)}
        self._index = [[index[id(p)] for g in o.param_groups for p in g["params"]] for o in optimizers]

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def state_dict(self) -> dict:
        state = {}
        for o, index in zip(self.optimizers, self._index):
            for local, st in o.state_dict()["state"].items():
                state[index[local]] = st
        return {"state": state, "param_groups": [o.state_dict()["param_groups"] for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Each sub-optimizer gets its parameters' state back (its own param_groups are kept)."""
        for o, index in zip(self.optimizers, self._index):
            o.load_state_dict({"state": {local: state_dict["state"][g] for local, g in enumerate(index)
                                         if g in state_dict["state"]},
                               "param_groups": o.state_dict()["param_groups"]})


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in nats per token, computed in fp32 whatever the autocast dtype."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def training_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float) -> torch.Tensor:
    """The training objective: next-token cross-entropy, plus ``z_loss`` times the mean squared log
    partition function log Z = logsumexp(logits) (PaLM's auxiliary loss; it pulls log Z toward 0 and
    keeps the output logits from drifting). z_loss 0 is plain cross-entropy."""
    loss = next_token_loss(logits, targets)
    if z_loss:
        loss = loss + z_loss * torch.logsumexp(logits.float(), dim=-1).square().mean()
    return loss


class StepResult(NamedTuple):
    loss: float  # the batch loss before the update (non-finite: no update was made)
    grad_norm: float  # pre-clip global gradient norm (nan when no update was made)


def train_step(loss_of: Callable[[Any], torch.Tensor], params: list[torch.Tensor],
               optimizer: torch.optim.Optimizer, batch: Any, lr: float, grad_clip: float) -> StepResult:
    """One optimizer step at ``lr`` on ``loss_of(batch)``, clipping the gradient of ``params`` to
    ``grad_clip`` (0 = no clipping). A non-finite loss makes no update: the caller ends the run."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_ratio", 1.0)
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
