"""harness.data: registry resolution, checksums, the download cache, tokens and batches.

Downloads go to a local HTTP server the tests start, so nothing here needs the network.
"""

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import data
from tests.conftest import NEEDS_DATA, TINYSHAKESPEARE
from harness.files import DiskFull
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TEXT = b"To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may read the developer's data dir or write the developer's cache."""
    monkeypatch.delenv("HARNESS_DATA_DIR", raising=False)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "env-cache"))


@pytest.fixture
def server():
    """An HTTP server on 127.0.0.1 serving ``files`` (path -> bytes) and logging every request."""
    files, requests = {}, []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield SimpleNamespace(files=files, requests=requests, url=f"http://127.0.0.1:{httpd.server_port}")
    httpd.shutdown()
    httpd.server_close()


def register(monkeypatch, name, url, content, algorithm="sha256", zip_member=None, local_names=()):
    """Register a test dataset whose published digest is that of ``content``."""
    dataset = data.Dataset(
        name=name, url=url, filename=f"{name}.txt", algorithm=algorithm,
        digest=hashlib.new(algorithm, content).hexdigest(),
        splits=(("train", 0.8), ("val", 0.1), ("test", 0.1)),
        zip_member=zip_member, size=len(content), local_names=local_names,
    )
    monkeypatch.setitem(data.DATASETS, name, dataset)
    return dataset


def zipped(member, content):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, content)
    return buffer.getvalue()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.txt"


# --- the real TinyShakespeare, from HARNESS_DATA_DIR (or ../shared/data) -------------------------

@pytest.mark.parametrize("tokens, vocab_size, dtype", [("chars", 65, torch.int16), ("bytes", 256, torch.uint8)])
def test_tinyshakespeare_from_data_dir(monkeypatch, tmp_path, tokens, vocab_size, dtype):
    if TINYSHAKESPEARE is None:
        pytest.skip(NEEDS_DATA)
    monkeypatch.setenv("HARNESS_DATA_DIR", str(TINYSHAKESPEARE.parent))
    cache = tmp_path / "cache"
    corpus = data.load_corpus("tinyshakespeare", tokens=tokens, cache_dir=cache)
    assert corpus.vocab_size == vocab_size
    assert corpus.sha256 == TINYSHAKESPEARE_SHA256
    assert corpus.source == TINYSHAKESPEARE.resolve()
    assert set(corpus.splits) == {"train", "val"}
    assert len(corpus.splits["train"]) == 1_115_394 * 9 // 10 == 1_003_854
    assert len(corpus.splits["val"]) == 1_115_394 - 1_003_854
    assert all(split.dtype == dtype and split.dim() == 1 for split in corpus.splits.values())
    assert corpus.decode(corpus.splits["train"][:14]) == "First Citizen:"
    if tokens == "chars":
        assert corpus.vocab[:3] == "\n !" and corpus.vocab == "".join(sorted(corpus.vocab))
    assert corpus.info() == {"name": "tinyshakespeare", "sha256": TINYSHAKESPEARE_SHA256,
                             "tokens": tokens, "vocab_size": vocab_size}
    assert not cache.exists()  # found locally: no download was attempted


# --- download into the cache --------------------------------------------------------------------

def test_download_plain_text_lands_in_cache_once(monkeypatch, tmp_path, server):
    server.files["/toy.txt"] = TEXT
    register(monkeypatch, "toy", f"{server.url}/toy.txt", TEXT)
    cache = tmp_path / "cache"
    corpus = data.load_corpus("toy", cache_dir=cache)
    assert [p.name for p in cache.iterdir()] == ["toy.txt"]  # no temp file left beside it
    assert (cache / "toy.txt").read_bytes() == TEXT
    assert corpus.source == (cache / "toy.txt").resolve()
    assert corpus.sha256 == hashlib.sha256(TEXT).hexdigest()
    n = len(TEXT)
    assert [len(corpus.splits[s]) for s in ("train", "val", "test")] == [n * 8 // 10, n * 9 // 10 - n * 8 // 10,
                                                                      n - n * 9 // 10]
    assert corpus.decode(torch.cat([corpus.splits[s] for s in ("train", "val", "test")])) == TEXT.decode()
    assert server.requests == ["/toy.txt"]
    data.load_corpus("toy", tokens="chars", cache_dir=cache)
    assert server.requests == ["/toy.txt"]  # the second load came from the cache


def test_download_zip_extracts_and_verifies_member(monkeypatch, tmp_path, server):
    server.files["/toy.zip"] = zipped("toy", TEXT)
    register(monkeypatch, "toyzip", f"{server.url}/toy.zip", TEXT, algorithm="md5", zip_member="toy")
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    corpus = data.load_corpus("toyzip")
    cache = tmp_path / "cache"
    assert [p.name for p in cache.iterdir()] == ["toyzip.txt"]  # the member, not the zip
    assert (cache / "toyzip.txt").read_bytes() == TEXT
    assert corpus.sha256 == hashlib.sha256(TEXT).hexdigest()
    data.load_corpus("toyzip")
    assert server.requests == ["/toy.zip"]


@pytest.mark.parametrize("served, zip_member, message", [
    (TEXT.replace(b"question", b"answer!!"), None, "expected sha256"),
    (zipped("toy", TEXT[:-1]), "toy", "expected sha256"),
    (zipped("other", TEXT), "toy", "is not a zip holding 'toy'"),
    (TEXT, "toy", "is not a zip holding 'toy'"),
])
def test_wrong_download_leaves_nothing_in_cache(monkeypatch, tmp_path, server, served, zip_member, message):
    server.files["/toy"] = served
    register(monkeypatch, "toy", f"{server.url}/toy", TEXT, zip_member=zip_member)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=message) as error:
        data.load_corpus("toy", cache_dir=cache)
    assert f"{server.url}/toy" in str(error.value)
    assert list(cache.iterdir()) == []  # neither the final file nor a temporary one


