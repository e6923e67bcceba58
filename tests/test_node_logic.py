"""The ComfyUI nodes' logic, without ComfyUI (nodes/logic.py imports only arbscale_core)."""
import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from arbscale_core.pipeline import upscale_tensor

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("arbscale_node_logic", ROOT / "nodes" / "logic.py")
logic = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = logic  # dataclasses look their module up there
_spec.loader.exec_module(logic)


class Stop(Exception):
    pass


def test_no_comfy_import_outside_nodes_package():
    for path in (ROOT / "arbscale_core").rglob("*.py"):
        text = path.read_text()
        assert "import comfy" not in text and "from comfy" not in text, path
    assert "comfy" not in (ROOT / "nodes" / "logic.py").read_text().replace("ComfyUI", "")


def test_upscale_chain_matches_core_pipeline(sr_model):
    image = torch.rand(2, 9, 13, 3)  # IMAGE batch of 2, [B,H,W,C]
    enc = logic.encode_lr(sr_model, image)
    assert enc.source_hw == (9, 13) and enc.latent is None
    progress = []
    den = logic.run_denoise(enc, steps=3, eta=0.0, seed=4, hooks=logic.Hooks(progress=lambda d, t: progress.append((d, t))))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    h, w = logic.target_size(enc.source_hw, 2.5)
    out = logic.run_decode(den, h, w, chunk=50)
    assert out.shape == (2, 23, 33, 3) and out.min() >= 0 and out.max() <= 1
    ref = upscale_tensor(sr_model, image.permute(0, 3, 1, 2), 23, 33, steps=3, seed=4).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, ref)  # the LR-consistency projection included, as in the core


def test_one_latent_three_sizes(sr_model):
    den = logic.run_denoise(logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3)), 2, 0.0, 0)
    for scale, width, height, expected in [(2.0, 0, 0, (16, 16)), (3.3, 0, 0, (26, 26)), (1.0, 40, 30, (30, 40))]:
        h, w = logic.target_size(den.source_hw, scale, width, height)
        assert logic.run_decode(den, h, w, 4096).shape[1:3] == expected


@pytest.mark.parametrize("source,scale,width,height,expected", [
    ((10, 20), 1.5, 0, 0, (15, 30)),
    ((10, 20), 9.0, 100, 0, (50, 100)),   # width only keeps the aspect
    ((10, 20), 9.0, 0, 30, (30, 60)),
    ((10, 20), 9.0, 7, 3, (3, 7)),
])
def test_target_size(source, scale, width, height, expected):
    assert logic.target_size(source, scale, width, height) == expected


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_scale_is_readable_error(scale):
    with pytest.raises(ValueError, match="ArbScale: scale must be"):
        logic.target_size((10, 10), scale)


def test_absurd_size_rejected_by_its_pixel_count():
    with pytest.raises(ValueError, match="too large"):
        logic.target_size((10, 10), 100000.0)
    with pytest.raises(ValueError, match=r"^ArbScale: output 65536x65536 is too large: 4,294,967,296 pixels, "
                                         r"over the limit of 2,147,483,648$"):
        logic.target_size((10, 10), 1.0, 65536, 65536)
    # the limit is the pixel count, not a side: a long strip is fine
    assert logic.target_size((10, 10), 1.0, 70000, 10) == (10, 70000)
    assert logic.target_size((10, 10), 1.0, 32768, 65536) == (65536, 32768)  # exactly 2**31 pixels


def test_output_whose_image_does_not_fit_ram_is_refused():
    gb = 10 ** 9
    logic.check_image_memory(1, 10000, 10000, free_bytes=4 * gb)  # 1.2 GB IMAGE, 3.9 GB with saving: fits
    with pytest.raises(ValueError) as err:
        logic.check_image_memory(1, 40000, 40000, free_bytes=20 * gb)
    message = str(err.value)
    assert message.startswith("ArbScale: a 40000x40000 output needs about 62.4 GB of RAM (19.2 GB for the "
                              "float32 IMAGE, the rest to save it) but 20.0 GB is free")
    assert "--size 40000x40000" in message
    with pytest.raises(ValueError, match=r"\(batch 4\) needs about 15.6 GB"):
        logic.check_image_memory(4, 10000, 10000, free_bytes=4 * gb)


