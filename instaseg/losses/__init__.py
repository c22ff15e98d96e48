"""instaseg.losses."""