@pytest.mark.parametrize("where", ["404", "refused"])
def test_unreachable_download_says_how_to_work_offline(monkeypatch, tmp_path, server, where):
    url = f"{server.url}/missing.txt" if where == "404" else closed_port_url()
    register(monkeypatch, "toy", url, TEXT)
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="HARNESS_DATA_DIR") as error:
        data.load_corpus("toy", cache_dir=cache)
    assert url in str(error.value) and "toy.txt" in str(error.value)
    assert list(cache.iterdir()) == []


# --- local data dir and cache -------------------------------------------------------------------

def test_data_dir_wins_over_cache_and_accepts_local_names(monkeypatch, tmp_path):
    register(monkeypatch, "toy", closed_port_url(), TEXT, local_names=("input.txt",))
    local = tmp_path / "local"
    local.mkdir()
    (local / "input.txt").write_bytes(TEXT)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.txt").write_bytes(b"corrupt")  # would fail its checksum if it were read
    corpus = data.load_corpus("toy", data_dir=local, cache_dir=cache)
    assert corpus.source == (local / "input.txt").resolve()


def test_cache_dir_from_env_is_used_without_network(monkeypatch, tmp_path):
    register(monkeypatch, "toy", closed_port_url(), TEXT)
    (tmp_path / "env-cache").mkdir()
    (tmp_path / "env-cache" / "toy.txt").write_bytes(TEXT)
    corpus = data.load_corpus("toy")
    assert corpus.source == (tmp_path / "env-cache" / "toy.txt").resolve()


@pytest.mark.parametrize("place", ["data_dir", "cache"])
def test_wrong_local_checksum_names_the_file(monkeypatch, tmp_path, place):
    dataset = register(monkeypatch, "toy", closed_port_url(), TEXT)
    folder = tmp_path / place
    folder.mkdir()
    bad = folder / "toy.txt"
    bad.write_bytes(TEXT[:-1])
    if place == "data_dir":
        monkeypatch.setenv("HARNESS_DATA_DIR", str(folder))
    else:
        monkeypatch.setenv("HARNESS_CACHE_DIR", str(folder))
    with pytest.raises(ValueError) as error:
        data.load_corpus("toy")
    message = str(error.value)
    assert str(bad) in message and dataset.digest in message
    assert hashlib.sha256(TEXT[:-1]).hexdigest() in message and "replace it" in message


def test_a_damaged_cached_copy_is_downloaded_again(monkeypatch, tmp_path, server, capsys):
    server.files["/toy.txt"] = TEXT
    register(monkeypatch, "toy", f"{server.url}/toy.txt", TEXT)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "toy.txt").write_bytes(TEXT[:-1] + b"?")  # a bit flip, a half-synced copy, ...
    corpus = data.load_corpus("toy", cache_dir=cache)
    assert corpus.sha256 == hashlib.sha256(TEXT).hexdigest()
    assert (cache / "toy.txt").read_bytes() == TEXT and [p.name for p in cache.iterdir()] == ["toy.txt"]
    assert server.requests == ["/toy.txt"]
    assert f"{cache / 'toy.txt'} does not match the published sha256: downloading it again" in capsys.readouterr().err


def test_a_damaged_cached_copy_is_refused_offline_naming_it(monkeypatch, tmp_path):
    dataset = register(monkeypatch, "toy", closed_port_url(), TEXT)
    cache = tmp_path / "cache"
    cache.mkdir()
    damaged = TEXT[:-1] + b"?"
    (cache / "toy.txt").write_bytes(damaged)
    with pytest.raises(ValueError) as error:
        data.load_corpus("toy", cache_dir=cache)
    message = str(error.value)
    assert f"{cache / 'toy.txt'} is not the published toy" in message
    assert dataset.digest in message and hashlib.sha256(damaged).hexdigest() in message
    assert f"downloading it again failed: could not download {dataset.url}" in message and "HARNESS_DATA_DIR" in message
    assert (cache / "toy.txt").read_bytes() == damaged and [p.name for p in cache.iterdir()] == ["toy.txt"]


