"""pixbench's configuration: params.yaml (recipes + profile overrides, resolved and validated),
the run specs built from it, and the machine paths.

Modules: schema (base models, digest), classify and classify_specs (classification + MAE
recipes, their run specs), gen and gen_specs (generation track), params (the resolved Params),
load (reading, merging, validation), show (`params show`), paths (PIXBENCH_* paths). Import
from here; nothing in this package imports tasks, and models only lazily (size tables).
"""

from pixbench.config.classify import (AugmentConfig, ClassifyConfig, MaeConfig,
                                      PermutationConfig, PretrainConfig)
from pixbench.config.classify_specs import (PretrainSpec, RunSpec, Task, make_classify_spec,
                                            make_mae_spec, make_pretrain_spec)
from pixbench.config.gen import (DitConfig, FeatNetConfig, FidConfig, GenConfig, GenSweep,
                                 LatentsConfig, Pretrained, PretrainedTokenizer, SampleConfig,
                                 VQConfig, gen_problems, latent_side)
from pixbench.config.gen_specs import (DitEvalSpec, DitSpec, EncodeSpec, FeatNetSpec,
                                       VQEvalSpec, VQSpec, make_dit_eval_spec, make_dit_spec,
                                       make_encode_spec, make_featnet_spec, make_vq_eval_spec,
                                       make_vq_spec)
from pixbench.config.load import PARTS, deep_merge, load_params
from pixbench.config.params import (Locality, MaeSweep, Params, Profile, Sweep, Variant,
                                    cross_problems)
from pixbench.config.paths import Paths
from pixbench.config.schema import DataConfig, Digestible, OptimConfig, Strict, spec_diff
from pixbench.config.show import show_params

__all__ = [
    "AugmentConfig", "ClassifyConfig", "DataConfig", "Digestible", "DitConfig", "DitEvalSpec",
    "DitSpec", "EncodeSpec", "FeatNetConfig", "FeatNetSpec", "FidConfig", "GenConfig",
    "GenSweep", "LatentsConfig", "Locality", "MaeConfig", "MaeSweep", "OptimConfig", "PARTS",
    "Params", "Paths", "PermutationConfig", "PretrainConfig", "PretrainSpec",
    "Pretrained", "PretrainedTokenizer", "Profile", "RunSpec", "SampleConfig", "Strict",
    "Sweep", "Task",
    "VQConfig", "VQEvalSpec", "VQSpec", "Variant", "cross_problems", "deep_merge",
    "gen_problems", "latent_side", "load_params", "make_classify_spec", "make_dit_eval_spec",
    "make_dit_spec", "make_encode_spec", "make_featnet_spec", "make_mae_spec",
    "make_pretrain_spec", "make_vq_eval_spec", "make_vq_spec", "show_params", "spec_diff",
]