def test_interrupt_stops_denoise_within_two_steps(sr_model):
    enc = logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3))
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:  # "interrupt" after the first step
            raise Stop

    with pytest.raises(Stop):
        logic.run_denoise(enc, 50, 0.0, 0, logic.Hooks(check_interrupt=check))
    assert len(calls) <= 3


def test_interrupt_between_decode_bands(sr_model):
    den = logic.run_denoise(logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3)), 1, 0.0, 0)
    den = dataclasses.replace(den, guide=None)  # one pass: bands of 5 rows
    rows = []

    def progress(done, total):
        rows.append(done)

    def check():
        if rows and rows[-1] >= 10:
            raise Stop

    with pytest.raises(Stop):
        logic.run_decode(den, 100, 100, chunk=500, hooks=logic.Hooks(progress=progress, check_interrupt=check))
    assert rows == [5, 10]


def test_decode_halves_chunk_on_oom(sr_model, monkeypatch, caplog):
    den = logic.run_denoise(logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3)), 1, 0.0, 0)
    den = dataclasses.replace(den, guide=None)  # one pass
    reference = logic.run_decode(den, 80, 80, chunk=1600)
    real = sr_model.decode_bands
    chunks = []

    def flaky(latent, h, w, chunk, dtype, start_row=0, lr=None, detail=False):
        chunks.append((chunk, start_row))
        for i, band in enumerate(real(latent, h, w, chunk, dtype, start_row, lr=lr, detail=detail)):
            if chunk > 400 and i == 1:
                raise torch.cuda.OutOfMemoryError("simulated")
            yield band

    monkeypatch.setattr(sr_model, "decode_bands", flaky)
    out = logic.run_decode(den, 80, 80, chunk=1600, min_chunk=100)
    assert [c for c, _ in chunks] == [1600, 800, 400]
    assert chunks[1][1] > 0  # resumed after the rows already written
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert "retrying with chunk 800" in caplog.text


def test_generation_nodes(gen_model, sr_model):
    empty = logic.empty_latent(gen_model, 48, 20, 2)
    den = logic.run_denoise(empty, 2, 0.5, 1)
    h, w = logic.target_size(den.source_hw, 1.0)
    assert logic.run_decode(den, h, w, 4096).shape == (2, 20, 48, 3)
    with pytest.raises(ValueError, match="generation models"):
        logic.empty_latent(sr_model, 8, 8, 1)
    with pytest.raises(ValueError, match="SR model"):
        logic.encode_lr(gen_model, torch.rand(1, 8, 8, 3))


def test_readable_errors(sr_model, tmp_path):
    enc = logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3))
    with pytest.raises(ValueError, match="not denoised yet"):
        logic.run_decode(enc, 10, 10, 100)
    with pytest.raises(ValueError, match="steps"):
        logic.run_denoise(enc, -1, 0.0, 0)
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="ArbScale: .*not a valid safetensors"):
        logic.load(bad, torch.device("cpu"))
    with pytest.raises(ValueError, match="IMAGE"):
        logic.encode_lr(sr_model, torch.rand(8, 8, 3))


def test_zero_steps_means_model_default(sr_model, gen_model):
    from arbscale_core.pipeline import DEFAULT_STEPS

    den = logic.run_denoise(logic.encode_lr(sr_model, torch.rand(1, 8, 8, 3)), 0, 0.0, 0)
    assert den.info["steps"] == DEFAULT_STEPS["sr"]
    den = logic.run_denoise(logic.empty_latent(gen_model, 16, 16, 1), 0, 0.0, 0)
    assert den.info["steps"] == DEFAULT_STEPS["gen"]


