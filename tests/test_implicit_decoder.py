import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arbscale_core.implicit_decoder import axis_neighbours, make_coord, output_bands

from conftest import micro_model


@given(n=st.integers(1, 500), length=st.floats(0.5, 300))
def test_make_coord_pixel_centres(n, length):
    c = make_coord(n, length, dtype=torch.float64)
    assert c.shape == (n,)
    assert torch.all(c > 0) and torch.all(c < length)
    assert torch.allclose(c[0] + c[-1], torch.tensor(length, dtype=torch.float64))  # symmetric
    if n > 1:
        assert torch.allclose(c.diff(), torch.full((n - 1,), length / n, dtype=torch.float64))


@given(size=st.integers(1, 64), pos=st.lists(st.floats(0, 1), min_size=1, max_size=50))
def test_axis_neighbours_weights_interpolate(size, pos):
    p = torch.tensor(pos, dtype=torch.float64) * size
    idx, rel, w = axis_neighbours(p, size)
    assert idx.min() >= 0 and idx.max() <= size - 1
    assert torch.all(w >= 0)
    assert torch.allclose(w.sum(0), torch.ones_like(p))
    assert torch.allclose(rel, p - (idx + 0.5))
    # Inside the outermost cell centres, the weights are linear interpolation: they reproduce pos.
    inside = (p >= 0.5) & (p <= size - 0.5)
    recon = (w * (idx + 0.5)).sum(0)
    assert torch.allclose(recon[inside], p[inside])


def test_output_bands_cover_rows():
    bands = list(output_bands(10, 7, chunk=20))
    assert bands[0] == (0, 2) and bands[-1] == (8, 10)
    assert [b for a, b in bands][:-1] == [a for a, b in bands][1:]
    assert list(output_bands(3, 1000, chunk=5)) == [(0, 1), (1, 2), (2, 3)]  # at least one row
    with pytest.raises(ValueError, match="chunk"):
        list(output_bands(3, 3, chunk=0))


def naive_liif(model, latent, height, width):
    """LIIF as in its paper/code: unfold features, build [feat, rel, cell] per query and neighbour,
    run the full MLP (first layer as one Linear), area-weighted ensemble."""
    feat = model.feature_decoder(latent / model.config.latent_scale)
    b, c, h, w = feat.shape
    conv = model.implicit.first_feat
    k = conv.kernel_size[0]
    unfolded = F.unfold(feat, k, padding=k // 2).view(b, c * k * k, h, w)
    w_feat = conv.weight.reshape(conv.out_channels, -1)
    w_coord = model.implicit.first_coord.weight
    first_w = torch.cat([w_feat, w_coord], dim=1)
    ys = make_coord(height, h, dtype=torch.float64)
    xs = make_coord(width, w, dtype=torch.float64)
    out = torch.zeros(b, 3, height, width, dtype=torch.float64)
    total = torch.zeros(height, width, dtype=torch.float64)
    for dy in (-0.5, 0.5):
        for dx in (-0.5, 0.5):
            iy = torch.floor(ys + dy).clamp(0, h - 1).long()
            ix = torch.floor(xs + dx).clamp(0, w - 1).long()
            ry, rx = ys[:, None] - (iy[:, None] + 0.5), xs[None, :] - (ix[None, :] + 0.5)
            # opposite-corner area (LIIF's swap), from the diagonal neighbour's offsets
            oy = torch.floor(ys - dy).clamp(0, h - 1)
            ox = torch.floor(xs - dx).clamp(0, w - 1)
            area = ((ys[:, None] - (oy[:, None] + 0.5)).abs() * (xs[None, :] - (ox[None, :] + 0.5)).abs())
            f = unfolded[:, :, iy][:, :, :, ix].permute(0, 2, 3, 1).double()
            cell = torch.tensor([h / height, w / width], dtype=torch.float64).expand(height, width, 2)
            inp = torch.cat([f, torch.stack([ry.expand(height, width), rx.expand(height, width)], -1)
                             .expand(b, -1, -1, -1), cell.expand(b, -1, -1, -1)], -1)
            hid = inp @ first_w.double().T + conv.bias.double()
            rgb = model.implicit.mlp.double()(hid)
            model.implicit.mlp.float()
            out += (rgb * area[None, :, :, None]).permute(0, 3, 1, 2)
            total = total + area
    return (out / total).float()


@pytest.mark.parametrize("size", [(7, 13), (20, 9), (3, 3)])
def test_fast_decoder_equals_naive_liif(size):
    model = micro_model("sr")
    latent = torch.randn(2, 4, 5, 6)
    with torch.no_grad():
        fast = model.decode(latent, *size, chunk=37)
        ref = naive_liif(model, latent, *size)
    assert fast.shape == (2, 3, *size)
    assert torch.allclose(fast, ref, atol=2e-5), (fast - ref).abs().max()


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), chunk=st.integers(1, 2000))
def test_decode_shapes_and_chunk_invariance(h, w, chunk):
    model = micro_model("sr")
    latent = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model.decode(latent, h, w, chunk=h * w)
        parts = model.decode(latent, h, w, chunk=chunk)
    assert whole.shape == (1, 3, h, w)
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)


def test_bf16_decode_close_to_fp32():
    model = micro_model("sr")
    latent = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        a = model.decode(latent, 40, 30)
        b = model.decode(latent, 40, 30, autocast_dtype=torch.bfloat16)
    assert b.dtype == torch.float32
    assert (a - b).abs().max() < 0.05


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 30), w=st.integers(1, 60), chunk=st.integers(1, 2000), block=st.integers(1, 300))
def test_query_blocks_inside_bands_change_nothing(h, w, chunk, block):
    """Bands are computed in blocks of rows or of columns within a row; any split gives the
    same pixels as one call."""
    from arbscale_core.implicit_decoder import decode_bands

    model = micro_model("sr")
    latent = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        first = model.first_layer_map(latent)
        whole = torch.cat([b for _, _, b in decode_bands(model.implicit, first, h, w, h * w, block=h * w)], 2)
        bands = list(decode_bands(model.implicit, first, h, w, chunk, block=block))
    assert [y0 for y0, _, _ in bands] == sorted(y0 for y0, _, _ in bands)
    torch.testing.assert_close(torch.cat([b for _, _, b in bands], 2), whole, atol=1e-5, rtol=1e-5)
