"""``python -m workers.cli``: the same as the ``stocksync`` command."""
from workers.cli import main

main()
