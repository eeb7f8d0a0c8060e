"""electra plugin (work in progress: registers nothing yet)."""
