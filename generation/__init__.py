"""splatgen services: the GPU worker, the competitive front end, backends and the CLI."""

__version__ = "0.1.0"
