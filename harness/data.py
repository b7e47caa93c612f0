"""Datasets, checksums, cache, tokens and batches.

A dataset is either a registry name (a canonical URL and a published checksum) or the path of a
local text file. A named dataset's file is taken from, in order: a local data directory
(``data_dir``, else $HARNESS_DATA_DIR), the cache (``cache_dir``, else $HARNESS_CACHE_DIR, else
~/.cache/harness), or a download into the cache. Every copy is checked against the published
digest wherever it came from, so two runs that name the same dataset train on the same bytes;
the sha256 of the file actually read goes into run.json. A cached copy that no longer matches is
downloaded again; offline it is refused, never used.

Errors: a file that cannot be found nor downloaded -> FileNotFoundError; a wrong checksum, an
unreadable or undecodable file, an unknown dataset or token kind -> ValueError. Each names the file
and what to do.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from harness.files import disk_full

TOKEN_KINDS = ("bytes", "chars")
# a local text file has no published split: hold out a validation and a test tail
LOCAL_FILE_SPLITS = (("train", 0.9), ("val", 0.05), ("test", 0.05))
DOWNLOAD_TIMEOUT_S = 60


@dataclass(frozen=True)
class Dataset:
    """A downloadable dataset: where it lives and the exact bytes it must have."""

    name: str
    url: str
    filename: str  # the verified file's name in the cache or a local data dir
    algorithm: str  # hashlib name of the published checksum
    digest: str  # hex digest of the (unzipped) file
    splits: tuple[tuple[str, float], ...]  # (split, fraction of the tokens), in file order
    zip_member: str | None = None  # the download is a zip and this member is the file
    size: int | None = None  # bytes, when known
    local_names: tuple[str, ...] = ()  # other names accepted in a local data dir

    def __post_init__(self):
        names = [split for split, _ in self.splits]
        if "train" not in names or "val" not in names:
            raise ValueError(f"dataset {self.name!r}: splits {names} must include 'train' and 'val'")
        if sum(Fraction(str(fraction)) for _, fraction in self.splits) != 1:
            raise ValueError(f"dataset {self.name!r}: split fractions {self.splits} must sum to 1")


DATASETS: dict[str, Dataset] = {
    ds.name: ds
    for ds in (
        Dataset(
            name="enwik8",
            url="http://mattmahoney.net/dc/enwik8.zip",
            filename="enwik8",
            algorithm="md5",
            digest="a1fa5ffddb56f4953e226637dabbb36a",
            splits=(("train", 0.9), ("val", 0.05), ("test", 0.05)),
            zip_member="enwik8",
            size=100_000_000,
        ),
        Dataset(
            name="tinyshakespeare",
            url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
            filename="tinyshakespeare.txt",
            algorithm="sha256",
            digest="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
            splits=(("train", 0.9), ("val", 0.1)),
            size=1_115_394,
            local_names=("input.txt",),
        ),
    )
}


@dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenized dataset: its splits and what it takes to record and decode them."""

    name: str
    tokens: str  # "bytes" | "chars"
    vocab_size: int
    source: Path
    sha256: str  # of the source file, whatever the registry's own checksum is
    splits: dict[str, torch.Tensor]  # 'train', 'val' and optionally 'test'; 1-D token ids
    vocab: str | None = None  # the characters of the ids, for tokens="chars"

    def encode(self, text: str) -> torch.Tensor:
        if self.vocab is None:
            return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)
        index = {char: i for i, char in enumerate(self.vocab)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"{self.name}: characters {unknown[:10]} are not in the vocabulary")
        return torch.tensor([index[char] for char in text], dtype=_char_dtype(self.vocab_size))

    def decode(self, ids) -> str:
        ids = torch.as_tensor(ids).flatten().tolist()
        if self.vocab is None:
            return bytes(ids).decode("utf-8", errors="replace")
        return "".join(self.vocab[i] for i in ids)

    def info(self) -> dict:
        """The ``data`` record of run.json."""
        return {"name": self.name, "sha256": self.sha256, "tokens": self.tokens, "vocab_size": self.vocab_size}


def load_corpus(name: str, tokens: str = "bytes", data_dir: str | Path | None = None,
                cache_dir: str | Path | None = None) -> Corpus:
    """Find (or download) dataset ``name``, verify it, tokenize it and cut its splits."""
    if tokens not in TOKEN_KINDS:
        raise ValueError(f"unknown token kind {tokens!r}: choose one of {list(TOKEN_KINDS)}")
    if name in DATASETS:
        dataset = DATASETS[name]
        path, cached = _locate(dataset, data_dir, cache_dir)
        raw = _read(path)
        fix = f"replace it with a copy of {dataset.url}"
        if cached and hashlib.new(dataset.algorithm, raw).hexdigest() != dataset.digest.lower():
            print(f"{path} does not match the published {dataset.algorithm}: downloading it again", file=sys.stderr)
            try:
                _download(dataset, path, [])  # lands only once verified
                raw = _read(path)
            except FileNotFoundError as e:  # offline: the damaged copy stays unused
                fix += f" (downloading it again failed: {e})"
        _check(dataset, hashlib.new(dataset.algorithm, raw).hexdigest(), len(raw),
               f"{path} is not the published {dataset.name}", fix)
        splits = dataset.splits
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)} "
                             "or give the path of an existing text file")
        raw = _read(path)
        splits = LOCAL_FILE_SPLITS
    ids, vocab = _tokenize(raw, tokens, path)
    return Corpus(
        name=name,
        tokens=tokens,
        vocab_size=256 if vocab is None else len(vocab),
        source=path.resolve(),
        sha256=hashlib.sha256(raw).hexdigest(),
        splits=_cut(ids, splits),
        vocab=vocab,
    )


