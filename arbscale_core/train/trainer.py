"""Training loop shared by the three stages: AdamW, EMA, clipping, cosine LR, CSV log, tqdm,
validation, atomic resumable state (safetensors + JSON, no pickle) and DDP via torchrun."""
from __future__ import annotations

import copy
import csv
import dataclasses
import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..checkpoint import load_model, read_config, save_model
from ..config import preset
from ..fileio import atomic_path
from ..model import ArbScaleModel
from .data import ImageSet
from .stages import LOSSES, measure_latent_scale, measure_residual_scale, validation_psnr


@dataclass
class TrainArgs:
    stage: str
    data: list[str]
    out: str
    val: str | None = None
    init: str | None = None
    preset: str = "tiny"
    task: str = "sr"
    steps: int = 1000
    minutes: float | None = None  # wall-clock budget: stop (and end the LR schedule) at whichever comes first
    batch: int = 16            # global batch, split over ranks
    crop: int = 64
    lr: float = 2e-4
    warmup: int = 100
    weight_decay: float = 0.0
    ema: float = 0.999
    clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    val_every: int = 500
    save_every: int = 200
    val_steps: int = 10
    image_limit: int | None = None
    queries: int = 48
    max_rel_scale: float | None = None
    lr_scale_range: tuple[float, float] = (3.0, 5.0)
    snr_max: float | None = None
    snr_min: float | None = None
    t_max_frac: float = 0.0      # share of samples drawn at the last timestep
    rec_min_t: int = 0           # align: pixel loss only for samples with t >= this
    default_steps: int = 0       # recorded in the exported file: its sampling default (0: the task's)
    lambda_dm: float = 1.0
    lambda_rec: float = 1.0
    x0_weight: float = 0.0
    tune_decoder: bool = False  # align: also train the feature + implicit decoder (paper: frozen)
    decoder_init: str | None = None  # decoder stage: take the decoders from this model file
    hr_latent_frac: float = 0.0  # decoder stage: share of the batch decoding true latents, not estimates
    detail_head: bool = False    # decoder stage: add and train the detail head (on true latents) only
    detail_steps: int = 0        # recorded in the exported file: its "detail" mode's DDIM steps (0: none)
    detail_eta: float = 0.0      # ... and that mode's eta
    anchor: bool = False        # SR: set config.anchor (decode adds back the condition's AE error)
    threads: int | None = None
    save_dtype: str = "float32"
    config: dict = field(default_factory=dict)  # overrides of the preset's fields (stage 1)