def test_a_download_onto_a_full_disk_names_the_file_and_leaves_nothing(monkeypatch, server, small_fs):
    big = TEXT * 1000  # 1.7 MB into a 1 MiB cache
    server.files["/big.txt"] = big
    register(monkeypatch, "big", f"{server.url}/big.txt", big)
    with pytest.raises(DiskFull, match=rf"no space left on the device to write {small_fs / 'big.txt'} \(0.0 MiB free"):
        data.load_corpus("big", cache_dir=small_fs)
    assert list(small_fs.iterdir()) == []


# --- local text files, names and token kinds ----------------------------------------------------

def test_local_text_file_splits_90_5_5(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"abcdefghij" * 2)
    corpus = data.load_corpus(str(path), tokens="chars")
    assert [len(corpus.splits[s]) for s in ("train", "val", "test")] == [18, 1, 1]
    assert corpus.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert corpus.vocab == "abcdefghij" and corpus.vocab_size == 10
    assert corpus.splits["train"].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_bad_names_kinds_and_files(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'nope.txt'.*tinyshakespeare"):
        data.load_corpus("nope.txt")
    with pytest.raises(ValueError, match="unknown token kind 'words'"):
        data.load_corpus("tinyshakespeare", tokens="words")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(b"\xff\xfe\x00abc")
    with pytest.raises(ValueError, match=f"{binary}.*not UTF-8"):
        data.load_corpus(str(binary), tokens="chars")
    assert data.load_corpus(str(binary), tokens="bytes").vocab_size == 256
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=f"{empty} is empty"):
        data.load_corpus(str(empty))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ValueError, match=f"cannot read dataset file {binary}: Permission denied"):
        data.load_corpus(str(binary))


def test_registry_rejects_splits_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="must sum to 1"):
        data.Dataset(name="x", url="u", filename="x", algorithm="md5", digest="0",
                     splits=(("train", 0.9), ("val", 0.05)))


@pytest.mark.parametrize("tokens", ["chars", "bytes"])
def test_encode_decode_round_trip(tmp_path, tokens):
    path = tmp_path / "text.txt"
    path.write_text("héllo wörld\nthe end", encoding="utf-8")
    corpus = data.load_corpus(str(path), tokens=tokens)
    text = "wörld the héllo"
    assert corpus.decode(corpus.encode(text)) == text
    if tokens == "chars":
        assert len(corpus.encode(text)) == len(text)
        with pytest.raises(ValueError, match=r"\['z'\]"):
            corpus.encode("z")


# --- batches ------------------------------------------------------------------------------------

def test_get_batch_targets_are_inputs_shifted_and_inside_split():
    split = torch.arange(300, dtype=torch.int16)  # token == its position, so crops are visible
    x, y = data.get_batch(split, batch_size=64, seq_len=16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (64, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # y is x shifted by one token
    assert torch.equal(x, x[:, :1] + torch.arange(16))  # contiguous crops
    assert x.min() >= 0 and y.max() <= 299
    assert len(set(x[:, 0].tolist())) > 10  # random starts, not one crop repeated


def test_get_batch_same_seed_same_batch_and_uint8_widens():
    split = torch.randint(0, 256, (1000,), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    a = data.get_batch(split, 4, 32, torch.Generator().manual_seed(7))
    b = data.get_batch(split, 4, 32, torch.Generator().manual_seed(7))
    c = data.get_batch(split, 4, 32, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    assert a[0].dtype == torch.int64 and torch.equal(a[0][:, 1:], a[1][:, :-1])


def test_fixed_batches_are_identical_across_calls_and_global_rng():
    split = torch.arange(5000, dtype=torch.int32)
    torch.manual_seed(0)
    first = data.fixed_batches(split, n_batches=3, batch_size=2, seq_len=8, seed=123)
    torch.manual_seed(99)
    second = data.fixed_batches(split, n_batches=3, batch_size=2, seq_len=8, seed=123)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(first, second))
    assert not torch.equal(first[0][0], first[1][0])  # the batches differ from each other
    other = data.fixed_batches(split, n_batches=3, batch_size=2, seq_len=8, seed=124)
    assert not torch.equal(first[0][0], other[0][0])


def test_get_batch_too_short_split():
    exact = torch.arange(9)
    x, y = data.get_batch(exact, 3, 8, torch.Generator().manual_seed(0))  # only one crop fits
    assert torch.equal(x, torch.arange(8).expand(3, 8)) and torch.equal(y, x + 1)
    with pytest.raises(ValueError, match="split has 8 tokens, fewer than seq_len \\+ 1 = 9"):
        data.get_batch(torch.arange(8), 3, 8, torch.Generator().manual_seed(0))
