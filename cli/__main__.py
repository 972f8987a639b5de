"""`python -m hssim.cli`."""

from . import main

main()