def _dist_setup() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        # TF32 matmuls/convs: several times faster on Ampere+ at no measurable cost to these losses
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def build_model(args: TrainArgs, images: ImageSet | None = None) -> ArbScaleModel:
    torch.manual_seed(args.seed)
    if args.init is None:
        if args.stage != "autoencoder":
            raise ValueError(f"stage {args.stage} needs --init (the previous stage's model file)")
        return ArbScaleModel(preset(args.preset, args.task).replace(**args.config))
    init = load_model(args.init)
    if args.stage == "decoder":
        # The init's networks with an LR-reading decoder added. A fresh one starts out as the
        # resized LR image (bicubic): its LR branch and its MLP's output layer start at zero.
        if init.config.task != "sr" or args.task != "sr":
            raise ValueError("the decoder stage is for SR models (--task sr, an SR --init)")
        lr_features = int(args.config.get("lr_features", init.config.lr_features or 48))
        if lr_features <= 0:
            raise ValueError("the decoder stage trains an LR-reading decoder: lr_features must be > 0")
        model = ArbScaleModel(init.config.replace(
            anchor=False, lr_features=lr_features, lr_blocks=int(args.config.get("lr_blocks", init.config.lr_blocks)),
            detail_head=args.detail_head or init.config.detail_head))
        state = init.state_dict()
        if args.decoder_init:
            # decoders trained with an anchor (align --tune-decoder) decode well only with it: their
            # errors on z and on z_cond cancel. Start from un-anchored ones, e.g. stage 1's.
            source = load_model(args.decoder_init).state_dict()
            parts = ("feature_decoder.", "implicit.", "lr_encoder.")
            state = {k: v for k, v in state.items() if not k.startswith(parts)}
            state.update({k: v for k, v in source.items() if k.startswith(parts)})
        if args.detail_head and not init.config.detail_head:
            # a new detail head starts as a copy of the default one (which must be trained already)
            if not init.reads_lr:
                raise ValueError("--detail-head starts from an LR-reading model's decoder: --init must have lr_features")
            state.update({f"detail_{k}": v for k, v in state.items() if k.startswith(("lr_encoder.", "implicit."))})
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shapes differ: another preset or --config
            raise ValueError(f"--init and --decoder-init do not fit one model: {str(exc).splitlines()[-1].strip()}") from None
        if unexpected or any(not k.startswith(("lr_encoder.", "implicit.first_lr.")) for k in missing):
            raise ValueError(f"--init does not fit the decoder stage's model (missing {missing}, unexpected {unexpected})")
        if missing:
            out_layer = model.implicit.mlp[-1]
            nn.init.zeros_(out_layer.weight)
            nn.init.zeros_(out_layer.bias)
        return model
    if init.config.task == args.task and args.stage == "align":
        if args.anchor:
            init.config = init.config.replace(anchor=True)
        return init.train()
    # Stage 2: the stage-1 autoencoder with a fresh U-Net for the task.
    target = preset(args.preset, args.task)
    residual = args.config.get("residual", target.residual)
    cfg = init.config.replace(task=args.task, residual=residual and args.task == "sr",
                              eps_param=args.config.get("eps_param", target.eps_param),
                              anchor=args.anchor and args.task == "sr")
    if cfg.residual and images is not None:
        crops = images.random_crops(64, args.crop, torch.Generator().manual_seed(4321))
        cfg = cfg.replace(residual_scale=measure_residual_scale(init, crops, args.lr_scale_range))
    model = ArbScaleModel(cfg)
    state = {k: v for k, v in init.state_dict().items() if not k.startswith("unet.")}
    model.load_state_dict(state, strict=False)
    return model


