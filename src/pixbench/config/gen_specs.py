"""Run specs of the generation track and the factories that build them from params: a spec
holds everything that determines a run's result (its digest guards resume and reuse), and
refers to the runs it builds on by {run_id, digest}.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pixbench.config.gen import (DitConfig, FeatNetConfig, FidConfig, GenConfig, LatentsConfig,
                                 SampleConfig, VQConfig, latent_side)
from pixbench.config.params import Params
from pixbench.config.schema import DataConfig, Digestible, Int, SafeName, Seed
from pixbench.errors import UserError



class VQSpec(Digestible):
    """Everything that determines a tokenizer: its run id is `vq-s{seed}` (one per profile)."""

    task: Literal["vq"] = "vq"
    profile: SafeName
    seed: Seed
    data: DataConfig
    vq: VQConfig

    @property
    def run_id(self) -> str:
        return f"vq-s{self.seed}"


class FeatNetSpec(Digestible):
    task: Literal["featnet"] = "featnet"
    profile: SafeName
    seed: Seed
    data: DataConfig
    featnet: FeatNetConfig

    @property
    def run_id(self) -> str:
        return f"featnet-s{self.seed}"


class DitSpec(Digestible):
    """A DiT run on one tokenizer's latents; sampling and metrics settings are not part of
    the training digest (they are recorded with each evaluation)."""

    task: Literal["dit"] = "dit"
    profile: SafeName
    size: SafeName
    patch: Int
    seed: Seed
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer whose latents it "
                            "learns.")
    dit: DitConfig
    # only with dit.curve_every_steps: the FID-vs-step probe's classifier, sampler and reference
    featnet: dict | None = None
    sample: SampleConfig | None = None
    fid: FidConfig | None = None

    @property
    def run_id(self) -> str:
        return f"dit-{self.size}-p{self.patch}-s{self.seed}"


class EncodeSpec(Digestible):
    """Cached latents of one tokenizer: run id `{tokenizer run id}-latents`."""

    task: Literal["vq-encode"] = "vq-encode"
    profile: SafeName
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer.")
    data: DataConfig
    latents: LatentsConfig

    @property
    def run_id(self) -> str:
        return f"{self.tokenizer['run_id']}-latents"


class VQEvalSpec(Digestible):
    """Reconstruction metrics of one tokenizer on the validation split (rFID on FeatNet)."""

    task: Literal["vq-eval"] = "vq-eval"
    profile: SafeName
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer.")
    featnet: dict = Field(description="{run_id, digest} of the FID classifier.")
    eval_images: Int
    sanity_samples: Int = Field(description="Images per side of the sanity FIDs (real val, "
                                "noise), as many as the DiT samples so the bias is the same.")
    fid: FidConfig

    @property
    def run_id(self) -> str:
        return f"{self.tokenizer['run_id']}-eval"


class DitEvalSpec(Digestible):
    """Sampling + FID/IS/KID/PR of one DiT run."""

    task: Literal["dit-eval"] = "dit-eval"
    profile: SafeName
    dit: dict = Field(description="{run_id, digest} of the DiT run.")
    tokenizer: dict = Field(description="{run_id, digest} of the tokenizer that decodes.")
    featnet: dict = Field(description="{run_id, digest} of the FID classifier.")
    seed: Seed
    sample: SampleConfig
    fid: FidConfig

    @property
    def run_id(self) -> str:
        return f"{self.dit['run_id']}-eval"


# --------------------------------------------------------------------------- spec factories


def _gen(params: Params) -> GenConfig:
    gen = params.active.gen
    if gen is None:
        raise UserError(f"profile {params.profile!r} has no gen track (params.yaml: "
                        f"profiles.{params.profile} omits `gen`)")
    return gen


def _ref(spec: Digestible) -> dict:
    return {"run_id": spec.run_id, "digest": spec.digest()}


def make_vq_spec(params: Params, seed: int | None = None) -> VQSpec:
    gen = _gen(params)
    seed = params.gen_sweep.tokenizer_seed if seed is None and params.gen_sweep else (seed or 0)
    return VQSpec(profile=params.profile, seed=seed, data=gen.data, vq=gen.vq)


def make_encode_spec(params: Params) -> EncodeSpec:
    gen = _gen(params)
    return EncodeSpec(profile=params.profile, tokenizer=_ref(make_vq_spec(params)),
                      data=gen.data, latents=gen.latents)


def make_featnet_spec(params: Params, seed: int = 0) -> FeatNetSpec:
    gen = _gen(params)
    return FeatNetSpec(profile=params.profile, seed=seed, data=gen.data, featnet=gen.featnet)


def make_vq_eval_spec(params: Params) -> VQEvalSpec:
    gen = _gen(params)
    return VQEvalSpec(profile=params.profile, tokenizer=_ref(make_vq_spec(params)),
                      featnet=_ref(make_featnet_spec(params)), eval_images=gen.vq.eval_images,
                      sanity_samples=gen.sample.num_samples, fid=gen.fid)


def make_dit_spec(params: Params, *, size: str | None, patch: int, seed: int) -> DitSpec:
    from pixbench.models.sizes import DIT_SIZES

    gen = _gen(params)
    size = size or (params.gen_sweep.sizes[0] if params.gen_sweep else "xxs")
    if size not in DIT_SIZES:
        raise UserError(f"--size {size!r} is not a DiT size ({', '.join(DIT_SIZES)})")
    side = latent_side(gen)
    if patch < 1 or side % patch:
        raise UserError(f"--patch {patch} does not divide the {side}x{side} latent grid")
    probe = {}
    if gen.dit.curve_every_steps:
        probe = {"featnet": _ref(make_featnet_spec(params)), "sample": gen.sample, "fid": gen.fid}
    return DitSpec(profile=params.profile, size=size, patch=patch, seed=seed,
                   tokenizer=_ref(make_vq_spec(params)), dit=gen.dit, **probe)


def make_dit_eval_spec(params: Params, *, size: str | None, patch: int, seed: int) -> DitEvalSpec:
    gen = _gen(params)
    dit = make_dit_spec(params, size=size, patch=patch, seed=seed)
    return DitEvalSpec(profile=params.profile, dit=_ref(dit), tokenizer=dit.tokenizer,
                       featnet=_ref(make_featnet_spec(params)), seed=seed, sample=gen.sample,
                       fid=gen.fid)
