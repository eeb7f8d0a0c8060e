"""t5 plugin (work in progress: registers nothing yet)."""
