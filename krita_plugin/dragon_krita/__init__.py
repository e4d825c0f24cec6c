"""DragonDiffusion for Krita (placeholder until the Krita entry point lands)."""
