"""Integrations of AdaSpa into model libraries.

- `adaspa.integrations.diffusers`: `enable_adaspa(transformer, config)` /
  `disable_adaspa(transformer)` for diffusers' Wan, HunyuanVideo and CogVideoX
  transformers (needs the optional extra `adaspa[diffusers]`).

Submodules are imported on demand, so `import adaspa.integrations` needs no
third-party package.
"""
