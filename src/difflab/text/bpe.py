"""CLIP's byte-level BPE tokenizer, in plain Python, reading a diffusers ``tokenizer/`` folder.

Byte-pair encoding (Sennrich et al. 2016, §3.1) over UTF-8 bytes, as GPT-2 (Radford et al. 2019,
§2.2) and CLIP (Radford et al. 2021, §2.4) use it. The steps are those of transformers'
``CLIPTokenizer`` (5.x, backed by ``tokenizers``), so the ids equal the ones Stable Diffusion
pipelines feed their text encoder (tested):

1. special tokens written in the text (``<|startoftext|>``, ``<|endoftext|>`` and the pad
   token) are cut out first and become their own ids;
2. clean: NFC normalisation, every run of whitespace → one space, lowercase (character by
   character, so no final ς). OpenAI's reference instead runs ``ftfy.fix_text`` (which also
   straightens quotes, splits ligatures, narrows full-width letters), unescapes HTML twice
   (``&amp;`` → ``&``) and lowercases with ``str.lower``; transformers does none of that, so
   neither do we unless ``openai_clean=True`` (then ``ftfy`` is needed);
3. split into words with CLIP's pattern ``'s|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^\\s\\p{L}\\p{N}]+``
   (letter runs, single digits, punctuation runs; whitespace is dropped);
4. write each word's UTF-8 bytes as printable characters (GPT-2's byte → unicode table, so no
   byte is ever unknown), mark its last character with ``</w>``, and merge adjacent pairs in the
   order of ``merges.txt`` (the lowest rank first) until no listed pair is left.

A text becomes ``<|startoftext|> tokens <|endoftext|>``, truncated to ``max_length`` with the end
token kept, and right-padded with the pad token: ``<|endoftext|>`` (49407) for Stable Diffusion 1.x,
``!`` (0) for 2.x, as their ``special_tokens_map.json`` say. Note that a pad token ``!`` is also
cut out of the text (step 1), so SD 2.x writes ``hello!`` as ``hello</w>`` ``!`` (id 0), not
``!</w>``: transformers does the same, and the model was used that way.

Without a tokenizer folder, :meth:`ClipTokenizer.from_open_clip` builds the same 49 408-token
vocabulary from the BPE file shipped inside the ``open-clip-torch`` wheel.

Prompt weights (AUTOMATIC1111's syntax): ``(word)`` multiplies the weight of its tokens by 1.1,
``[word]`` divides it by 1.1, ``(words:1.3)`` sets a factor, brackets nest, and ``\\(`` writes a
literal bracket; :func:`parse_prompt_weights` splits a prompt into (chunk, weight) pairs and
:meth:`ClipTokenizer.weighted` gives each token its chunk's weight.
"""

from __future__ import annotations

import gzip
import html
import json
import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import Tensor

from .encoding import check_max_length, pad_token_ids

START, END = "<|startoftext|>", "<|endoftext|>"
WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""  # step 3
OPEN_CLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"
OPEN_CLIP_MERGES = 48894  # 49408 tokens = 2 · 256 byte tokens + merges + 2 special tokens
PAD_CONVENTIONS = {"end": END, "zero": "!"}  # SD 1.x pads with the end token, SD 2.x with "!" (id 0)
MISSING_OPEN_CLIP = ("the CLIP tokenizer has no vocab.json / merges.txt to read and the package open-clip-torch, "
                     "whose BPE file would do, is not installed: pip install --no-deps open-clip-torch")


