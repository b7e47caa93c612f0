"""eam: Elastic Associative Memory as the language model (parameter-golf PR #1146), model parts only.

The entry is a pipeline around a trained teacher: teacher hidden states are written into an elastic
memory under keys that are a fixed random projection of those states; an Encoder learns to predict
the key from tokens alone, and a Decoder maps what the memory returns for that key to logits. The
evaluation path (``Model``) is tokens -> Encoder -> memory read -> Decoder -> logits. The training
side (teacher, stages, budgets) lives in harness/eam.py; this file knows nothing of it.

The parts follow the SUBMITTED code (records/2026-03-30_ eam_is_model/train_gpt.py), where it and
the PR's prose disagree (architectures.md section 5, the "(code)" items): ``ElasticMemory`` is the
code's memory, and the Encoder and Decoder keep its tensor names and inits, so its state dicts load
strictly. The prose rules stay available as ``rules="prose"`` (``ProseElasticMemory``). One
extension: when the teacher is narrower than the key (d < key_dim, which the code cannot run) the
projection embeds h isometrically (orthonormal rows instead of columns).

Switch ``qk_norm`` (default off, as submitted): QKNorm on the Encoder blocks' queries and keys
(layers.QKNorm), 2 * head_dim gains per block. Diagnostics (layers.collect):
  attn_logit_max/encoder.blocks.{i}  largest pre-softmax attention logit of the last recorded forward
  state_live_frac/memory  live locations / max_locations: how near the memory is to its cap (buffers)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from harness.archs import Pipeline, make_config
from harness.archs.layers import QKNorm, RecordsLogits, rms_norm

MATCH_KNOB = None  # not shape-matched: its size is the memory (max_locations)
# trained by its own runner over the same-seed run of the architecture its hparam `teacher` names
# its evaluation path, with a memory that holds writes, is what the admission checks hold to the LM contract
PIPELINE = Pipeline(runner="harness.eam:run", inputs=("teacher",), evaluation="harness.eam:evaluation_model")
READ_CHUNK = 1024  # queries per top-k block of a read, bounding the [chunk, k, d] gather
KEY_SEED = 42  # the code's key projection is drawn from a generator seeded 42, the same for every run
RULES = ("published", "prose")
SWITCHES = ("qk_norm",)


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
    decoder_hidden: int = 1024  # the code's 2 * d_teacher
    logit_softcap: float = 30.0
    max_locations: int = 12000
    initial_locations: int = 3000
    rules: str = "published"  # the memory's rules: "published" (the PR's code) or "prose" (its description)
    seed: int = 0  # the memory's own generator
    qk_norm: bool = False  # QKNorm in the Encoder's attention (the entry's teacher keeps its own)

    def __post_init__(self):
        if self.ffn_hidden is None:
            self.ffn_hidden = self.encoder_mlp_mult * self.encoder_d_model
        if self.encoder_d_model % self.encoder_heads:
            raise ValueError(f"eam: encoder_d_model={self.encoder_d_model} is not divisible by "
                             f"encoder_heads={self.encoder_heads}")
        if self.rules not in RULES:
            raise ValueError(f"eam: rules={self.rules!r} must be one of {RULES}")


def key_projection(d: int, seed: int, key_dim: int = 256) -> torch.Tensor:
    """Q [d, key_dim] with key = normalize(Q^T h): the Q factor of the QR of a seeded randn(d, key_dim).

    For d < key_dim no d x key_dim matrix has orthonormal columns; Q then has orthonormal rows (the
    transposed Q of randn(key_dim, d)), so keys keep the cosines of the hidden states exactly.
    """
    g = torch.Generator().manual_seed(seed)
    if d >= key_dim:
        return torch.linalg.qr(torch.randn(d, key_dim, generator=g)).Q
    return torch.linalg.qr(torch.randn(key_dim, d, generator=g)).Q.T.contiguous()


class Block(RecordsLogits, nn.Module):
    """x + out(attn(rms_norm(x))), then x + down(leaky_relu(up(rms_norm(x)), 0.5)**2).

    The code's block: causal attention without biases or positional encoding, weightless norms,
    every Linear at PyTorch's default init (nothing zero-initialised). The attention lives in the
    block itself (the code's tensor names), so the block is the module that records its logits.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_hidden: int, qk_norm: bool = False):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.up = nn.Linear(d_model, mlp_hidden, bias=False)
        self.down = nn.Linear(mlp_hidden, d_model, bias=False)
        self.q_norm = QKNorm(d_model // n_heads) if qk_norm else nn.Identity()
        self.k_norm = QKNorm(d_model // n_heads) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = (t.transpose(1, 2) for t in
                   self.qkv(rms_norm(x)).view(B, T, 3, self.n_heads, d // self.n_heads).unbind(2))
        q, k = self.q_norm(q), self.k_norm(k)
        self.record(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, d))
        return x + self.down(F.leaky_relu(self.up(rms_norm(x)), 0.5).square())


class EntryTransformer(nn.Module):
    """The entry's teacher (21,495,808 parameters at the defaults); the harness's teacher is a grid run.

    Embedding N(0, 0.005) then rms_norm, the code's Blocks with an MLP of width 3d, a final norm
    (module ``norm_f``, where hidden states are read), tied logits soft-capped at 30.
    """

    def __init__(self, vocab_size: int = 1024, d_model: int = 512, n_layers: int = 8, n_heads: int = 8,
                 mlp_hidden: int = 1536, logit_softcap: float = 30.0):
        super().__init__()
        self.logit_softcap = logit_softcap
        self.tok = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.tok.weight, std=0.005)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_hidden) for _ in range(n_layers))
        self.norm_f = nn.RMSNorm(d_model, elementwise_affine=False)

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = rms_norm(self.tok(input_ids))
        for block in self.blocks:
            x = block(x)
        return self.norm_f(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = F.linear(self.hidden(input_ids), self.tok.weight)
        return self.logit_softcap * torch.tanh(logits / self.logit_softcap)


class Encoder(nn.Module):
    """Tokens -> unit keys: embedding (default N(0, 1)), rms_norm, Blocks, rms_norm, Linear, normalise."""

    def __init__(self, config: Config):
        super().__init__()
        self.tok = nn.Embedding(config.vocab_size, config.encoder_d_model)
        self.blocks = nn.ModuleList(Block(config.encoder_d_model, config.encoder_heads, config.ffn_hidden,
                                          config.qk_norm) for _ in range(config.encoder_layers))
        self.key_proj = nn.Linear(config.encoder_d_model, config.key_dim, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = rms_norm(self.tok(input_ids))
        for block in self.blocks:
            x = block(x)
        return F.normalize(self.key_proj(rms_norm(x)), dim=-1)


class Decoder(nn.Module):
    """A memory read (d_teacher wide) -> soft-capped logits: Linear -> GELU -> Linear, with biases."""

    def __init__(self, d_in: int, vocab_size: int, hidden: int = 1024, logit_softcap: float = 30.0):
        super().__init__()
        self.logit_softcap = logit_softcap
        self.head = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, vocab_size))

    def forward(self, read: torch.Tensor) -> torch.Tensor:
        return self.logit_softcap * torch.tanh(self.head(read) / self.logit_softcap)


