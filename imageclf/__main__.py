"""`python -m imageclf …`: the `imageclf` command, for an environment whose scripts folder is not on PATH."""

from imageclf.cli import main

main()
