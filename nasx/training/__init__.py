"""Training systems (LightningModules). They hold no architecture code: the model comes from a space file."""