def _fp32(t: torch.Tensor):
    """The memory sets its own precision even inside an autocast region (bf16 cosines blur the top-k)."""
    return torch.autocast(t.device.type, enabled=False)


def fp16_similarities(queries: torch.Tensor, addresses: torch.Tensor) -> torch.Tensor:
    """The code's ``queries.half() @ addresses.T`` taken to float32, computed without a half matmul.

    Products of float16 numbers are exact in float32; the sum is float32 and rounded to float16, as a
    float16 GEMM with float32 accumulation does. Summation order can move a result by one float16 ulp
    (about 0.1% of entries against PyTorch's CPU kernel), and a CPU float16 matmul is ~6x slower.
    """
    return (queries.half().float() @ addresses.float().T).half().float()


class ElasticMemory(nn.Module):
    """The submitted code's memory: addresses A (float16 unit rows), counters C, write weights W.

    Rows [0, live) are the live locations. Everything is a buffer, so the state saves to
    safetensors. The random draws (initial addresses, one split direction per child, the merge
    sample) come from the memory's own generator in the code's order and shapes, so a memory seeded
    s draws what the code draws after ``torch.manual_seed(s)``. Keys and queries are used as given
    (the code does not normalise them): pass unit vectors. Defaults are the entry's.
    """

    address_dtype = torch.float16

    def __init__(self, key_dim: int = 256, value_dim: int = 512, max_locations: int = 12000,
                 initial_locations: int = 3000, top_k: int = 20, conscience: float = 1.0, lr: float = 0.01,
                 min_lr: float = 0.001, lr_decay: float = 0.99999, winner_damping: float = 10.0,
                 regulate_every: int = 1024, create_below: float = 0.15, max_create: int = 20,
                 split_above: float = 150.0, max_split: int = 10, split_noise: float = 0.1,
                 merge_above: float = 0.95, merge_sample: int = 200, merge_min_live: int = 20,
                 max_merge: int = 1, read_top_k: int = 20, read_temperature: float = 10.0, seed: int = 0):
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
        self.merge_above, self.merge_sample, self.merge_min_live = merge_above, merge_sample, merge_min_live
        self.max_merge = max_merge  # the prose rules' cap; the code merges at most one pair a call
        self.read_top_k, self.read_temperature = read_top_k, read_temperature
        self.generator = torch.Generator().manual_seed(seed)
        initial = F.normalize(torch.randn(max_locations, key_dim, generator=self.generator), dim=-1)
        self.register_buffer("addresses", initial.to(self.address_dtype))
        self.register_buffer("counters", torch.zeros(max_locations, value_dim))
        self.register_buffer("write_weights", torch.zeros(max_locations))
        self.register_buffer("n_live", torch.tensor(initial_locations))
        self.register_buffer("lr", torch.tensor(lr, dtype=torch.float64))
        self.register_buffer("keys_written", torch.tensor(0))
        self.register_buffer("since_regulation", torch.tensor(0))

    @property
    def live(self) -> int:
        return int(self.n_live)

    def diagnostics(self) -> dict[str, float]:
        return {"state_live_frac": self.live / self.max_locations}

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator).to(self.addresses.device)

    def _prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return keys.float()

    def _similarities(self, queries: torch.Tensor) -> torch.Tensor:
        """Cosines [N, live] of (unit) queries to the live addresses, at the code's float16 precision."""
        return fp16_similarities(queries, self.addresses[: self.live])

    @torch.no_grad()
    def write(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a batch (keys [N, key_dim], values [N, value_dim]), then regulate when one is due."""
        with _fp32(keys):
            keys, values = self._prepare(keys), values.float()
            top1 = self._write_batch(keys, values)
            self.keys_written += len(keys)
            for _ in range(self._regulations_due(len(keys))):
                self.regulate(keys, values, top1)

    def _regulations_due(self, n: int) -> int:
        """The code counts writes since the last regulation and resets the count to 0 when it runs."""
        self.since_regulation += n
        if int(self.since_regulation) < self.regulate_every:
            return 0
        self.since_regulation.zero_()
        return 1

    def _write_batch(self, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """Every key sees A and W as they stand at the batch's start; C and W add up, moves are assigned.

        Returns each key's top-1 similarity (clamped at 1e-8), which the regulation's novelty test uses.
        """
        L = self.live
        W = self.write_weights[:L]
        sims, index = self._similarities(keys).topk(min(self.top_k, L), dim=1)
        top1 = sims[:, :1].clamp(min=1e-8)
        weight = sims.clamp(min=0) / top1
        conscience = self.conscience * self.write_weights[index] / W.sum().clamp(min=1e-8)  # 0 while W = 0
        winner = index.gather(1, (sims - conscience).argmax(dim=1, keepdim=True)).squeeze(1)
        self.counters.index_add_(0, index.flatten(), (values[:, None, :] * weight[..., None]).flatten(0, 1))
        self.write_weights.scatter_add_(0, index.flatten(), weight.flatten())
        lr = float(self.lr)
        eta = lr / (1.0 + self.write_weights[winner] / self.winner_damping)  # W after the batch's adds
        start = self.addresses[winner].float()
        moved = F.normalize(start + eta[:, None] * (keys - start), dim=-1).to(self.address_dtype)
        # keys sharing a winner: the last one's move stands (the code's assignment, on CPU)
        last = torch.full((L,), -1, dtype=torch.long, device=keys.device)
        last.scatter_reduce_(0, winner, torch.arange(len(keys), device=keys.device), "amax")
        rows = (last >= 0).nonzero().flatten()
        self.addresses[rows] = moved[last[rows]]
        self.lr.fill_(max(self.min_lr, lr * self.lr_decay ** len(keys)))
        return top1.squeeze(1)

    @torch.no_grad()
    def regulate(self, keys: torch.Tensor, values: torch.Tensor, top1: torch.Tensor | None = None) -> None:
        """Create rows for novel keys, add children to overloaded rows, merge one near-duplicate pair.

        ``top1``: the keys' top-1 similarities from before their write (a write passes them); None
        measures them against the addresses as they stand. ``values`` are unused by the code's rules.
        """
        with _fp32(keys):
            keys = self._prepare(keys)
            if top1 is None:
                top1 = self._similarities(keys).max(dim=1).values.clamp(min=1e-8)
            self._create(keys, top1)
            self._split()
            self._merge()

    def _create(self, keys: torch.Tensor, top1: torch.Tensor) -> None:
        """Novel keys (top-1 < 0.15), in batch order, at most 20: rows with address = key, C = 0, W = 0."""
        L = self.live
        new = keys[top1 < self.create_below][: min(self.max_create, self.max_locations - L)]
        self.addresses[L: L + len(new)] = F.normalize(new, dim=-1).to(self.address_dtype)
        self.counters[L: L + len(new)] = 0
        self.write_weights[L: L + len(new)] = 0
        self.n_live += len(new)

    def _split(self) -> None:
        """Rows with W > 150, in index order, at most 10: an empty child near the parent, which keeps all.

        The child is normalize(a + 0.1 u) with u a random unit vector rounded to float16 (as the
        code); the parent's C and W stay, so it splits again at the next regulation.
        """
        L = self.live
        heavy = (self.write_weights[:L] > self.split_above).nonzero().flatten()
        for parent in heavy[: max(0, min(self.max_split, self.max_locations - L))].tolist():
            u = (F.normalize(self._randn(self.key_dim), dim=-1).half() * self.split_noise).float()
            self.addresses[L] = F.normalize(self.addresses[parent].float() + u, dim=-1).to(self.address_dtype)
            self.counters[L] = 0
            self.write_weights[L] = 0
            L += 1
        self.n_live.fill_(L)

    def _merge(self) -> None:
        """Above 20 live rows: among min(L, 200) sampled rows, the first whose best partner has cos > 0.95.

        The pair becomes one row at normalize((W1 a1 + W2 a2) / (W1 + W2 + 1e-8)) with C1 + C2 and
        W1 + W2; the last live row moves into the freed one. Two rows with W = 0 merge to the zero
        address (the code's arithmetic), which no cosine then selects above an ordinary row.
        """
        L = self.live
        if L <= self.merge_min_live:
            return
        sample = torch.randperm(L, generator=self.generator)[: self.merge_sample].to(self.addresses.device)
        A = self.addresses[sample].float()
        cos = A @ A.T
        cos.fill_diagonal_(-1)
        best, partner = cos.max(dim=1)
        candidates = (best > self.merge_above).nonzero().flatten()
        if not len(candidates):
            return
        first = int(candidates[0])
        keep, free = int(sample[first]), int(sample[partner[first]])
        w1, w2 = self.write_weights[keep].clone(), self.write_weights[free].clone()
        address = (w1 * self.addresses[keep].float() + w2 * self.addresses[free].float()) / (w1 + w2 + 1e-8)
        self.addresses[keep] = F.normalize(address, dim=-1).to(self.address_dtype)
        self.counters[keep] += self.counters[free]
        self.write_weights[keep] = w1 + w2
        last = L - 1
        if free != last:
            for buffer in (self.addresses, self.counters, self.write_weights):
                buffer[free] = buffer[last]
        self.counters[last] = 0
        self.write_weights[last] = 0
        self.n_live -= 1

    @torch.no_grad()
    def read(self, queries: torch.Tensor) -> torch.Tensor:
        """[..., key_dim] -> [..., value_dim]: softmax(10 s)-weighted means C / max(W, 1e-8) of the top 20.

        Every live row competes, written or not: a row with W = 0 contributes the zero vector with its
        softmax weight (the code's read), so an unwritten memory reads zeros.
        """
        with _fp32(queries):
            q = self._prepare(queries)
            k = min(self.read_top_k, self.live)
            out = []
            for chunk in q.reshape(-1, self.key_dim).split(READ_CHUNK):
                sims, index = self._similarities(chunk).topk(k, dim=1)
                means = self.counters[index] / self.write_weights[index].clamp(min=1e-8)[..., None]
                p = torch.softmax(self.read_temperature * sims, dim=-1)
                out.append((p[..., None] * means).sum(dim=1))
            return torch.cat(out).reshape(*q.shape[:-1], self.value_dim)


class ProseElasticMemory(ElasticMemory):
    """The PR's prose rules (architectures.md section 5, the rules after the "(code)" items).

    Float32 addresses and normalised keys; moves to a shared winner add up; a regulation at every
    mark of regulate_every keys crossed, whose novelty test looks at the addresses after the write;
    a new row holds its key's value (C = value, W = 1); a split hands the child half the parent's C
    and W, largest W first; the first sampled pair above the cosine threshold merges (a pair never
    written averages its addresses); a read ignores rows with W = 0. The draws use the same generator.
    """

    address_dtype = torch.float32

    def _prepare(self, keys: torch.Tensor) -> torch.Tensor:
        return F.normalize(keys.float(), dim=-1)

    def _similarities(self, queries: torch.Tensor) -> torch.Tensor:
        return queries @ self.addresses[: self.live].T

    def _regulations_due(self, n: int) -> int:
        after = int(self.keys_written)
        return after // self.regulate_every - (after - n) // self.regulate_every

    def _write_batch(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        L = self.live
        A, W = self.addresses[:L], self.write_weights[:L]
        sims, index = self._similarities(keys).topk(min(self.top_k, L), dim=1)
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
        return None

    @torch.no_grad()
    def regulate(self, keys: torch.Tensor, values: torch.Tensor, top1: torch.Tensor | None = None) -> None:
        """Grow where keys find no location, split heavy locations, merge one near-duplicate pair.

        ``top1`` is ignored: the prose rules test novelty against the addresses after the write.
        """
        with _fp32(keys):
            keys, values = self._prepare(keys), values.float()
            self._create_with_values(keys, values)
            self._split()
            self._merge()

    def _create_with_values(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        L = self.live
        top1 = self._similarities(keys).max(dim=1).values
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
            q = self._prepare(queries)
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


MEMORIES = {"published": ElasticMemory, "prose": ProseElasticMemory}


class Model(nn.Module):
    """The evaluation path: tokens -> Encoder -> memory read -> Decoder -> logits [B, T, V].

    Parameters are the Encoder's and the Decoder's; the memory and the teacher's key projection
    (``key_proj``, used to write and to make the Encoder's targets) are buffers. The projection is
    the code's: seeded 42 for every run and held in bfloat16 (its values here are those, in float32).
    """

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.memory = MEMORIES[config.rules](config.key_dim, config.teacher_d_model, config.max_locations,
                                             config.initial_locations, seed=config.seed)
        self.decoder = Decoder(config.teacher_d_model, config.vocab_size, config.decoder_hidden,
                               config.logit_softcap)
        q = key_projection(config.teacher_d_model, KEY_SEED, config.key_dim)
        self.register_buffer("key_proj", q.bfloat16().float())

    def teacher_keys(self, hidden: torch.Tensor) -> torch.Tensor:
        """Teacher hidden states [..., d_teacher] -> unit keys normalize(Q^T h)."""
        with _fp32(hidden):
            return F.normalize(hidden.float() @ self.key_proj, dim=-1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.memory.read(self.encoder(input_ids)))


def build(**hparams) -> Model:
    return Model(make_config(Config, hparams, "eam"))
