"""Packaged recipes: LightningCLI config files, one per ``<objective>_<size>``."""
