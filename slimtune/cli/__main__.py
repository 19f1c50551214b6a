"""``python -m slimtune.cli``: the ``slimtune`` command (the workers of ``run --workers`` run it so)."""

from slimtune.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
