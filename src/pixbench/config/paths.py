"""Machine paths (PIXBENCH_*): where data, caches, runs and reports live on this machine.

Kept apart from params.yaml on purpose: paths change with the machine, hyper-parameters never
come from the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pixbench.names import check_name
from pixbench.runio import add_write_roots, under_root


class Paths(BaseSettings):
    """Machine paths only (PIXBENCH_*); hyper-parameters never come from the environment."""

    model_config = SettingsConfigDict(env_prefix="PIXBENCH_", extra="ignore")

    data_root: Path | None = Field(None, description="Raw datasets (CIFAR, ImageNet, IDX files).")
    cache_dir: Path = Field(Path("data"), description="Prepared uint8 caches, one per profile.")
    runs_dir: Path = Field(Path("runs"), description="Run directories.")
    reports_dir: Path = Field(Path("reports"), description="Reports and figures.")
    logs_dir: Path = Field(Path("logs"), description="Launcher logs (submitit folders).")
    instruments_dir: Path = Field(Path("instruments"), description="Fixed upstream models "
                                  "committed with the project (tokenizer, FeatNet).")
    fid_ref: Path | None = Field(None, description="An ADM reference batch (.npz with mu, sigma "
                                 "of Inception pool features) for `dit eval`'s "
                                 "fid_inception_ref.")

    def model_post_init(self, __context) -> None:
        """Announce the dirs to the writers (runio.writable_dir): no write below one of them
        leaves it through a symbolic link, whoever writes."""
        add_write_roots(*(v for k, v in self if k.endswith("_dir")))

    def cache_for(self, profile: str) -> Path:
        """data/<profile>: the classification cache of a profile (a safe name, inside)."""
        return self._below(self.cache_dir, check_name(profile, "profile"))

    def gen_cache_for(self, profile: str) -> Path:
        return self._below(self.cache_dir, f"{check_name(profile, 'profile')}-gen")

    def run_dir(self, profile: str, run_id: str) -> Path:
        """runs/<profile>/<run_id>; both must be safe names, and the result lies below runs_dir
        (also through symlinks). Relative as configured, so messages show the short path."""
        check_name(profile, "profile")
        check_name(run_id, "run id")
        return self._below(self.runs_dir, profile, run_id)

    @staticmethod
    def _below(root: Path, *names: str) -> Path:
        path = Path(root).joinpath(*names)
        under_root(path, root)
        return path
