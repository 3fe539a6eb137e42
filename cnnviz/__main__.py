"""``python -m cnnviz serve [flags]``: the ``cnnviz`` command without the console script."""
from __future__ import annotations

from cnnviz.cli import main

if __name__ == "__main__":
    main()
