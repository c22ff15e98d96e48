"""instaseg.heads."""
