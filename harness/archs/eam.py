"""eam: Elastic Associative Memory as the language model (parameter-golf PR #1146), model parts only.

The entry is a pipeline around a trained teacher: teacher hidden states are written into an elastic
memory under keys that are a fixed random projection of those states; an Encoder learns to predict
the key from tokens alone, and a Decoder maps what the memory returns for that key to logits. The
evaluation path (``Model``) is tokens -> Encoder -> memory read -> Decoder -> logits. The training
side (teacher, stages, budgets) lives in harness/eam.py; this file knows nothing of it.

Choices where the published description is silent (hence RECONSTRUCTION): the small transformer
keeps PyTorch's default Linear init with zero-initialised output projections and a tied embedding
N(0, 0.005) (the parameter-golf baseline's); the Decoder keeps the default init; a merge of two
locations that were never written (W1 + W2 = 0) averages their addresses; a freed row is filled
with the last live row so the live rows stay the first ``live`` rows; when the teacher is narrower
than the key (d < 256) the projection embeds h isometrically (orthonormal rows instead of columns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import Pipeline, make_config
from harness.archs.trn_hybrid import LeakyReluSquaredMLP, rms_norm

MATCH_KNOB = None  # not shape-matched: its size is the memory (max_locations)
RECONSTRUCTION = True
# trained by its own runner over the same-seed run of the architecture its hparam `teacher` names
PIPELINE = Pipeline(runner="harness.eam:run", inputs=("teacher",))
READ_CHUNK = 1024  # queries per top-k block of a read, bounding the [chunk, k, d] gather


@dataclass
class Config:
    """Defaults are the entry's (V 1024, d_teacher 512: Encoder 425,984 + Decoder 1,574,912 parameters)."""

    vocab_size: int = 1024
    teacher_d_model: int = 512  # width of the teacher's hidden states = the memory's value width
    encoder_d_model: int = 128
    encoder_layers: int = 2
    encoder_heads: int = 2
    encoder_mlp_mult: int = 2
    ffn_hidden: int | None = None  # the Encoder's MLP width (None -> encoder_mlp_mult * encoder_d_model)
    key_dim: int = 256
    decoder_hidden: int = 1024
    logit_softcap: float = 30.0
    max_locations: int = 12000
    initial_locations: int = 3000
    seed: int = 0  # the key projection's and the memory's own generators

    def __post_init__(self):
        if self.ffn_hidden is None:
            self.ffn_hidden = self.encoder_mlp_mult * self.encoder_d_model
        if self.encoder_d_model % self.encoder_heads:
            raise ValueError(f"eam: encoder_d_model={self.encoder_d_model} is not divisible by "
                             f"encoder_heads={self.encoder_heads}")


def key_projection(d: int, seed: int, key_dim: int = 256) -> torch.Tensor:
    """Q [d, key_dim] with key = normalize(Q^T h): the Q factor of the QR of a seeded randn(d, key_dim).

    For d < key_dim no d x key_dim matrix has orthonormal columns; Q then has orthonormal rows (the
    transposed Q of randn(key_dim, d)), so keys keep the cosines of the hidden states exactly.
    """
    g = torch.Generator().manual_seed(seed)
    if d >= key_dim:
        return torch.linalg.qr(torch.randn(d, key_dim, generator=g)).Q
    return torch.linalg.qr(torch.randn(key_dim, d, generator=g)).Q.T.contiguous()