def test_upscale_node_ensemble_and_consistency_match_core(sr_model):
    """run_upscale (the Upscale node) equals the core's upscale_tensor with the same options, its
    progress runs once over every member, and lr_consistency=False leaves the model's output."""
    image = torch.rand(1, 7, 10, 3)
    seen = []
    out = logic.run_upscale(sr_model, image, 17, 25, 2, 0.0, 3, 4096,
                            logic.Hooks(progress=lambda d, t: seen.append((d, t))), ensemble=2)
    ref = upscale_tensor(sr_model, image.permute(0, 3, 1, 2), 17, 25, steps=2, seed=3, ensemble=2)
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1))
    assert seen[-1] == (2 * (2 + 17), 2 * (2 + 17)) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    plain = logic.run_upscale(sr_model, image, 17, 25, 2, 0.0, 3, 4096, consistency=False)
    ref = upscale_tensor(sr_model, image.permute(0, 3, 1, 2), 17, 25, steps=2, seed=3, consistency=False)
    torch.testing.assert_close(plain, ref.permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="ArbScale: ensemble must be one of"):
        logic.run_upscale(sr_model, image, 17, 25, 1, 0.0, 0, 4096, ensemble=3)


def test_decode_node_consistency_toggle_keeps_the_anchor(sr_model):
    from arbscale_core.model import ArbScaleModel
    from arbscale_core.pipeline import SRGuide, decode

    model = ArbScaleModel(sr_model.config.replace(anchor=True)).eval()
    model.load_state_dict(sr_model.state_dict())
    den = logic.run_denoise(logic.encode_lr(model, torch.rand(1, 6, 8, 3)), 1, 0.0, 0)
    off = logic.run_decode(den, 20, 26, 4096, consistency=False)
    expected = decode(model, den.latent, 20, 26, guide=SRGuide(anchor=den.guide.anchor)).permute(0, 2, 3, 1)
    torch.testing.assert_close(off, expected)
    assert not torch.allclose(logic.run_decode(den, 20, 26, 4096), off)


def test_decode_node_feeds_lr_reading_decoders(sr_model):
    """Nodes carry the LR image with the latent, so an LR-reading model decodes through the node
    chain (projection on or off) as in the core."""
    from arbscale_core.model import ArbScaleModel

    model = ArbScaleModel(sr_model.config.replace(lr_features=4, lr_blocks=1)).eval()
    model.load_state_dict(sr_model.state_dict(), strict=False)
    torch.nn.init.normal_(model.implicit.first_lr.weight, std=0.2)
    image = torch.rand(1, 6, 8, 3)
    den = logic.run_denoise(logic.encode_lr(model, image), 2, 0.0, 5)
    for consistency in (True, False):
        out = logic.run_decode(den, 20, 26, 4096, consistency=consistency)
        ref = upscale_tensor(model, image.permute(0, 3, 1, 2), 20, 26, steps=2, seed=5, consistency=consistency)
        torch.testing.assert_close(out, ref.permute(0, 2, 3, 1))


def test_node_modes_resolve_steps_and_eta(sr_model, gen_model):
    from arbscale_core.pipeline import DETAIL_ETA, DETAIL_STEPS, default_steps

    assert logic.resolve_sampling(sr_model, "fidelity", 0, 0.7) == (default_steps(sr_model), 0.0)
    assert logic.resolve_sampling(sr_model, "detail", 0, 0.0) == (DETAIL_STEPS, DETAIL_ETA)
    assert logic.resolve_sampling(sr_model, "detail", 3, 0.0) == (3, DETAIL_ETA)  # steps > 0 overrides
    assert logic.resolve_sampling(sr_model, "custom", 0, 0.4) == (default_steps(sr_model), 0.4)
    assert logic.resolve_sampling(sr_model, "custom", 5, 0.4) == (5, 0.4)
    assert logic.resolve_sampling(gen_model, "detail", 0, 0.4) == (default_steps(gen_model), 0.4)
    for bad, words in ((("sharp", 0, 0.0), "mode must be one of fidelity, detail, custom"),
                       (("fidelity", -1, 0.0), "steps must be at least 1")):
        with pytest.raises(ValueError, match=f"ArbScale: {words}"):
            logic.resolve_sampling(sr_model, *bad)
