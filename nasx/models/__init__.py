"""Fixed (not searched) networks: the CMP-NAS gallery model."""