@lru_cache
def _regex():
    # The ``regex`` package (a transformers dependency) knows Unicode classes such as \p{L}; ``re`` does not.
    try:
        import regex
    except ModuleNotFoundError:
        message = "the CLIP tokenizer needs the package regex: pip install regex"
        raise ModuleNotFoundError(message, name="regex") from None
    return regex


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte → a printable character (printable Latin-1 bytes map to themselves,
    the others to U+0100 onwards), so BPE never sees whitespace or control characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def _lowercase(text: str) -> str:
    # Character by character, as the ``tokenizers`` Lowercase normaliser: no final-sigma rule.
    return "".join(c.lower() for c in text)


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer (see the module docstring).

    Args:
        vocab: the tokens; a token's id is its position.
        merges: the merge rules, highest priority first (``merges.txt`` without its header).
        pad_token: the token written at padded positions (``"<|endoftext|>"`` or ``"!"``).
        model_max_length: the default ``max_length`` (77: CLIP's positions).
        openai_clean: also run ``ftfy.fix_text`` and unescape HTML, as OpenAI's reference does
            (and transformers does not).
    """

    def __init__(self, vocab: Sequence[str], merges: Sequence[tuple[str, str]], pad_token: str = END,
                 model_max_length: int = 77, openai_clean: bool = False):
        self.vocab = list(vocab)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        if len(self.ids) != len(self.vocab):
            raise ValueError("the CLIP vocabulary lists a token twice")
        missing = [t for t in (START, END, pad_token) if t not in self.ids]
        if missing:
            raise ValueError(f"the CLIP vocabulary lacks the token(s) {missing}; is it a CLIP vocab.json?")
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.base_size = len(self.vocab)  # words learned later (text/inversion.py) get ids from here
        self.pad_token, self.model_max_length, self.openai_clean = pad_token, model_max_length, openai_clean
        self.start_id, self.end_id, self.pad_id = self.ids[START], self.ids[END], self.ids[pad_token]
        # The names text/inversion.py reads: CLIP's unknown token is its end token.
        self.cls_id, self.sep_id, self.unk_id = self.start_id, self.end_id, self.end_id
        self.special = sorted({START, END, pad_token}, key=len, reverse=True)
        self._special_pattern = re.compile("(" + "|".join(map(re.escape, self.special)) + ")")
        self._word_pattern, self._whitespace = _regex().compile(WORD_PATTERN), _regex().compile(r"\s+")
        self._byte_chars = bytes_to_unicode()
        self._cache: dict[str, list[int]] = {}
        self._added_pattern: tuple[tuple[str, ...], object] = ((), None)

    # ------------------------------------------------------------------ files

    @classmethod
    def from_folder(cls, folder: str | Path, openai_clean: bool = False) -> ClipTokenizer:
        """Read a diffusers ``tokenizer/`` folder: ``vocab.json``, ``merges.txt``, and the pad token
        and length of ``tokenizer_config.json`` / ``special_tokens_map.json`` when present.

        As transformers, ``special_tokens_map.json`` overrides ``tokenizer_config.json`` unless the
        latter lists ``added_tokens_decoder`` (the newer format, which makes the map a leftover).

        Raises:
            FileNotFoundError: ``vocab.json`` or ``merges.txt`` is missing.
            ValueError: the files do not describe a CLIP vocabulary.
        """
        folder = Path(folder)
        missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
        if missing:
            raise FileNotFoundError(f"the CLIP tokenizer folder {folder} lacks {missing}")
        ids = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        vocab = sorted(ids, key=ids.get)
        if [ids[t] for t in vocab] != list(range(len(vocab))):
            raise ValueError(f"{folder / 'vocab.json'} does not number its tokens 0, 1, 2, ...; is it a CLIP vocab?")
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split()) for line in lines if line and not line.startswith("#version")]
        if any(len(pair) != 2 for pair in merges):
            raise ValueError(f"{folder / 'merges.txt'} has a line that is not two tokens separated by a space")
        settings = _read_json(folder / "tokenizer_config.json")
        if "added_tokens_decoder" not in settings:
            settings |= _read_json(folder / "special_tokens_map.json")
        pad = settings.get("pad_token") or END
        pad = pad["content"] if isinstance(pad, dict) else pad
        max_length = settings.get("model_max_length", 77)
        max_length = max_length if isinstance(max_length, int) and max_length <= 10**6 else 77  # "no limit" → CLIP's
        return cls(vocab, merges, pad_token=pad, model_max_length=max_length, openai_clean=openai_clean)

    @classmethod
    def from_open_clip(cls, pad: str = "end", openai_clean: bool = False) -> ClipTokenizer:
        """OpenAI CLIP's vocabulary, built from the BPE file of the ``open-clip-torch`` wheel.

        The package is only located (``find_spec``), never imported: importing it pulls in
        torchvision. ``pad="end"`` pads with ``<|endoftext|>`` (SD 1.x), ``"zero"`` with ``!``
        (id 0, SD 2.x).

        Raises:
            ModuleNotFoundError: open-clip-torch is not installed (the message says how to install it).
        """
        if pad not in PAD_CONVENTIONS:
            raise ValueError(f"pad={pad!r} is unknown; use 'end' (SD 1.x) or 'zero' (SD 2.x)")
        spec = find_spec("open_clip")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(MISSING_OPEN_CLIP, name="open_clip")
        path = Path(next(iter(spec.submodule_search_locations))) / OPEN_CLIP_BPE
        if not path.is_file():
            raise FileNotFoundError(f"open-clip-torch is installed but {path} is missing; reinstall it: "
                                    f"pip install --force-reinstall --no-deps open-clip-torch")
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : OPEN_CLIP_MERGES + 1]]  # line 0 is a header
        byte_chars = list(bytes_to_unicode().values())
        vocab = [*byte_chars, *(c + "</w>" for c in byte_chars), *("".join(m) for m in merges), START, END]
        return cls(vocab, merges, pad_token=PAD_CONVENTIONS[pad], openai_clean=openai_clean)

    def save(self, folder: str | Path) -> Path:
        """Write ``vocab.json``, ``merges.txt``, ``special_tokens_map.json`` and ``tokenizer_config.json``,
        a folder that ``transformers.CLIPTokenizer.from_pretrained`` and :meth:`from_folder` read.

        Learned words (textual inversion) are not written: they live in their embedding file.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab = {token: i for i, token in enumerate(self.vocab[: self.base_size])}
        (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges = sorted(self.ranks, key=self.ranks.get)
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                           encoding="utf-8")
        special = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": self.pad_token}
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
        config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": self.model_max_length, **special}
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        return folder

    # ------------------------------------------------------------------ tokenizing

    def __len__(self) -> int:
        return len(self.vocab)

    def normalize(self, text: str) -> str:
        """Step 2 of the module docstring."""
        if self.openai_clean:  # OpenAI's basic_clean and whitespace_clean, word for word
            return " ".join(html.unescape(html.unescape(_fix_text(text))).split()).lower()
        text = self._whitespace.sub(" ", unicodedata.normalize("NFC", text))
        return _lowercase(text)

    def bpe(self, word: str) -> list[int]:
        """Step 4: the ids of one word (a match of step 3), merged by rank; cached."""
        if word in self._cache:
            return self._cache[word]
        symbols = [self._byte_chars[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):  # every occurrence of the pair, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        ids = [self.ids.get(s, self.unk_id) for s in symbols]
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _added_words(self):
        # Words learned by textual inversion (text/inversion.py fills ``self.added``): matched as
        # whole words after cleaning, before CLIP's split (which would cut "cat2" in two).
        words = tuple(sorted(getattr(self, "added", {}), key=len, reverse=True))
        if words != self._added_pattern[0]:
            pattern = None
            if words:
                alternatives = "|".join(map(re.escape, words))
                pattern = _regex().compile(rf"(?<![\p{{L}}\p{{N}}])({alternatives})(?![\p{{L}}\p{{N}}])")
            self._added_pattern = (words, pattern)
        return self._added_pattern[1]

    def encode(self, text: str) -> list[int]:
        """The ids of ``text`` without the start and end tokens, and untruncated."""
        ids = []
        added = self._added_words()
        for part in self._special_pattern.split(text):
            if part in self.special:
                ids.append(self.ids[part])
                continue
            pieces = added.split(self.normalize(part)) if added else [self.normalize(part)]
            for i, piece in enumerate(pieces):
                if i % 2:  # a learned word: its own ids
                    ids.extend(self.ids[name] for name in self.added[piece])
                else:
                    for word in self._word_pattern.findall(piece):
                        ids.extend(self.bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The cleaned text of ``ids`` without start and end tokens (learned words as their names)."""
        byte_of = {c: b for b, c in self._byte_chars.items()}
        tokens = [self.vocab[i] if i < self.base_size else self.vocab[i] + "</w>" for i in ids
                  if i not in (self.start_id, self.end_id)]
        words = "".join(tokens).split("</w>")
        return " ".join(bytes(byte_of[c] for c in w).decode("utf-8", errors="replace") for w in words if w)

    def _check_length(self, max_length: int) -> int:
        return check_max_length(max_length, limit=10**9, minimum=2,
                                what="a CLIP tokenizer (<|startoftext|> and <|endoftext|> included)")

    def __call__(self, texts: Sequence[str], max_length: int | None = None,
                 padding: str = "max_length") -> tuple[Tensor, Tensor]:
        """Token ids ``<|startoftext|> tokens <|endoftext|> pad…`` and the mask of real tokens, (N, L).

        A text with more than ``max_length − 2`` tokens is truncated (its end token kept), as
        transformers does with ``truncation=True``. See
        :func:`~difflab.text.encoding.pad_token_ids` for ``padding``.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, e.g. tokenizer([prompt], max_length=77)")
        max_length = self._check_length(self.model_max_length if max_length is None else max_length)
        sequences = [[self.start_id, *self.encode(text)[: max_length - 2], self.end_id] for text in texts]
        return pad_token_ids(sequences, self.pad_id, max_length, padding)

    def weighted(self, texts: Sequence[str], max_length: int | None = None,
                 padding: str = "max_length") -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`__call__`, with prompt weights: also the weight of each token, float (N, L).

        Each text is parsed by :func:`parse_prompt_weights`; a chunk's tokens get its weight, the
        start, end and padding tokens 1. The brackets themselves are not tokenized.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, e.g. tokenizer.weighted([prompt], max_length=77)")
        max_length = self._check_length(self.model_max_length if max_length is None else max_length)
        sequences, weight_lists = [], []
        for text in texts:
            ids, weights = [], []
            for chunk, weight in parse_prompt_weights(text):
                chunk_ids = self.encode(chunk)
                ids.extend(chunk_ids)
                weights.extend([weight] * len(chunk_ids))
            sequences.append([self.start_id, *ids[: max_length - 2], self.end_id])
            weight_lists.append([1.0, *weights[: max_length - 2], 1.0])
        input_ids, mask = pad_token_ids(sequences, self.pad_id, max_length, padding)
        weights = torch.ones(input_ids.shape, dtype=torch.float32)
        for row, values in enumerate(weight_lists):
            weights[row, : len(values)] = torch.tensor(values)
        return input_ids, mask, weights


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _fix_text(text: str) -> str:
    try:
        import ftfy
    except ModuleNotFoundError:
        raise ModuleNotFoundError("openai_clean=True runs ftfy.fix_text as OpenAI's CLIP does: pip install ftfy",
                                  name="ftfy") from None
    return ftfy.fix_text(text)


# ---------------------------------------------------------------------- prompt weights

_WEIGHT_TOKENS = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")
UP, DOWN = 1.1, 1 / 1.1


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt written in AUTOMATIC1111's emphasis syntax into (chunk, weight) pairs.

    ``(a)`` → weight 1.1, ``((a))`` → 1.21, ``[a]`` → 1/1.1, ``(a:1.5)`` → 1.5 (the number replaces
    the 1.1 of its bracket), ``\\(`` and ``\\)`` → literal brackets. An unclosed bracket applies
    to the rest of the prompt; a stray closing one is ignored. Adjacent chunks of equal weight are
    merged; the empty prompt gives ``[("", 1.0)]``.
    """
    chunks: list[list] = []
    stack: list[tuple[str, int]] = []  # open brackets: kind and the index of their first chunk

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _WEIGHT_TOKENS.finditer(text):
        token, number = match.group(0), match.group(1)
        if token.startswith("\\"):
            chunks.append([token[1], 1.0])
        elif token in "([":
            stack.append((token, len(chunks)))
        elif number is not None and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], float(number))
        elif token == ")" and stack and stack[-1][0] == "(":
            scale(stack.pop()[1], UP)
        elif token == "]" and stack and stack[-1][0] == "[":
            scale(stack.pop()[1], DOWN)
        elif number is not None:  # ":1.5)" without its "(": plain text
            chunks.append([token, 1.0])
        elif token not in ")]":
            chunks.append([token, 1.0])
    for kind, start in reversed(stack):  # unclosed brackets
        scale(start, UP if kind == "(" else DOWN)
    merged: list[tuple[str, float]] = []
    for chunk, weight in chunks:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + chunk, weight)
        else:
            merged.append((chunk, weight))
    return merged or [("", 1.0)]
