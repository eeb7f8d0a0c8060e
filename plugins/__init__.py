"""The built-in pretraining methods, one sub-package each, registered via entry points."""
