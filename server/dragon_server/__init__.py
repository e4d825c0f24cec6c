"""DragonDiffusion for Krita: the inference server and the editing engine it runs."""

__version__ = "0.1.0"
