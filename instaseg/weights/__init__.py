"""instaseg.weights."""
