"""Space families: one file each, holding the space, its supernet (``forward(x, arch)``) and ``extract(arch)``."""
