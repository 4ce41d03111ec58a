"""`python -m waystation` is the same program as the `waystation` console script."""

from waystation.cli import main

main()
