"""instaseg.data."""
