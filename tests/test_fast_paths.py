"""The fast inference paths compute what the plain ones do: in-place ResBlock ops at inference,
the fused attention kernel, the channels-last first-layer gather, channels-last convolutions."""
import torch
import torch.nn.functional as F

from arbscale_core.implicit_decoder import decode_bands
from arbscale_core.layers import Attention, ResBlock


def test_resblock_in_place_at_inference_equals_autograd_forward():
    torch.manual_seed(0)
    block = ResBlock(8, 8, emb_ch=12).eval()
    x, emb = torch.randn(2, 8, 9, 11), torch.randn(2, 12)
    with torch.no_grad():
        fast = block(x, emb)
    slow = block(x, emb)  # grad enabled: no in-place ops
    assert torch.allclose(fast, slow.detach(), atol=1e-6)
    x_before = x.clone()
    with torch.no_grad():
        block(x, emb)
    assert torch.equal(x, x_before)  # the input is never overwritten


def test_attention_matches_the_textbook_formula():
    torch.manual_seed(0)
    attn = Attention(16, 4).eval()
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        q, k, v = attn.qkv(attn.norm(x)).view(2, 3, 4, 4, 42).unbind(1)  # [B, heads, d, n]
        weights = torch.softmax(q.transpose(-1, -2) @ k / 2.0, dim=-1)  # sqrt(d) = 2
        ref = x + attn.proj((weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(2, 16, 6, 7))
        assert torch.allclose(attn(x), ref, atol=1e-5)


def test_decoder_gathers_the_same_from_either_layout(sr_model):
    torch.manual_seed(0)
    first = torch.randn(1, sr_model.config.mlp_hidden[0], 7, 9)
    a = torch.cat([b for _, _, b in decode_bands(sr_model.implicit, first, 20, 23)], 2)
    b = torch.cat([b for _, _, b in decode_bands(sr_model.implicit, first.contiguous(memory_format=torch.channels_last),
                                                 20, 23)], 2)
    assert torch.allclose(a, b, atol=1e-6)
    assert not first.is_contiguous(memory_format=torch.channels_last)  # the caller's tensor is left as it was


def test_channels_last_input_changes_nothing(sr_model):
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 20) * 2 - 1
    with torch.no_grad():
        a = sr_model.encode(x)
        b = sr_model.encode(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-6)
    assert F.mse_loss(a, b) < 1e-12