class Attention(nn.Module):
    """Causal multi-head attention without biases or positional encoding; proj starts at zero."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)
                   for t in self.qkv(x).split(d, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class Block(nn.Module):
    """x + attn(rms_norm(x)), then x + mlp(rms_norm(x)); weightless norms."""

    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int):
        super().__init__()
        self.attn = Attention(d_model, n_heads)
        self.mlp = LeakyReluSquaredMLP(d_model, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x))
        return x + self.mlp(rms_norm(x))


class EntryTransformer(nn.Module):
    """The entry's small causal transformer; the defaults are its teacher (21,495,808 parameters).

    No biases, weightless RMSNorm, leaky_relu(0.5)**2 MLP, no positional encoding, tied embedding,
    logits soft-capped at 30. The Encoder uses it as its trunk (``hidden``); the final norm is the
    module ``norm_f``, where a teacher's hidden states are read.
    """

    def __init__(self, vocab_size: int = 1024, d_model: int = 512, n_layers: int = 8, n_heads: int = 8,
                 mlp_hidden: int = 1536, logit_softcap: float = 30.0):
        super().__init__()
        self.logit_softcap = logit_softcap
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_hidden) for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model, elementwise_affine=False)
        nn.init.normal_(self.tok_emb.weight, std=0.005)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        for block in self.blocks:
            x = block(x)
        return self.norm_f(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = F.linear(self.hidden(input_ids), self.tok_emb.weight)
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)


class Encoder(nn.Module):
    """Tokens -> unit keys: an EntryTransformer trunk, then Linear(d -> key_dim, no bias), normalised."""

    def __init__(self, config: Config):
        super().__init__()
        self.trunk = EntryTransformer(config.vocab_size, config.encoder_d_model, config.encoder_layers,
                                      config.encoder_heads, config.ffn_hidden, config.logit_softcap)
        self.to_key = nn.Linear(config.encoder_d_model, config.key_dim, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.to_key(self.trunk.hidden(input_ids)), dim=-1)


class Decoder(nn.Module):
    """A memory read (d_teacher wide) -> soft-capped logits: Linear -> GELU -> Linear, with biases."""

    def __init__(self, d_in: int, vocab_size: int, hidden: int = 1024, logit_softcap: float = 30.0):
        super().__init__()
        self.logit_softcap = logit_softcap
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, vocab_size)

    def forward(self, read: torch.Tensor) -> torch.Tensor:
        logits = self.fc2(F.gelu(self.fc1(read)))
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)


def _fp32(t: torch.Tensor):
    """The memory computes in float32 even inside an autocast region (bf16 cosines blur the top-k)."""
    return torch.autocast(t.device.type, enabled=False)


class ElasticMemory(nn.Module):
    """Addresses A (unit rows), counters C and write weights W; rows [0, live) are the live locations.

    Everything is a buffer, so the state saves to safetensors; the random draws (initial addresses,
    split directions, merge samples) come from the memory's own generator, so a run is a function of
    ``seed`` and the keys written. Defaults are the entry's.
    """

    def __init__(self, key_dim: int = 256, value_dim: int = 512, max_locations: int = 12000,
                 initial_locations: int = 3000, top_k: int = 20, conscience: float = 1.0, lr: float = 0.01,
                 min_lr: float = 0.001, lr_decay: float = 0.99999, winner_damping: float = 10.0,
                 regulate_every: int = 1024, create_below: float = 0.15, max_create: int = 20,
                 split_above: float = 150.0, max_split: int = 10, split_noise: float = 0.1,
                 merge_above: float = 0.95, merge_sample: int = 200, max_merge: int = 1,
                 read_top_k: int = 20, read_temperature: float = 10.0, seed: int = 0):
        super().__init__()
        if not 1 <= initial_locations <= max_locations:
            raise ValueError(f"eam memory: initial_locations={initial_locations} must lie in [1, "
                             f"max_locations={max_locations}]")
        for name, value in (("top_k", top_k), ("read_top_k", read_top_k), ("regulate_every", regulate_every)):
            if value < 1:
                raise ValueError(f"eam memory: {name}={value} must be >= 1")
        self.key_dim, self.value_dim, self.max_locations = key_dim, value_dim, max_locations
        self.top_k, self.conscience, self.min_lr, self.lr_decay = top_k, conscience, min_lr, lr_decay
        self.winner_damping, self.regulate_every = winner_damping, regulate_every
        self.create_below, self.max_create = create_below, max_create
        self.split_above, self.max_split, self.split_noise = split_above, max_split, split_noise
        self.merge_above, self.merge_sample, self.max_merge = merge_above, merge_sample, max_merge
        self.read_top_k, self.read_temperature = read_top_k, read_temperature
        self.generator = torch.Generator().manual_seed(seed)
        initial = torch.randn(max_locations, key_dim, generator=self.generator)
        self.register_buffer("addresses", F.normalize(initial, dim=1))
        self.register_buffer("counters", torch.zeros(max_locations, value_dim))
        self.register_buffer("write_weights", torch.zeros(max_locations))
        self.register_buffer("n_live", torch.tensor(initial_locations))
        self.register_buffer("lr", torch.tensor(lr, dtype=torch.float64))
        self.register_buffer("keys_written", torch.tensor(0))

    @property
    def live(self) -> int:
        return int(self.n_live)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.addresses.device)

    @torch.no_grad()
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a batch (keys [N, key_dim], values [N, value_dim]); regulate at every regulate_every mark."""
        with _fp32(keys):
            keys, values = F.normalize(keys.float(), dim=-1), values.float()
            self._write_batch(keys, values)
            before = int(self.keys_written)
            self.keys_written.fill_(before + len(keys))
            for _ in range((before + len(keys)) // self.regulate_every - before // self.regulate_every):
                self.regulate(keys, values)

    def _write_batch(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Every key sees A and W as they stand at the batch's start; the adds and moves are summed."""
        L = self.live
        A, W = self.addresses[:L], self.write_weights[:L]
        sims, index = (keys @ A.T).topk(min(self.top_k, L), dim=1)
        weight = sims.clamp(min=0) / sims[:, :1].clamp(min=1e-8)
        conscience = self.conscience * W[index] / W.sum().clamp(min=torch.finfo(W.dtype).tiny)  # 0 while W = 0
        winner = index.gather(1, (sims - conscience).argmax(dim=1, keepdim=True)).squeeze(1)
        start = A[winner]  # a copy: the addresses as they stand at the batch's start
        self.counters.index_add_(0, index.flatten(), (weight[..., None] * values[:, None, :]).flatten(0, 1))
        self.write_weights.index_add_(0, index.flatten(), weight.flatten())
        lr = float(self.lr)
        eta = lr / (1 + self.write_weights[winner] / self.winner_damping)
        self.addresses.index_add_(0, winner, eta[:, None] * (keys - start))
        moved = winner.unique()
        self.addresses[moved] = F.normalize(self.addresses[moved], dim=1)
        self.lr.fill_(max(self.min_lr, lr * self.lr_decay ** len(keys)))

    @torch.no_grad()
    def regulate(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Grow where keys find no location, split heavy locations, merge one near-duplicate pair."""
        with _fp32(keys):
            keys, values = F.normalize(keys.float(), dim=-1), values.float()
            self._create(keys, values)
            self._split()
            self._merge()

    def _create(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        L = self.live
        top1 = (keys @ self.addresses[:L].T).max(dim=1).values
        new = (top1 < self.create_below).nonzero().flatten()[: min(self.max_create, self.max_locations - L)]
        rows = slice(L, L + len(new))
        self.addresses[rows], self.counters[rows], self.write_weights[rows] = keys[new], values[new], 1.0
        self.n_live += len(new)

    def _split(self) -> None:
        L = self.live
        W = self.write_weights[:L]
        heavy = (W > self.split_above).nonzero().flatten()
        heavy = heavy[W[heavy].argsort(descending=True, stable=True)]  # largest first
        heavy = heavy[: min(self.max_split, self.max_locations - L)]
        if not len(heavy):
            return
        u = F.normalize(self._randn(len(heavy), self.key_dim), dim=1)
        rows = slice(L, L + len(heavy))
        self.addresses[rows] = F.normalize(self.addresses[heavy] + self.split_noise * u, dim=1)
        self.counters[heavy] /= 2
        self.write_weights[heavy] /= 2
        self.counters[rows], self.write_weights[rows] = self.counters[heavy], self.write_weights[heavy]
        self.n_live += len(heavy)

    def _merge(self) -> None:
        L = self.live
        sample = torch.randperm(L, generator=self.generator)[: self.merge_sample].to(self.addresses.device)
        A = self.addresses[sample]
        pairs = torch.triu(A @ A.T > self.merge_above, diagonal=1).nonzero().tolist()  # in sampled order
        merged, used = [], set()
        for i, j in pairs:
            if len(merged) == self.max_merge:
                break
            if i not in used and j not in used:
                merged.append((int(sample[i]), int(sample[j])))
                used.update((i, j))
        for keep, free in merged:
            w1, w2 = self.write_weights[keep], self.write_weights[free]
            a1, a2 = self.addresses[keep], self.addresses[free]
            address = w1 * a1 + w2 * a2 if w1 + w2 > 0 else a1 + a2
            self.addresses[keep] = F.normalize(address, dim=0)
            self.counters[keep] += self.counters[free]
            self.write_weights[keep] += w2
        for free in sorted((f for _, f in merged), reverse=True):
            last = self.live - 1
            for buffer in (self.addresses, self.counters, self.write_weights):
                buffer[free] = buffer[last]
                buffer[last] = 0
            self.n_live -= 1

    def read(self, queries: torch.Tensor) -> torch.Tensor:
        """[..., key_dim] -> [..., value_dim]: softmax(T s)-weighted means C/W of the top-k written locations.

        An empty memory (no live location with W > 0) reads zeros.
        """
        with _fp32(queries):
            q = F.normalize(queries.float(), dim=-1)
            written = (self.write_weights[: self.live] > 0).nonzero().flatten()
            if not len(written):
                return q.new_zeros(*q.shape[:-1], self.value_dim)
            A = self.addresses[written]
            means = self.counters[written] / self.write_weights[written, None]
            k = min(self.read_top_k, len(written))
            out = []
            for chunk in q.reshape(-1, self.key_dim).split(READ_CHUNK):
                sims, index = (chunk @ A.T).topk(k, dim=1)
                p = torch.softmax(self.read_temperature * sims, dim=1)
                out.append(torch.einsum("nk,nkd->nd", p, means[index]))
            return torch.cat(out).reshape(*q.shape[:-1], self.value_dim)


class Model(nn.Module):
    """The evaluation path: tokens -> Encoder -> memory read -> Decoder -> logits [B, T, V].

    Parameters are the Encoder's and the Decoder's; the memory and the teacher's key projection
    (``key_proj``, used to write and to make the Encoder's targets) are buffers.
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.memory = ElasticMemory(config.key_dim, config.teacher_d_model, config.max_locations,
                                    config.initial_locations, seed=config.seed)
        self.decoder = Decoder(config.teacher_d_model, config.vocab_size, config.decoder_hidden,
                               config.logit_softcap)
        self.register_buffer("key_proj", key_projection(config.teacher_d_model, config.seed, config.key_dim))

    def teacher_keys(self, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher hidden states [..., d_teacher] -> unit keys normalize(Q^T h)."""
        with _fp32(hidden):
            return F.normalize(hidden.float() @ self.key_proj, dim=-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.memory.read(self.encoder(input_ids)))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "eam"))
