"""``python -m crossmodald``: the same as the ``crossmodald`` command."""

from crossmodald.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
