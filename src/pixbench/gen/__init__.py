"""Generation track: DiT on VQGAN latents, diffusion training and sampling."""
