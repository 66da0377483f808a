"""The minimal video-DiT block of docs/integration.md: [B, L, H, D] activations reach
AdaSpaAttention as transposed views (no copy), and with nothing dropped the block
equals the same block with dense SDPA over the whole schedule."""

import re
from pathlib import Path

import torch
import torch.nn.functional as F

import adaspa
from adaspa.testing import assert_close

DOC = Path(__file__).resolve().parents[1] / "docs" / "integration.md"


def _documented_block():
    """Run the docs' ```python block that defines VideoDiTBlock; return its namespace."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    source = next(b for b in blocks if "class VideoDiTBlock" in b)
    namespace = {}
    exec(compile(source, str(DOC), "exec"), namespace)
    return namespace


DOCS = _documented_block()
VideoDiTBlock = DOCS["VideoDiTBlock"]
SCHEDULE = dict(warmup_steps=2, search_steps=(2, 4), block_size=16, text_len=16, text_position="first", min_seq_len=0)
PHASES = ["dense", "dense", "search", "sparse", "cached_search", "sparse"]


def test_documented_block_ran_the_schedule():
    assert [r.phase for r in DOCS["block"].attn.history] == PHASES


def test_attention_gets_transposed_views_without_a_copy(monkeypatch):
    block = VideoDiTBlock(dim=64, heads=4, config=adaspa.AdaSpaConfig(**SCHEDULE))
    seen = []
    original = adaspa.AdaSpaAttention.forward

    def spy(self, q, k, v, **kwargs):
        seen.append((q, k, v))
        return original(self, q, k, v, **kwargs)

    monkeypatch.setattr(adaspa.AdaSpaAttention, "forward", spy)
    projected = []
    block.qkv.register_forward_hook(lambda module, args, out: projected.append(out))  # [B, L, 3 * dim]
    with torch.no_grad():
        block(torch.randn(2, 16 + 2 * 64, 64), step=0)
    q, k, v = seen[0]
    assert q.shape == (2, 4, 144, 16)
    for t in (q, k, v):
        assert not t.is_contiguous()
        assert t.stride(2) == 3 * 64  # consecutive tokens are one [3 * dim] row of the projection apart
        assert t.untyped_storage().data_ptr() == projected[0].untyped_storage().data_ptr()
    assert k.data_ptr() - q.data_ptr() == 64 * q.element_size()


def test_nothing_dropped_equals_the_dense_block_over_the_schedule():
    torch.manual_seed(0)
    exact = adaspa.AdaSpaConfig(**SCHEDULE, sparsity=0.0, head_adaptive=False)
    sparse_block = VideoDiTBlock(dim=64, heads=4, config=exact).double()
    dense_block = VideoDiTBlock(dim=64, heads=4, config=exact).double()
    dense_block.load_state_dict(sparse_block.state_dict())
    dense_block.attn.forward = lambda q, k, v, step=None: F.scaled_dot_product_attention(q, k, v)
    x = torch.randn(2, 16 + 2 * 64, 64, dtype=torch.float64)
    with torch.no_grad():
        for step in range(6):
            got, want = sparse_block(x, step=step), dense_block(x, step=step)
            assert_close(got, want, name=f"step {step}")
            x = want
    assert [r.phase for r in sparse_block.attn.history] == PHASES


def test_sparse_block_differs_from_dense_after_the_search():
    torch.manual_seed(0)
    block = VideoDiTBlock(dim=64, heads=4, config=adaspa.AdaSpaConfig(**SCHEDULE, sparsity=0.9))
    x = torch.randn(1, 16 + 2 * 64, 64)
    with torch.no_grad():
        outs = [block(x, step=step) for step in range(4)]
        block.attn = adaspa.AdaSpaAttention(min_seq_len=10**9)  # dense at every step
        dense = block(x, step=0)
    assert torch.equal(outs[0], dense)
    assert float((outs[3] - dense).abs().max()) > 1e-4
    assert float(block.attn.history[-1].as_dict()["density"]) == 1.0
