"""AdaSpaConfig: the paper's defaults, validation naming the field, the phase table."""

import pytest

from adaspa import AdaSpaConfig
from adaspa.config import DEFAULT_MIN_SEQ_LEN


def test_defaults_are_the_papers():
    c = AdaSpaConfig()
    assert (c.block_size, c.sparsity, c.warmup_steps, c.search_steps) == (64, 0.8, 10, (10, 30))
    assert (c.recall_threshold, c.head_adaptive, c.lse_cache, c.rowwise) == (0.8, True, True, True)
    assert (c.text_len, c.text_position, c.backend) == (0, "last", "auto")
    assert c.min_seq_len == DEFAULT_MIN_SEQ_LEN


def test_paper_schedule_over_50_steps():
    phases = [AdaSpaConfig().phase_at(s) for s in range(50)]
    assert phases == ["dense"] * 10 + ["search"] + ["sparse"] * 19 + ["cached_search"] + ["sparse"] * 19


def test_lse_cache_off_runs_fused_search_again():
    c = AdaSpaConfig(lse_cache=False, warmup_steps=2, search_steps=(2, 4, 5))
    assert [c.phase_at(s) for s in range(7)] == ["dense", "dense", "search", "sparse", "search", "search", "sparse"]


def test_dense_between_warmup_and_first_search():
    c = AdaSpaConfig(warmup_steps=1, search_steps=(3,))
    assert [c.phase_at(s) for s in range(5)] == ["dense", "dense", "dense", "search", "sparse"]


@pytest.mark.parametrize("field, value", [
    ("search_steps", (5, 30)),            # before the end of the default warm-up (10)
    ("search_steps", (12, 12)),
    ("search_steps", (30, 12)),
    ("search_steps", ()),
    ("search_steps", (-1,)),
    ("sparsity", -0.1),
    ("sparsity", 1.5),
    ("sparsity", float("nan")),
    ("recall_threshold", 2.0),
    ("warmup_steps", -1),
    ("text_len", -3),
    ("min_seq_len", -1),
    ("block_size", 48),
    ("block_size", 8),
    ("text_position", "middle"),
    ("backend", "cuda"),
])
def test_invalid_values_raise_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        AdaSpaConfig(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("block_size", 64.0), ("sparsity", "0.8"), ("warmup_steps", 2.5), ("head_adaptive", 1),
    ("lse_cache", None), ("search_steps", 10), ("search_steps", (10.0,)), ("text_len", True),
])
def test_wrong_types_raise_type_error_naming_the_field(field, value):
    with pytest.raises(TypeError, match=field):
        AdaSpaConfig(**{field: value})


def test_search_steps_list_is_stored_as_tuple_and_config_is_frozen():
    c = AdaSpaConfig(search_steps=[10, 20])
    assert c.search_steps == (10, 20)
    with pytest.raises(AttributeError):
        c.sparsity = 0.5


def test_replace_validates_and_rejects_unknown_fields():
    assert AdaSpaConfig().replace(sparsity=0.9).sparsity == 0.9
    with pytest.raises(ValueError, match="sparsity"):
        AdaSpaConfig().replace(sparsity=2.0)
    with pytest.raises(TypeError, match="spars"):
        AdaSpaConfig().replace(spars=0.5)


def test_phase_at_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        AdaSpaConfig().phase_at(-1)
