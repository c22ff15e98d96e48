"""``python -m instaseg`` is the same as the ``instaseg`` command."""

from instaseg.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
