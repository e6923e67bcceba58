"""The three training stages as loss modules: forward(images [B,3,P,P] in -1..1) -> (loss, logs).

Randomness comes from a generator shared by all ranks: each loss draws the *global* batch's random
values and keeps its rank's slice, so N ranks x B images give the same update as 1 rank x N*B.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import alphas_cumprod, predict_x0, q_sample, snr
from ..imageops import resize
from ..implicit_decoder import make_coord
from ..model import ArbScaleModel
from ..sampler import sample_ddim

STAGES = ("autoencoder", "diffusion", "align", "decoder")


class StageLoss(nn.Module):
    def __init__(self, model: ArbScaleModel, rank: int = 0, world: int = 1, **opts):
        super().__init__()
        self.model = model
        self.rank, self.world = rank, world
        self.opts = opts
        self.gen = torch.Generator().manual_seed(0)  # replaced by the trainer's shared generator

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's slice of a global-batch tensor."""
        b = x.shape[0] // self.world
        return x[self.rank * b:(self.rank + 1) * b]

    def trainable(self) -> list[nn.Module]:
        raise NotImplementedError


def sample_targets(images: torch.Tensor, latent_hw: tuple[int, int], gen: torch.Generator,
                   max_rel_scale: float, queries: int, extra: torch.Tensor | None = None):
    """Pick a random output scale r in [1, max_rel_scale] relative to the latent grid (half the
    time the native one, where most outputs are judged), resize the HR crops to that size, and pick
    random rows and columns of it. Returns (ys, xs positions in cell units, cell, target [B,3,n,m]),
    plus ``extra`` (e.g. the anchor [B,3,P,P]) resized and sampled the same way when given."""
    h, w = latent_hw
    p = images.shape[-1]
    native = p / w
    u = torch.rand(3, generator=gen)
    r = native if u[0] < 0.5 else 1.0 + float(u[1]) * (max_rel_scale - 1.0)
    out_h, out_w = max(1, round(h * r)), max(1, round(w * r))
    target = resize(images, out_h, out_w).clamp(-1, 1)
    n = min(queries, out_h)
    m = min(queries, out_w)
    rows = torch.randperm(out_h, generator=gen)[:n].sort().values
    cols = torch.randperm(out_w, generator=gen)[:m].sort().values
    ys = make_coord(out_h, h)[rows]
    xs = make_coord(out_w, w)[cols]
    target = target[:, :, rows][:, :, :, cols]
    ys, xs, cell = ys.to(images.device), xs.to(images.device), (h / out_h, w / out_w)
    if extra is None:
        return ys, xs, cell, target
    return ys, xs, cell, target, resize(extra, out_h, out_w)[:, :, rows][:, :, :, cols]


class AutoencoderLoss(StageLoss):
    """Stage 1: L1 of the implicit decoder's output against the HR crop resized to a random scale."""

    def trainable(self):
        return [self.model.encoder, self.model.feature_decoder, self.model.implicit]

    def forward(self, images):
        m = self.model
        latent = m.encode(images)
        ys, xs, cell, target = sample_targets(images, latent.shape[-2:], self.gen,
                                              self.opts.get("max_rel_scale", m.config.downsample),
                                              self.opts.get("queries", 48))
        pred = m.implicit.query(m.first_layer_map(latent), ys, xs, cell)
        loss = F.l1_loss(pred, target)
        return loss, {"l1": loss.detach()}


def condition_images(images: torch.Tensor, lr_scale: torch.Tensor) -> torch.Tensor:
    """The SR condition images: each HR crop downscaled by its factor and resized back."""
    p = images.shape[-1]
    conds = []
    for img, s in zip(images, lr_scale.tolist()):
        lr_side = max(1, round(p / s))
        lr = resize(img[None], lr_side, lr_side)
        conds.append(resize(lr, p, p))
    return torch.cat(conds).clamp(-1, 1)


def make_condition(model: ArbScaleModel, images: torch.Tensor, lr_scale: torch.Tensor) -> torch.Tensor:
    """The SR condition latent: the encoded ``condition_images``."""
    return model.encode(condition_images(images, lr_scale))


