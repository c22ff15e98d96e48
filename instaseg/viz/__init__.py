"""instaseg.viz."""
