"""instaseg.cli."""