class DiffusionLoss(StageLoss):
    """Stage 2: eps-prediction MSE on latents of HR crops (SR: conditioned on the LR latent)."""

    def __init__(self, model, rank=0, world=1, **opts):
        super().__init__(model, rank, world, **opts)
        self.register_buffer("abar", alphas_cumprod(model.config), persistent=False)

    def trainable(self):
        return [self.model.unet]

    def draw(self, n_global: int, latent_shape):
        g = self.gen
        t_max = self.model.config.train_timesteps - 1
        t = torch.randint(t_max + 1, (n_global,), generator=g)
        frac = self.opts.get("t_max_frac")
        if frac:
            # the last timestep is where few-step sampling makes its first (1-step: only) estimate
            t = torch.where(torch.rand(n_global, generator=g) < frac, t_max, t)
        noise = torch.randn((n_global, *latent_shape), generator=g)
        lo, hi = self.opts.get("lr_scale_range", (3.0, 5.0))
        lr_scale = lo + (hi - lo) * torch.rand(n_global, generator=g)
        return self.local(t), self.local(noise), self.local(lr_scale)

    def diffusion_terms(self, images):
        """((z0, cond, x_t, t, noise, eps), condition images or None)."""
        m = self.model
        with torch.no_grad():
            z0 = m.encode(images)
        t, noise, lr_scale = self.draw(images.shape[0] * self.world, z0.shape[1:])
        t, noise = t.to(z0.device), noise.to(z0.device)
        cond = cond_images = None
        if m.config.task == "sr":
            with torch.no_grad():
                cond_images = condition_images(images, lr_scale)
                cond = m.encode(cond_images)
        x_t = q_sample(m.to_diffusion(z0, cond), t, noise, self.abar)
        eps = m.eps(x_t, t, cond)
        return (z0, cond, x_t, t, noise, eps), cond_images

    def dm_loss(self, z0, cond, x_t, t, noise, eps):
        """eps-MSE, plus (x0_weight > 0) the MSE of the implied x0 in diffusion space. The x0 term
        matters at high noise, where eps errors are amplified 1/sqrt(abar) times in x0: without it
        few-step sampling (and its regression-like 1-step end) is poor for a small, briefly
        trained U-Net."""
        loss = F.mse_loss(eps, noise)
        logs = {"eps": loss.detach()}
        w = self.opts.get("x0_weight", 0.0)
        if w:
            x0_true = self.model.to_diffusion(z0, cond)
            l_x0 = F.mse_loss(predict_x0(x_t, t, eps, self.abar), x0_true)
            loss = loss + w * l_x0
            logs["x0"] = l_x0.detach()
        return loss, logs

    def forward(self, images):
        loss, logs = self.dm_loss(*self.diffusion_terms(images)[0])
        return loss, {"dm": loss.detach(), **logs}


