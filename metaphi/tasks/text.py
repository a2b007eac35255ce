"""Text as few-shot tasks: tokenizers, labelled texts and per-domain N-way K-shot sources.

Tokenisation happens in the task source: a task carries padded ``LongTensor`` token ids
``(B, L)`` with pad id 0, and encoders derive their mask from ``x != 0``. Two tokenizers:

- :class:`ByteTokenizer`: UTF-8 bytes, id = byte + 1 (1..256), then the entity markers
  (:data:`MARKERS`). It needs no training and covers every script, including scripts never seen
  in meta-training.
- :class:`BPETokenizer`: a byte-level BPE vocabulary learned with the ``tokenizers`` library
  on meta-train text only (so meta-test languages contribute nothing to it); id 0 is ``<pad>``.

A batch is padded to its longest text (at most ``max_len`` tokens), so short texts cost little:
support and query of one task share one length, tasks of a meta-batch may differ.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from .fewshot import FewShotOptions

PAD = 0
# Entity markers (relation classification): special tokens in every tokenizer.
MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
_MARKER_RE = re.compile("(" + "|".join(re.escape(m) for m in MARKERS) + ")")
BYTE_VOCAB = 257 + len(MARKERS)


class TextDataError(ValueError):
    """Text data that cannot become tasks (an empty text, a bad encoding, too few examples)."""


# -- tokenizers ---------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as ids 1..256 (id = byte + 1), entity markers as 257..260, pad 0."""

    kind = "bytes"
    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> np.ndarray:
        parts = []
        for piece in _MARKER_RE.split(text):
            if piece in MARKERS:
                parts.append(np.asarray([257 + MARKERS.index(piece)], dtype=np.int32))
            elif piece:
                parts.append(np.frombuffer(piece.encode("utf-8"), dtype=np.uint8).astype(np.int32)
                             + 1)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        ids = [int(i) for i in ids]
        out, buf = [], bytearray()
        for i in ids:
            if 1 <= i <= 256:
                buf.append(i - 1)
                continue
            if buf:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
            if i > 256:
                out.append(MARKERS[i - 257])
        if buf:
            out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)


class BPETokenizer:
    """A byte-level BPE vocabulary (``tokenizers``) with ``<pad>`` = 0, ``<unk>`` = 1 and the
    entity markers as special tokens. Build one with :meth:`train` (on meta-train text only) or
    :meth:`from_json`."""

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        self.vocab_size = int(tokenizer.get_vocab_size())

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int) -> "BPETokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", *MARKERS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def to_json(self) -> str:
        return self.tok.to_str()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tok.encode(text).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        return self.tok.decode([int(i) for i in ids if int(i) != PAD], skip_special_tokens=False)


Tokenizer = ByteTokenizer | BPETokenizer


