"""``python -m pigeon``: the same as the ``pigeon`` command."""

from pigeon.cli.main import main

main()
