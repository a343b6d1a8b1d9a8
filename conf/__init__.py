"""Hydra configs of nasx, installed as the package ``nasx.conf`` (pyproject.toml maps this directory to it)."""