class AlignLoss(DiffusionLoss):
    """Stage 3: l1 * L_dm + l2 * abar/(1-abar) * ||x0 - decode(z0_pred)||^2, decoding the predicted
    latent through the frozen decoders at a random scale (gradients reach the U-Net through them).
    With tune_decoder the decoders train too, on what the U-Net predicts rather than on true latents."""

    def trainable(self):
        parts = [self.model.unet]
        if self.opts.get("tune_decoder"):
            parts += [self.model.feature_decoder, self.model.implicit]
        return parts

    def forward(self, images):
        m = self.model
        (z0, cond, x_t, t, noise, eps), cond_images = self.diffusion_terms(images)
        l_dm, dm_logs = self.dm_loss(z0, cond, x_t, t, noise, eps)
        z0_pred = m.from_diffusion(predict_x0(x_t, t, eps, self.abar), cond)
        weight = snr(t, self.abar)
        # The paper's weight vanishes at high noise (abar/(1-abar) ~ 0.005 at t = 999), exactly
        # where few-step sampling takes its estimate; snr_min keeps the pixel loss alive there.
        snr_min, snr_max = self.opts.get("snr_min"), self.opts.get("snr_max")
        if snr_min or snr_max:
            weight = weight.clamp(min=snr_min or None, max=snr_max or None)
        # rec_min_t: pixel loss only where the prediction is a few-step estimate (an anchored
        # decoder learns the condition's correction, which does not fit near-clean latents). Only
        # those samples are decoded; with none, all are, at weight 0, so every rank has a graph.
        keep = slice(None)  # all samples, without copying the batch
        rec_min_t = self.opts.get("rec_min_t")
        if rec_min_t:
            selected = (t >= rec_min_t).nonzero().flatten()
            if len(selected):
                keep = selected
            else:
                weight = weight * 0
        # With config.anchor the output is decode(z) + resize(cond_image - decode(z_cond)), as at
        # inference (pipeline.condition_anchor). With frozen decoders the anchor is a constant. With
        # tune_decoder it must carry the decoders' gradient too: a constant anchor hides that it
        # moves with them, so the gradient keeps pushing along directions where decode(z) and
        # decode(z_cond) shift together, which the true loss cannot see; those drift until training
        # diverges (measured: three runs did, within 200-500 steps, at learning rates 1e-4 to 5e-4).
        anchor = None
        if m.config.anchor and cond is not None:
            with torch.set_grad_enabled(bool(self.opts.get("tune_decoder")) and torch.is_grad_enabled()):
                anchor = cond_images[keep] - m.decode(cond[keep], *cond_images.shape[-2:])
        # targets are drawn for the whole batch (the shared generator advances the same way); the
        # anchor of the kept samples is resized and sampled at the same positions
        sampled = sample_targets(images, z0.shape[-2:], self.gen,
                                 self.opts.get("max_rel_scale", m.config.downsample),
                                 self.opts.get("queries", 48), extra=anchor)
        ys, xs, cell, target = sampled[:4]
        pred = m.implicit.query(m.first_layer_map(z0_pred[keep]), ys, xs, cell)
        if anchor is not None:
            pred = pred + sampled[4]
        per_sample = (pred - target[keep]).pow(2).mean(dim=(1, 2, 3))
        l_rec = (weight[keep] * per_sample).sum() / len(t)
        loss = self.opts.get("lambda_dm", 1.0) * l_dm + self.opts.get("lambda_rec", 1.0) * l_rec
        return loss, {"dm": l_dm.detach(), "rec": l_rec.detach(), **dm_logs}


class DecoderLoss(StageLoss):
    """Stage 4 (SR, optional, not in the paper): the implicit decoder learns to read the frozen
    U-Net's few-step estimate together with the LR pixels (``config.lr_features``), exactly as SR
    runs at inference: LR = the HR crop downscaled by a factor drawn per batch from
    ``lr_scale_range``; condition = the LR resized to the condition size and encoded; latent =
    DDIM with ``sample_steps`` steps from fresh noise; targets = the crop's own pixels at random
    rows and columns (LIIF's sampled queries); L1 of the decoded residual + the resized LR image.
    With tune_decoder the feature decoder trains too; with hr_latent_frac part of the batch
    decodes true latents (see forward)."""

    def __init__(self, model, rank=0, world=1, **opts):
        super().__init__(model, rank, world, **opts)
        if model.config.task != "sr":
            raise ValueError("the decoder stage is for SR models")
        self.register_buffer("abar", alphas_cumprod(model.config), persistent=False)

    def trainable(self):
        if self.opts.get("detail_head"):  # the default head, feature decoder and U-Net stay as they are
            return [self.model.detail_implicit, self.model.detail_lr_encoder]
        parts = [self.model.implicit]
        if self.model.lr_encoder is not None:
            parts.append(self.model.lr_encoder)
        if self.opts.get("tune_decoder"):
            parts.append(self.model.feature_decoder)
        return parts

    def forward(self, images):
        m = self.model
        p = images.shape[-1]
        lo, hi = self.opts.get("lr_scale_range", (2.0, 6.0))
        u = torch.rand(1, generator=self.gen)
        side = max(2, round(p / (lo + (hi - lo) * float(u))))
        lr = resize(images, side, side).clamp(-1, 1)
        detail = bool(self.opts.get("detail_head"))
        frac = 1.0 if detail else self.opts.get("hr_latent_frac", 0.0)
        # hr_latent_frac: that share of the batch decodes the true latent (the HR crop resized to
        # the condition size and encoded: what the diffusion model learns to sample) instead of the
        # few-step estimate. The detail head trains on true latents only, so it renders what a
        # sampled latent holds; one head trained on both (0 < frac < 1) lost fidelity (model card).
        with torch.no_grad():
            cond_images = resize(lr, *m.condition_size(side, side)).clamp(-1, 1)
            cond = m.encode(cond_images)
            noise = self.local(torch.randn((images.shape[0] * self.world, *cond.shape[1:]), generator=self.gen))
            true_latent = m.encode(resize(images, *cond_images.shape[-2:]).clamp(-1, 1)) if frac > 0 else None
            if frac >= 1.0:  # no sampling needed
                latent = true_latent
            else:
                x = sample_ddim(lambda x_t, t: m.eps(x_t, t, cond), noise.to(cond.device), self.abar,
                                steps=self.opts.get("sample_steps", 1))
                latent = m.from_diffusion(x, cond)
                if frac > 0:
                    use_true = self.local(torch.rand(images.shape[0] * self.world, generator=self.gen) < frac)
                    latent = torch.where(use_true.to(latent.device).view(-1, 1, 1, 1), true_latent, latent)
        h, w = latent.shape[-2:]
        q = self.opts.get("queries", 48)
        rows = torch.randperm(p, generator=self.gen)[:q].sort().values
        cols = torch.randperm(p, generator=self.gen)[:q].sort().values
        ys, xs = make_coord(p, h)[rows].to(images.device), make_coord(p, w)[cols].to(images.device)
        pred = m.head(detail)[0].query(m.first_layer_map(latent, lr, detail), ys, xs, (h / p, w / p))
        if m.reads_lr:  # the decoder's output is a residual over the resized LR image
            pred = pred + resize(lr, p, p)[:, :, rows][:, :, :, cols]
        loss = F.l1_loss(pred, images[:, :, rows][:, :, :, cols])
        return loss, {"l1": loss.detach()}


