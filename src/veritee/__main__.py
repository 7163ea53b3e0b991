"""``python -m veritee`` is the ``veritee`` command."""

from veritee.cli import main

main()