class Trainer:
    def __init__(self, args: TrainArgs):
        if args.threads:
            torch.set_num_threads(args.threads)
        self.args = args
        self.rank, self.world, self.device = _dist_setup()
        if args.batch % self.world:
            raise ValueError(f"global batch {args.batch} must divide by the number of ranks {self.world}")
        self.out = Path(args.out)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.data = ImageSet(args.data, args.crop, args.image_limit)
        self.model = build_model(args, self.data).to(self.device)
        # read now: the init file may be gone by the time a long run exports
        self.init_info = read_config(args.init)[1] if args.init else None
        opts = {"queries": args.queries, "lr_scale_range": tuple(args.lr_scale_range),
                "snr_max": args.snr_max, "snr_min": args.snr_min, "t_max_frac": args.t_max_frac,
                "rec_min_t": args.rec_min_t, "lambda_dm": args.lambda_dm, "lambda_rec": args.lambda_rec,
                "x0_weight": args.x0_weight, "tune_decoder": args.tune_decoder,
                "hr_latent_frac": args.hr_latent_frac, "detail_head": args.detail_head,
                "sample_steps": args.default_steps or (self.init_info or {}).get("default_steps") or 1}
        if args.max_rel_scale:
            opts["max_rel_scale"] = args.max_rel_scale
        self.loss = LOSSES[args.stage](self.model, self.rank, self.world, **opts).to(self.device)
        self.model.requires_grad_(False)
        for part in self.loss.trainable():
            part.requires_grad_(True)
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.ema = {n: p.detach().clone() for n, p in self.params.items()}
        self.opt = torch.optim.AdamW(self.params.values(), lr=args.lr, weight_decay=args.weight_decay)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.loss.gen = self.gen
        self.step = 0
        self.elapsed = 0.0  # seconds of training so far, over all resumes (for --minutes)
        self.ddp = DistributedDataParallel(self.loss) if self.world > 1 else self.loss
        self.val = None
        if args.val and self.rank == 0:
            self.val = ImageSet([args.val], args.crop * 2).center_crops(args.crop * 2).to(self.device)
        self.resume()

    # --- state -----------------------------------------------------------------------------------
    @property
    def state_paths(self) -> tuple[Path, Path]:
        return self.out / "state.safetensors", self.out / "state.json"

    def save_state(self) -> None:
        if self.rank != 0:
            return
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors.update({f"ema.{k}": v.cpu().contiguous() for k, v in self.ema.items()})
        opt_state = self.opt.state_dict()
        for idx, st in opt_state["state"].items():
            for k, v in st.items():
                tensors[f"opt.{idx}.{k}"] = torch.as_tensor(v).cpu().contiguous()
        tensors["rng.generator"] = self.gen.get_state()
        tensors["rng.torch"] = torch.get_rng_state()
        meta = {"step": self.step, "elapsed_s": self.elapsed, "args": dataclasses.asdict(self.args),
                "param_groups": opt_state["param_groups"], "config": self.model.config.to_json()}
        st_path, js_path = self.state_paths
        with atomic_path(st_path) as tmp:
            save_file(tensors, str(tmp))
        with atomic_path(js_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))

    def resume(self) -> None:
        st_path, js_path = self.state_paths
        if not (st_path.exists() and js_path.exists()):
            return
        meta = json.loads(js_path.read_text())
        tensors = load_file(str(st_path))
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        for k in self.ema:
            self.ema[k] = tensors[f"ema.{k}"].to(self.device)
        opt_state = {"param_groups": meta["param_groups"], "state": {}}
        for key, v in tensors.items():
            if key.startswith("opt."):
                _, idx, name = key.split(".", 2)
                opt_state["state"].setdefault(int(idx), {})[name] = v.to(self.device) if name != "step" else v
        self.opt.load_state_dict(opt_state)
        self.gen.set_state(tensors["rng.generator"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(meta["step"])
        self.elapsed = float(meta.get("elapsed_s", 0.0))
        if self.rank == 0:
            print(f"resumed {self.args.stage} from step {self.step}", flush=True)

    def export(self) -> Path:
        """The EMA weights as a model file (stage 1 also measures the latent scale)."""
        model = self.ema_model().cpu().eval()
        if self.args.stage == "autoencoder":
            crops = self.data.random_crops(64, self.args.crop, torch.Generator().manual_seed(1234))
            scale = measure_latent_scale(model, crops)
            new = ArbScaleModel(model.config.replace(latent_scale=scale))
            new.load_state_dict(model.state_dict())
            model = new
        path = self.out / "model.safetensors"
        info = {"stage": self.args.stage, "step": self.step, "task": model.config.task,
                "data": [Path(d).name for d in self.args.data], "crop": self.args.crop,
                "batch": self.args.batch, "seed": self.args.seed, "init": self.args.init and Path(self.args.init).name}
        info["train_seconds"] = round(self.elapsed, 1)
        if self.init_info is not None:  # the lineage: each file carries its init's training info
            info["init_training"] = self.init_info
        # a decoder-stage model decodes what that many DDIM steps give: its default
        steps = self.args.default_steps or (self.loss.opts["sample_steps"] if self.args.stage == "decoder" else 0)
        if steps:
            info["default_steps"] = steps
        if self.args.hr_latent_frac:
            info["hr_latent_frac"] = self.args.hr_latent_frac
        if self.args.detail_steps:  # pipeline.mode_sampling reads it
            info["detail_steps"], info["detail_eta"] = self.args.detail_steps, self.args.detail_eta
        save_model(model, path, training=info, dtype=getattr(torch, self.args.save_dtype))
        return path

    # --- loop ------------------------------------------------------------------------------------
    def progress(self, step: int, elapsed: float) -> float:
        """Fraction of the run done after warm-up: by steps, or by time when --minutes ends it first."""
        a = self.args
        done = (step - a.warmup) / max(1, a.steps - a.warmup)
        if a.minutes:
            done = max(done, elapsed / (60.0 * a.minutes))
        return min(1.0, done)

    def lr_at(self, step: int, elapsed: float = 0.0) -> float:
        """Linear warm-up, then cosine decay to a tenth of --lr."""
        import math
        a = self.args
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.progress(step, elapsed))))

    def out_of_time(self) -> bool:
        return bool(self.args.minutes) and self.elapsed >= 60.0 * self.args.minutes

    def train_step(self) -> dict[str, torch.Tensor | float]:
        """One optimiser step. Returns the logs as tensors (no device sync until they are logged)."""
        a = self.args
        b = a.batch // self.world
        crops = self.data.random_crops(a.batch, a.crop, self.gen)
        images = crops[self.rank * b:(self.rank + 1) * b].to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step, self.elapsed)
        loss, logs = self.ddp(images)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), a.clip)
        self.opt.step()
        # EMA warm-up: early on the average follows the weights closely, so no trace of the random
        # init survives in short runs.
        decay = min(a.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            names = list(self.ema)
            torch._foreach_lerp_([self.ema[n] for n in names], [self.params[n].detach() for n in names],
                                 1.0 - decay)
        self.step += 1
        return {"loss": loss.detach(), "grad_norm": grad_norm, "lr": self.opt.param_groups[0]["lr"], **logs}

    def run(self) -> Path | None:
        a = self.args
        log_path = self.out / "log.csv"
        bar = tqdm(total=a.steps, initial=self.step, disable=self.rank != 0, desc=a.stage, dynamic_ncols=True)
        t0, elapsed0 = time.time(), self.elapsed
        writer = None
        while self.step < a.steps and not self.out_of_time():
            logs = self.train_step()
            self.elapsed = elapsed0 + time.time() - t0
            if a.minutes and self.world > 1:
                # every rank must stop at the same step and use the same LR: rank 0's clock rules
                clock = torch.tensor([self.elapsed], dtype=torch.float64, device=self.device)
                dist.broadcast(clock, 0)
                self.elapsed = float(clock)
            bar.update(1)
            last = self.step == a.steps or self.out_of_time()
            if self.rank == 0 and (self.step % a.log_every == 0 or last):
                row = {"step": self.step, "time_s": round(self.elapsed, 1),
                       **{k: float(v) for k, v in logs.items()}}
                if self.val is not None and (self.step % a.val_every == 0 or last):
                    # a decoder-stage model is validated on what it decodes: its sampling steps
                    steps = self.loss.opts["sample_steps"] if a.stage == "decoder" else a.val_steps
                    if a.detail_head:  # the detail head decodes the detail mode's samples
                        from ..pipeline import mode_sampling

                        steps = mode_sampling(self.model, "detail")[0]
                    row.update(validation_psnr(self.ema_model(), self.val, a.stage, steps, detail=a.detail_head))
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k not in ("step", "time_s", "lr")})
                new_file = not log_path.exists()
                with open(log_path, "a", newline="") as fh:
                    writer = csv.writer(fh)
                    if new_file:
                        writer.writerow(["step", "key", "value"])
                    for k, v in row.items():
                        if k != "step":
                            writer.writerow([self.step, k, v])
            if self.step % a.save_every == 0 or last:
                self.save_state()
        bar.close()
        if self.world > 1:
            self.check_ranks_agree()
        if self.rank == 0:
            return self.export()
        return None

    def check_ranks_agree(self) -> None:
        """DDP sanity check: every rank must hold bit-identical weights; rank 0 records the digests."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.params):
            digest.update(self.params[name].detach().cpu().numpy().tobytes())
        digests: list[str | None] = [None] * self.world
        dist.all_gather_object(digests, digest.hexdigest())
        if self.rank == 0:
            (self.out / "ranks.json").write_text(json.dumps({"world": self.world, "weights_sha256": digests}))
        if len(set(digests)) != 1:
            raise RuntimeError(f"DDP ranks diverged: weight digests {digests}")

    def ema_model(self) -> ArbScaleModel:
        model = copy.deepcopy(self.model)
        with torch.no_grad():
            params = dict(model.named_parameters())
            for k, v in self.ema.items():
                params[k].copy_(v)
        return model


def train(args: TrainArgs) -> Path | None:
    trainer = Trainer(args)
    try:
        exported = trainer.run()
        if trainer.world > 1:
            dist.barrier()  # every rank leaves together, after rank 0's export
        return exported
    finally:
        # Free the DDP wrapper (and gloo's pending work that holds its tensors) while the process
        # group and the interpreter are still alive: left to interpreter exit, that teardown
        # aborted a rank now and then ("terminate called without an active exception").
        del trainer
        gc.collect()
        if dist.is_initialized():
            dist.destroy_process_group()


