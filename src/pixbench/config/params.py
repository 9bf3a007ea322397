"""The resolved params: what params.yaml means once each profile's overrides are merged onto the
recipes (load.py does that). Every profile here is complete, so the rest of pixbench never sees
recipes or overrides.

`profile` is the one switch between the CPU default and the paper recipes; `sweep` and the
other *_sweep sections list the cells of the DVC matrices.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pixbench.config.classify import ClassifyConfig, MaeConfig, PermutationConfig, visible_tokens
from pixbench.config.gen import GenConfig, GenSweep, gen_problems
from pixbench.config.schema import DataConfig, Float, Int, SafeName, Seed, Strict


class Sweep(Strict):
    sizes: list[SafeName] = Field(min_length=1, description="Model size keys of the DVC matrix "
                             "(xxs, xs, m, t, s, b, l); the first is `--size`'s default.")
    patches: list[Int] = Field(min_length=1, description="Patch sizes of the DVC matrix "
                               "(1 = pixel tokens).")
    seeds: list[Seed] = Field(min_length=1, description="Seeds of the DVC matrix.")


class Variant(Strict):
    """A locality ablation: it states only the classify fields it replaces (null: kept)."""

    pos_embed: Literal["learn", "sincos", "none"] | None = Field(None, description="Override "
                                                                "of classify.pos_embed.")
    permutation: PermutationConfig | None = Field(None, description="Override of "
                                                  "classify.permutation.")


class Locality(Strict):
    variants: dict[SafeName, Variant] = Field(description="Named locality ablations: overrides of "
                                         "the classify recipe; nothing else changes.")
    run: list[SafeName] = Field(description="Variants the DVC locality matrix runs (x sweep sizes "
                           "x sweep patches x locality seeds).")
    seeds: list[Seed] = Field(min_length=1, description="Seeds of the locality matrix.")


class MaeSweep(Sweep):
    alt_target: Literal["pix", "norm_pix"] | None = Field(description="A second "
                                                          "reconstruction target to compare, "
                                                          "run on alt_patches, or null.")
    alt_patches: list[Int] = Field(description="Patch sizes for alt_target (norm_pix is "
                                   "undefined at p=1 on gray data).")


class Profile(Strict):
    """A dataset with its recipes and its own study: the sweeps DVC and `pixbench study run`
    run for it (params.yaml's top-level sweeps, with the profile's own `sweep`, `mae_sweep`,
    `locality`, `gen_sweep` merged on top key by key)."""

    data: DataConfig = Field(description="Where the images come from and their stored size.")
    classify: ClassifyConfig = Field(description="The classification recipe, shared by "
                                     "every patch size.")
    mae: MaeConfig | None = Field(description="The MAE track's recipes, shared by every "
                                  "patch size, or null: a profile without an MAE track.")
    gen: GenConfig | None = Field(description="The generation track (tokenizer, FID "
                                  "classifier, DiT, sampling, metrics), or null: a profile "
                                  "without a generation track.")
    sweep: Sweep = Field(description="This profile's classification cells.")
    mae_sweep: MaeSweep | None = Field(description="This profile's MAE cells (null: no "
                                       "MAE track).")
    locality: Locality = Field(description="This profile's locality ablations.")
    gen_sweep: GenSweep | None = Field(description="This profile's DiT cells (null: no "
                                       "generation track).")


class VerifyConfig(Strict):
    """How `pixbench verify` judges a fresh result against the committed reference when the
    numbers cannot be bitwise equal (another CPU kind, another spec): see verify/compare.py."""

    k: Float = Field(gt=0, description="A group departs when |mean fresh - mean reference| > "
                     "k * SE, SE = sqrt(s_ref^2/n_ref + s_new^2/n_new) from the seed spread.")
    rel_floor: Float = Field(ge=0, description="The smallest tolerance, as a fraction of "
                             "|reference mean|: seeds that happen to agree closely do not make "
                             "a zero-width band.")
    single_seed_rel: Float = Field(gt=0, description="Tolerance of a group with one seed on "
                                   "both sides (no spread to measure), as a fraction of "
                                   "|reference mean|.")
    alpha: Float = Field(gt=0, lt=1, description="Significance level of the conclusions "
                         "(Welch's t-test, Holm-corrected per family; verify/conclusions.py).")
    sanity: dict[SafeName, dict[str, tuple[Float, Float]]] = Field(
        description="Per profile, {task.metric: [low, high]}: where a retrained instrument's "
        "own result (tokenizer, FeatNet) must fall, measured across machine kinds "
        "(reports/bench/instrument-bands.md); used where the instruments are not pinned.")


STUDY_KEYS = ("sweep", "mae_sweep", "locality", "gen_sweep")  # a profile may override each


class Params(Strict):
    """The resolved params. `sweep`, `mae_sweep`, `locality` and `gen_sweep` are the ACTIVE
    profile's study (load.py merges each profile's own onto the top-level ones); `switch`
    makes another profile the active one, with its study."""

    profile: SafeName = Field(description="The active profile: what a pixbench command "
                              "without --profile runs (and whose report is reports/REPORT.md).")
    studies: list[SafeName] = Field(min_length=1, description="The profiles `dvc repro` and "
                                    "`pixbench study run` run, each with its own study "
                                    "(cells.yaml lists their cells).")
    sweep: Sweep = Field(description="Cells of the DVC matrix (sizes x patch sizes x seeds).")
    mae_sweep: MaeSweep | None = Field(None, description="Cells of the MAE track's DVC "
                                       "matrices (null: no MAE track).")
    profiles: dict[SafeName, Profile] = Field(description="Named data + recipe presets, resolved "
                                         "(recipes with each profile's overrides merged in).")
    locality: Locality = Field(description="Locality ablations (pixel permutation, position "
                               "embeddings).")
    gen_sweep: GenSweep | None = Field(None, description="Cells of the generation track's DVC "
                                       "matrices (DiT sizes x latent patch sizes x seeds), or "
                                       "null when no profile has a gen track.")
    verify: VerifyConfig | None = Field(None, description="Tolerances of `pixbench verify` "
                                        "across machines (null: verify refuses to judge).")

    @model_validator(mode="after")
    def _check(self) -> Params:
        problems = cross_problems(self)
        if problems:
            raise ValueError("\n".join(problems))  # load.py reports each line as one problem
        return self

    @property
    def active(self) -> Profile:
        return self.profiles[self.profile]

    def switch(self, profile: str) -> Params:
        """These params with `profile` active: its recipes and its own study."""
        from pixbench.errors import UserError

        if profile not in self.profiles:
            raise UserError(f"profile {profile!r} is not one of profiles: "
                            f"{', '.join(self.profiles)}")
        prof = self.profiles[profile]
        problems = profile_problems(self, profile)
        if problems:
            raise UserError("; ".join(problems))
        return self.model_copy(update={"profile": profile, **{k: getattr(prof, k)
                                                               for k in STUDY_KEYS}})


def cross_problems(params: Params) -> list[str]:
    """Checks across sections, every one at once: the studies name profiles, and the active
    profile and every studied one fit their own sweeps."""
    names = [params.profile, *params.studies]
    unknown = [n for n in dict.fromkeys(names) if n not in params.profiles]
    if unknown:
        key = "profile" if unknown[0] == params.profile else "studies"
        return [f"{key} {unknown[0]!r} is not one of profiles: {', '.join(params.profiles)}"]
    out = []
    for name in dict.fromkeys(names):
        out += profile_problems(params, name)
    return list(dict.fromkeys(out))


def profile_problems(params: Params, name: str) -> list[str]:
    """One profile against its own study (sizes, patches that divide its images, MAE masks)."""
    from pixbench.models.sizes import SIZES

    prof, out = params.profiles[name], []
    where = f" (profile {name}: set profiles.{name}.{{key}} to override)"
    unknown = [s for s in prof.sweep.sizes if s not in SIZES]
    if unknown:
        out.append(f"sweep.sizes {unknown} are not known sizes ({', '.join(SIZES)})")
    missing = [v for v in prof.locality.run if v not in prof.locality.variants]
    if missing:
        out.append(f"locality.run {missing} are not in locality.variants")
    size = prof.data.image_size
    sweeps = [("sweep", prof.sweep)] + ([("mae_sweep", prof.mae_sweep)] if prof.mae_sweep
                                        else [])
    for key, sw in sweeps:
        bad = [p for p in sw.patches if p < 1 or size % p]
        if bad:
            out.append(f"{key}.patches {bad} do not divide profiles.{name}.data.image_size="
                       f"{size}" + where.format(key=f"{key}.patches"))
    if prof.mae_sweep is not None and prof.mae is not None:
        one = [p for p in prof.mae_sweep.patches if p >= 1 and size // p < 2]
        if one:
            out.append(f"mae_sweep.patches {one} leave a single token: nothing to mask"
                       + where.format(key="mae_sweep.patches"))
        out += _mask_problems(prof, name, size)
    if prof.gen is not None:
        out += gen_problems(prof.gen, prof.gen_sweep, f"profiles.{name}.gen")
    return out


def _mask_problems(prof: Profile, name: str, size: int) -> list[str]:
    """The MAE mask ratio leaves a visible token at every patch size of the MAE sweep: refused
    here, naming the field, instead of by the model at the first step."""
    ratio, sw = prof.mae.pretrain.mask_ratio, prof.mae_sweep
    patches = {p for p in [*sw.patches, *(sw.alt_patches if sw.alt_target else [])]
               if p >= 1 and size % p == 0 and size // p >= 2}
    bad = sorted(p for p in patches if visible_tokens((size // p) ** 2, ratio) < 1)
    if not bad:
        return []
    tokens = ", ".join(str((size // p) ** 2) for p in bad)
    return [f"profiles.{name}.mae.pretrain.mask_ratio={ratio:g} leaves no visible "
            f"token at mae_sweep patch sizes {bad} ({tokens} tokens)"]
