"""``python -m samplerd.service.cli``: the ``samplerd`` command."""

from samplerd.service.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