def get_batch(data: torch.Tensor, batch_size: int, seq_len: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random crops of seq_len+1 tokens -> (inputs, next-token targets), int64."""
    if data.dim() != 1:
        raise ValueError(f"get_batch needs a 1-D split, got shape {tuple(data.shape)}")
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size ({batch_size}) and seq_len ({seq_len}) must be at least 1")
    if len(data) < seq_len + 1:
        raise ValueError(f"split has {len(data)} tokens, fewer than seq_len + 1 = {seq_len + 1}: "
                         "use a shorter seq_len or a larger dataset")
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    crops = data[starts[:, None] + torch.arange(seq_len + 1)].long()
    return crops[:, :-1].contiguous(), crops[:, 1:].contiguous()


def fixed_batches(data: torch.Tensor, n_batches: int, batch_size: int, seq_len: int,
                  seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same crops for every architecture and run seed: the shared evaluation set."""
    generator = torch.Generator().manual_seed(seed)
    return [get_batch(data, batch_size, seq_len, generator) for _ in range(n_batches)]


def _locate(dataset: Dataset, data_dir, cache_dir) -> tuple[Path, bool]:
    """The dataset's file (local data dir, else cache, else downloaded into the cache) and whether
    it is the cache's."""
    data_dir = data_dir or os.environ.get("HARNESS_DATA_DIR")
    looked = []
    if data_dir:
        for filename in (dataset.filename, *dataset.local_names):
            path = Path(data_dir).expanduser() / filename
            if path.is_file():
                return path, False
            looked.append(path)
    cache_dir = cache_dir or os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "harness"
    cached = Path(cache_dir).expanduser() / dataset.filename
    if not cached.is_file():
        _download(dataset, cached, looked)
    return cached, True


def _download(dataset: Dataset, dest: Path, looked: list[Path]) -> None:
    """Download, unzip and verify in temporary files beside ``dest``; only a verified file lands."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []

    def temp_file() -> tuple[int, str]:
        fd, path = tempfile.mkstemp(dir=dest.parent, prefix=f".{dataset.filename}.", suffix=".part")
        temps.append(path)
        return fd, path

    try:
        fd, verified = temp_file()
        print(f"downloading {dataset.url} -> {dest}", file=sys.stderr)
        try:
            with os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(dataset.url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                shutil.copyfileobj(response, out, 1 << 20)
        except (OSError, http.client.HTTPException) as e:
            if full := disk_full(dest, e):
                raise full from e
            searched = ", ".join(str(p) for p in [*looked, dest])
            raise FileNotFoundError(
                f"could not download {dataset.url} ({e}) to get {dataset.filename!r}; looked for it in: "
                f"{searched}. Without network, put {dataset.filename} in a folder and set "
                f"HARNESS_DATA_DIR to it (or pass data_dir), e.g. HARNESS_DATA_DIR=/path/to/shared/data"
            ) from e
        if dataset.zip_member:
            fd, member = temp_file()
            try:
                with os.fdopen(fd, "wb") as out, zipfile.ZipFile(verified) as archive, \
                        archive.open(dataset.zip_member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (zipfile.BadZipFile, KeyError) as e:
                raise ValueError(f"{dataset.url} is not a zip holding {dataset.zip_member!r} ({e}); "
                                 f"nothing was kept. Put a verified {dataset.filename} in HARNESS_DATA_DIR") from e
            except OSError as e:
                raise disk_full(dest, e) or e
            verified = member
        with open(verified, "rb") as f:
            digest = hashlib.file_digest(f, dataset.algorithm).hexdigest()
        _check(dataset, digest, os.path.getsize(verified),
               f"the download of {dataset.url} is not the published {dataset.name}",
               f"nothing was kept in {dest.parent}. Put a verified {dataset.filename} in a folder and "
               "set HARNESS_DATA_DIR to it")
        os.replace(verified, dest)
        print(f"verified {dataset.algorithm} {digest}: {dest}", file=sys.stderr)
    finally:
        for path in temps:
            Path(path).unlink(missing_ok=True)


def _check(dataset: Dataset, digest: str, size: int, what: str, fix: str) -> None:
    if digest != dataset.digest.lower():
        expected_size = f", {dataset.size} bytes" if dataset.size is not None else ""
        raise ValueError(f"{what}: expected {dataset.algorithm} {dataset.digest}{expected_size}, "
                         f"got {digest}, {size} bytes; {fix}")


def _read(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read dataset file {path}: {e.strerror or e}") from e
    if not raw:
        raise ValueError(f"dataset file {path} is empty")
    return raw


def _char_dtype(vocab_size: int) -> torch.dtype:
    return torch.int16 if vocab_size <= torch.iinfo(torch.int16).max + 1 else torch.int32


def _tokenize(raw: bytes, tokens: str, path: Path) -> tuple[torch.Tensor, str | None]:
    """Token ids of the whole file, and the vocabulary for characters (sorted, as the seed did)."""
    if tokens == "bytes":
        return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()), None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}): use tokens='bytes'") from e
    # sorting code points sorts characters the way sorted(set(text)) does, without a Python loop
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    alphabet, ids = np.unique(code_points, return_inverse=True)
    vocab = "".join(map(chr, alphabet.tolist()))
    return torch.from_numpy(ids.reshape(-1)).to(_char_dtype(len(vocab))), vocab


def _cut(ids: torch.Tensor, splits: tuple[tuple[str, float], ...]) -> dict[str, torch.Tensor]:
    """Consecutive splits; boundaries floor(cumulative fraction * n), computed exactly."""
    out, start, cumulative = {}, 0, Fraction(0)
    for split, fraction in splits:
        cumulative += Fraction(str(fraction))
        end = int(cumulative * len(ids))
        out[split] = ids[start:end]
        start = end
    return out
