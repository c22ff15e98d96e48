"""instaseg.config."""
