"""instaseg.evaluation."""
