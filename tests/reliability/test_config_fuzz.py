"""Config fuzzing: random values of the wrong type or range for every key of the training config
(every field of every section of ``Config``) either train a step or stop with a user error — the
library's ConfigError, FileNotFoundError for a data set or autoencoder that is not there, or
TrainingDiverged for a setting that blows the weights up — never another exception.

CI runs a fixed set of examples (``derandomize``); ``DIFFLAB_FUZZ_EXAMPLES=500`` runs more, at
random. Each example trains in a fresh temporary folder that is also the working directory, so a
relative path drawn for ``data.dataset`` or ``train.out_dir`` never reaches the repository."""

import dataclasses
import math
import os
import tempfile
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from difflab.training.config import Config, ConfigError, apply_override, config_from_dict
from difflab.training.divergence import TrainingDiverged
from difflab.training.trainer import train
from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

KEYS = [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
        for f in dataclasses.fields(getattr(Config(), section.name))]
# Valid but slow when huge: a run of 10⁹ steps, previews of 10⁹ images or of 10⁹ sampling steps.
NOT_HUGE = {"train.steps", "train.num_preview", "sample.steps"}
HUGE = 10**9

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-HUGE, -1, 0, 1, 2, 3, HUGE]),
    st.sampled_from([-1.5, -0.0, 0.5, 0.999, 1.0, 1.5, 1e30, math.nan, math.inf, -math.inf]),
    st.sampled_from(["", " ", "unet", "dit", "autoencoder_kl", "noisy_classifier", "digits", "emoji", "cosine",
                     "linear", "ddim", "v", "x0", "min_snr", "cosine", "1e-3", "auto", "cpu", "cuda", "test",
                     "no-such-dataset", "a\0b"]),
    st.text(max_size=6),
    st.lists(st.sampled_from([0, 1, 2, 0.5, "a", None]), max_size=3),
    st.dictionaries(st.sampled_from(["name", "num_steps", "model_channels", "channel_mult", "dim", "x"]),
                    st.sampled_from([0, 1, -1, 8, "a", None, 2.5, [1, 2]]), max_size=2),
)

# Values of the key's own type (but of any range), so that examples pass the type check and reach
# the range checks, the data, the model and the first step.
OF_TYPE = {
    "int": st.sampled_from([-HUGE, -1, 0, 1, 2, 3, 16, HUGE]),
    "float": st.sampled_from([-1.0, 0.0, 1e-12, 0.1, 0.5, 0.999, 1.0, 2.0, 1e30, math.nan, math.inf, -math.inf]),
    "str": st.sampled_from(["", " ", "a\0b", "unet", "dit", "noisy_classifier", "autoencoder_kl", "autoencoder_vq",
                            "digits", "emoji", "fashion-mnist", "no-such-dataset", "test", "train", "cosine",
                            "edm", "ve", "v", "x0", "epsilon", "min_snr", "p2", "cosine", "linear", "ddpm", "heun",
                            "karras", "leading", "auto", "cpu", "cuda:7", "mps", "DiT-S/2", "tiny", "digits"]),
    "bool": st.booleans(),
    "dict": st.dictionaries(st.sampled_from(["name", "num_steps", "model_channels", "channel_mult", "num_heads",
                                             "dim", "layers", "beta_start", "zero_terminal_snr", "x"]),
                            st.sampled_from([0, 1, -1, 8, 1000, "a", "small", None, 2.5, [1, 2], [], True]),
                            max_size=2),
    "tuple": st.lists(st.sampled_from([-1.0, 0.0, 0.5, 0.9, 0.999, 1.0, math.nan, "a"]), max_size=3),
}
TYPES = {f"{section.name}.{f.name}": f.type for section in dataclasses.fields(Config)
         for f in dataclasses.fields(getattr(Config(), section.name))}


def value_for(key):
    """(key, a value): half the time of the key's own type, half the time of any type."""
    own = st.one_of(*[OF_TYPE[t.strip()] for t in TYPES[key].split("|") if t.strip() in OF_TYPE])
    return st.tuples(st.just(key), st.booleans().flatmap(lambda of_type: own if of_type else VALUES))


OVERRIDES = st.lists(st.sampled_from(KEYS).flatmap(value_for), min_size=1, max_size=3)
USER_ERRORS = (ConfigError, FileNotFoundError, TrainingDiverged)


@contextmanager
def in_fresh_folder():
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(here)


def tiny_raw(out: str) -> dict:
    raw: dict = {}
    for item in TINY + ["train.steps=1", "train.sample_every=0", f"train.out_dir={out}"]:
        apply_override(raw, item)
    return raw


def _slow(key, value) -> bool:
    return key in NOT_HUGE and isinstance(value, int) and not isinstance(value, bool) and value > 3


@settings(max_examples=int(os.environ.get("DIFFLAB_FUZZ_EXAMPLES", 100)), deadline=None, database=None,
          derandomize="DIFFLAB_FUZZ_EXAMPLES" not in os.environ,
          phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no example database, no patch files
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(OVERRIDES)
def test_any_config_trains_a_step_or_is_a_user_error(overrides):
    if any(_slow(key, value) for key, value in overrides):
        return  # valid, and only slow
    with in_fresh_folder() as folder:
        raw = tiny_raw(os.path.join(folder, "run"))
        for key, value in overrides:
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        try:
            config = config_from_dict(raw)
            train(config, progress=False)
        except USER_ERRORS as err:
            assert str(err).strip(), f"{type(err).__name__} without a message"
            return
        assert os.path.isdir(os.path.join(config.train.out_dir, "checkpoint"))
