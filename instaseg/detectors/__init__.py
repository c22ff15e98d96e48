"""instaseg.detectors."""
