"""Machine paths (PIXBENCH_*): where data, caches, runs and reports live on this machine.

Kept apart from params.yaml on purpose: paths change with the machine, hyper-parameters never
come from the environment.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Paths(BaseSettings):
    """Machine paths only (PIXBENCH_*); hyper-parameters never come from the environment."""

    model_config = SettingsConfigDict(env_prefix="PIXBENCH_", extra="ignore")

    data_root: Path | None = Field(None, description="Raw datasets (CIFAR, ImageNet, IDX files).")
    cache_dir: Path = Field(Path("data"), description="Prepared uint8 caches, one per profile.")
    runs_dir: Path = Field(Path("runs"), description="Run directories.")
    reports_dir: Path = Field(Path("reports"), description="Reports and figures.")
    logs_dir: Path = Field(Path("logs"), description="Launcher logs (submitit folders).")

    def cache_for(self, profile: str) -> Path:
        return self.cache_dir / profile

    def gen_cache_for(self, profile: str) -> Path:
        return self.cache_dir / f"{profile}-gen"

    def run_dir(self, profile: str, run_id: str) -> Path:
        return self.runs_dir / profile / run_id
