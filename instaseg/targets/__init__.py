"""instaseg.targets."""
