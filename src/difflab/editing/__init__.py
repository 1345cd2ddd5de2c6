"""Text-driven image editing: prompt-to-prompt (Hertz et al. 2022) on cross-attention models.

``tokens`` (which key position of the cross-attention holds which token; the alignment of two
prompts), ``attention_control`` (:class:`PromptToPromptControl`, the controller that edits the
attention maps, and :func:`attention_controller`, which installs it for one call),
``local_blend`` (:class:`LocalBlend`: the edit kept where the chosen words are drawn) and
``prompt_to_prompt`` (:func:`prompt_to_prompt`, sources and edits sampled together).
DDIM inversion, the way to edit a real image, is :mod:`difflab.pipelines.inversion`.
"""

from .attention_control import PromptToPromptControl, attention_controller, has_cross_attention
from .local_blend import LocalBlend
from .prompt_to_prompt import MODES, prompt_to_prompt
from .tokens import TokenMap, prompt_tokens, token_map

__all__ = ["MODES", "LocalBlend", "PromptToPromptControl", "TokenMap", "attention_controller", "has_cross_attention",
           "prompt_to_prompt", "prompt_tokens", "token_map"]
