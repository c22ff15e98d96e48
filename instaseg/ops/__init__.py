"""instaseg.ops."""
