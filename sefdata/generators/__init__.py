"""Generators: one file each, registered by name (see base.py for the interface)."""

# Registration happens on import: one line per generator file.
from sefdata.generators import ddim, identity, sr, taesd, vae  # noqa: F401
from sefdata.generators.base import (
    Generator,
    GenSpec,
    Runtime,
    available_generators,
    create_generator,
    register_generator,
    restore_generator,
    sample_seed,
)

__all__ = [
    "GenSpec",
    "Generator",
    "Runtime",
    "available_generators",
    "create_generator",
    "register_generator",
    "restore_generator",
    "sample_seed",
]