def encode_all(tokenizer: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids of every text."""
    if isinstance(tokenizer, BPETokenizer):
        return tokenizer.encode_batch(texts)
    # One conversion of all the bytes, then views per text. Markers become the bytes
    # 0xF8..0xFB first, which never occur in UTF-8, and then their ids.
    encoded = [t.encode("utf-8") for t in texts]
    marked = any(b"[" in b for b in encoded)
    if marked:
        for i, m in enumerate(MARKERS):
            encoded = [b.replace(m.encode(), bytes([0xF8 + i])) for b in encoded]
    flat = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.int32) + 1
    if marked:
        special = flat >= 0xF8 + 1
        flat[special] = flat[special] - (0xF8 + 1) + 257
    ends = np.cumsum([len(b) for b in encoded])
    return np.split(flat, ends[:-1]) if len(encoded) else []


def pad_batch(seqs: Sequence[np.ndarray], max_len: int) -> Tensor:
    """Token id arrays as one ``LongTensor`` (n, L), L the longest (at most ``max_len``),
    truncated and padded with 0."""
    n = len(seqs)
    length = max(1, min(max_len, max((len(s) for s in seqs), default=1)))
    out = np.zeros((n, length), dtype=np.int64)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, :len(s)] = s
    return torch.from_numpy(out)


def bpe_cache_path(cache_dir: Path, texts: Sequence[str], vocab_size: int) -> Path:
    h = hashlib.sha256(str(vocab_size).encode())
    for t in texts:
        h.update(t.encode("utf-8", errors="surrogatepass") + b"\x00")
    return cache_dir / f"bpe_{vocab_size}_{h.hexdigest()[:16]}.json"


def learn_tokenizer(kind: str, train_texts: Sequence[str], vocab_size: int,
                    cache_dir: Path | None = None) -> Tokenizer:
    """The tokenizer of a source: bytes, or a BPE vocabulary learned on ``train_texts`` (the
    meta-train texts only), cached as JSON under ``cache_dir`` keyed by those texts."""
    if kind == "bytes":
        return ByteTokenizer()
    if kind != "bpe":
        raise ValueError(f"tokenizer must be 'bytes' or 'bpe', got {kind!r}")
    if cache_dir is not None:
        path = bpe_cache_path(cache_dir, train_texts, vocab_size)
        if path.is_file():
            try:
                return BPETokenizer.from_json(path.read_text(encoding="utf-8"))
            except Exception:  # a damaged cache file is rebuilt
                pass
    tok = BPETokenizer.train(train_texts, vocab_size)
    if cache_dir is not None:
        from ..loops.checkpoint import atomic_write_text

        try:
            atomic_write_text(path, tok.to_json())
        except OSError:
            pass
    return tok


# -- labelled texts -----------------------------------------------------------------------------
class TextData:
    """Labelled texts as token ids (a :class:`~metaphi.tasks.LabelledData`): ``get`` pads the
    asked items to their longest (at most ``max_len``). ``domains`` (optional) gives each item a
    domain id into ``domain_names``; ``texts`` keeps the raw strings (baselines, plots)."""

    def __init__(self, ids: Sequence[np.ndarray], labels: Sequence[int] | np.ndarray,
                 class_names: Sequence[str], max_len: int, *,
                 domains: Sequence[int] | np.ndarray | None = None,
                 domain_names: Sequence[str] = (), texts: Sequence[str] | None = None) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(ids) != len(self.labels):
            raise ValueError(f"{len(ids)} texts but {len(self.labels)} labels")
        lengths = np.asarray([min(len(s), max_len) for s in ids], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.flat = (np.concatenate([s[:max_len] for s in ids]).astype(np.int32)
                     if len(ids) else np.zeros(0, np.int32))
        self.class_names = list(class_names)
        self.max_len = int(max_len)
        self.domains = None if domains is None else np.asarray(domains, dtype=np.int64)
        self.domain_names = list(domain_names)
        self.texts = list(texts) if texts is not None else None

    def __len__(self) -> int:
        return len(self.labels)

    def seq(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i]:self.offsets[i + 1]]

    def get(self, indices: np.ndarray) -> Tensor:
        return pad_batch([self.seq(int(i)) for i in indices], self.max_len)


def check_texts(texts: Sequence[str], where: Sequence[str]) -> None:
    """Every text non-empty (after stripping whitespace); else an error naming each place."""
    empty = [w for t, w in zip(texts, where) if not t.strip()]
    if empty:
        shown = ", ".join(empty[:10]) + (f" and {len(empty) - 10} more" if len(empty) > 10 else "")
        raise TextDataError(f"{len(empty)} empty text(s): {shown}; remove them or fill them in")


def read_utf8(path: Path) -> str:
    """A file's text; a clear error naming the file and the position of a bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise TextDataError(f"{path}: not valid UTF-8 (byte {e.start}, line {line}: "
                            f"{data[e.start:e.start + 4]!r}); save the file as UTF-8") from None


# -- options shared by text sources -------------------------------------------------------------
class TextOptions(FewShotOptions):
    """``task:`` options shared by the text sources: how texts become token ids."""

    source: str
    tokenizer: Literal["bytes", "bpe"] = Field(
        "bytes", description="bytes: UTF-8 bytes (any script, no training); bpe: a byte-level "
        "BPE vocabulary learned on meta-train text only")
    bpe_vocab: int = Field(8000, ge=300, le=65000, description="tokenizer=bpe: vocabulary size")
    max_len: int = Field(256, ge=8, description="tokens kept per text (longer texts are cut)")
    data_dir: str | None = Field(None, description="the data folder (default: $METAPHI_DATA)")

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB if self.tokenizer == "bytes" else self.bpe_vocab

    def info(self):
        """Token tasks of ``n_way`` classes, padded to at most ``max_len`` tokens."""
        from .sources import TaskInfo

        return TaskInfo("classification", "tokens", (self.max_len,), n_way=self.n_way,
                        default_model="ngram_bag", vocab_size=self.vocab_size)