LOSSES = {"autoencoder": AutoencoderLoss, "diffusion": DiffusionLoss, "align": AlignLoss,
          "decoder": DecoderLoss}


@torch.no_grad()
def measure_residual_scale(model: ArbScaleModel, images: torch.Tensor, lr_scale_range=(3.0, 5.0)) -> float:
    """1 / std of (z_hr - z_cond) over crops: the residual diffusion space's unit variance."""
    lo, hi = lr_scale_range
    scales = torch.linspace(lo, hi, images.shape[0])
    diff = model.encode(images) - make_condition(model, images, scales)
    return float(1.0 / diff.float().std().clamp(min=1e-6))


@torch.no_grad()
def measure_latent_scale(model: ArbScaleModel, images: torch.Tensor) -> float:
    """1 / std of the (unscaled) latents, so diffusion sees roughly unit variance."""
    z = model.encoder(images)
    return float(1.0 / z.float().std().clamp(min=1e-6))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR in dB of images in -1..1 (quantised to 8 bit as a saved file would be)."""
    a = ((a.clamp(-1, 1) + 1) * 127.5).round()
    b = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = (a - b).pow(2).flatten(1).mean(1).clamp(min=1e-10)
    return float((10 * torch.log10(255.0 ** 2 / mse)).mean())


def validation_psnr(model: ArbScaleModel, val: torch.Tensor, stage: str, steps: int = 10,
                    detail: bool = False) -> dict[str, float]:
    """Stage 1: reconstruction PSNR at the native scale. Stages 2-4 (SR): x4 PSNR of DDIM output
    vs bicubic (``detail``: the detail mode's, eta 1, detail head). Generation models: the eps loss
    on the validation crops."""
    model.eval()
    p = val.shape[-1]
    out = {}
    with torch.no_grad():
        if stage == "autoencoder":
            rec = model.decode(model.encode(val), p, p)
            out["val_recon_psnr"] = psnr(rec, val)
            lr = resize(val, p // 4, p // 4).clamp(-1, 1)
            out["val_bicubic_x4_psnr"] = psnr(resize(lr, p, p), val)
        elif model.config.task == "sr":
            from ..pipeline import upscale_tensor

            lr = resize(val, p // 4, p // 4).clamp(-1, 1)
            sr = upscale_tensor(model, (lr + 1) / 2, p, p, steps=steps, seed=0, eta=1.0 if detail else 0.0,
                                detail=detail) * 2 - 1
            out["val_sr_x4_psnr"] = psnr(sr.to(val.device), val)
            out["val_bicubic_x4_psnr"] = psnr(resize(lr, p, p), val)
        else:
            loss = DiffusionLoss(model)
            loss.gen.manual_seed(0)
            out["val_dm"] = float(loss(val)[0])
    model.train()
    return out

