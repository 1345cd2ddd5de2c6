"""BERT's uncased WordPiece tokenizer, in plain Python, reading a ``vocab.txt``.

The steps are those of BERT (Devlin et al. 2019, §A.2; the reference ``tokenization.py``) in the
order Hugging Face's fast ``BertNormalizer`` / ``BertPreTokenizer`` / ``WordPiece`` apply them,
so the ids equal ``BertTokenizerFast``'s (tested):

1. clean: drop NUL, U+FFFD and control, format and private-use characters; every whitespace
   character becomes a space;
2. put spaces around CJK ideographs, so each is a word of its own;
3. strip accents (NFD, then drop the combining marks, category Mn) and lowercase;
4. split on whitespace, and split every punctuation character off as a word of its own;
5. WordPiece (Wu et al. 2016, §4.1): greedy longest-match-first over the vocabulary, pieces after
   the first carrying the ``##`` prefix; a word that cannot be covered, or is longer than 100
   characters, becomes ``[UNK]`` as a whole.

Special tokens written in the text (``[MASK]``, ``[SEP]``, ...) are kept whole, as the reference
does. A text becomes ``[CLS] pieces [SEP]``, truncated to ``max_length`` and right-padded with
``[PAD]``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from .encoding import check_max_length, pad_token_ids

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _is_control(char: str) -> bool:
    # Control, format and private-use characters (Cc, Cf, Co), as the fast tokenizer's
    # ``is_other``; unassigned code points (Cn) are kept and end up as [UNK].
    return char not in "\t\n\r" and unicodedata.category(char) in ("Cc", "Cf", "Co")


def _is_punctuation(char: str) -> bool:
    # BERT counts every non-alphanumeric ASCII character ("$", "^", "`") as punctuation, although
    # Unicode puts some of them among the symbols.
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(cp: int) -> bool:
    """The CJK Unified Ideographs blocks, as BERT's ``_is_chinese_char`` lists them."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


class WordPieceTokenizer:
    """BERT's WordPiece tokenizer over a vocabulary list (the lines of ``vocab.txt``).

    Args:
        vocab: the tokens; a token's id is its position.
        lowercase: lowercase the text (uncased models).
        strip_accents: drop combining accents; ``None`` means "as ``lowercase``" (BERT's rule).
        max_chars_per_word: longer words become ``[UNK]``.
    """

    def __init__(self, vocab: Sequence[str], lowercase: bool = True, strip_accents: bool | None = None,
                 max_chars_per_word: int = 100):
        self.vocab = list(vocab)
        self.ids = {token: i for i, token in enumerate(self.vocab)}
        missing = [t for t in SPECIAL_TOKENS if t not in self.ids]
        if missing:
            raise ValueError(f"the WordPiece vocabulary lacks the special token(s) {missing}; "
                             f"is it a BERT vocab.txt?")
        self.lowercase = lowercase
        self.strip_accents = lowercase if strip_accents is None else strip_accents
        self.max_chars_per_word = max_chars_per_word
        self.pad_id, self.unk_id, self.cls_id, self.sep_id = (self.ids[t] for t in SPECIAL_TOKENS[:4])
        self._special = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_TOKENS) + ")")

    @classmethod
    def from_folder(cls, folder: str | Path) -> WordPieceTokenizer:
        """Read ``vocab.txt`` and, when present, the casing options of ``tokenizer_config.json``."""
        folder = Path(folder)
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":  # the file's final newline
            vocab.pop()
        options = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
            options["lowercase"] = config.get("do_lower_case", True)
            options["strip_accents"] = config.get("strip_accents")
        return cls(vocab, **options)

    def normalize(self, text: str) -> str:
        """Steps 1–3 of the module docstring."""
        chars = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or _is_control(char):
                continue
            if char.isspace():
                chars.append(" ")
            elif _is_cjk(cp):
                chars.extend((" ", char, " "))
            else:
                chars.append(char)
        text = "".join(chars)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        # Character by character, as the reference: str.lower() would turn a word-final Σ into ς.
        return "".join(c.lower() for c in text) if self.lowercase else text

    def split_words(self, text: str) -> list[str]:
        """Step 4: whitespace-separated words, with every punctuation character split off."""
        words = []
        for chunk in text.split():
            start = 0
            for i, char in enumerate(chunk):
                if _is_punctuation(char):
                    if i > start:
                        words.append(chunk[start:i])
                    words.append(char)
                    start = i + 1
            if start < len(chunk):
                words.append(chunk[start:])
        return words

    def wordpiece(self, word: str) -> list[str]:
        """Step 5: the greedy longest-match-first pieces of one word, or ``["[UNK]"]``."""
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            for end in range(len(word), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    break
            else:
                return ["[UNK]"]
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """The tokens of ``text`` without ``[CLS]`` / ``[SEP]``."""
        tokens = []
        for part in self._special.split(text):
            if part in SPECIAL_TOKENS:
                tokens.append(part)
                continue
            for word in self.split_words(self.normalize(part)):
                added = getattr(self, "added", {}).get(word)  # a learned word (text/inversion.py): its own tokens
                tokens.extend(added if added else self.wordpiece(word))
        return tokens

    def __call__(self, texts: Sequence[str], max_length: int, padding: str = "max_length") -> tuple[Tensor, Tensor]:
        """Token ids ``[CLS] tokens [SEP] [PAD]…`` and the mask of real tokens, both (N, L).

        A text with more than ``max_length − 2`` tokens is truncated (its ``[SEP]`` kept).
        See :func:`~difflab.text.encoding.pad_token_ids` for ``padding``.
        """
        if isinstance(texts, str):
            raise TypeError("pass a list of texts, e.g. tokenizer([caption], max_length=77)")
        check_max_length(max_length, limit=10**9, minimum=2, what="a WordPiece tokenizer ([CLS] and [SEP])")
        sequences = []
        for text in texts:
            ids = [self.ids[t] for t in self.tokenize(text)][: max_length - 2]
            sequences.append([self.cls_id, *ids, self.sep_id])
        return pad_token_ids(sequences, self.pad_id, max_length, padding)
