"""Allow ``python -m strongroom``."""

from strongroom.cli.startup import main

main()
