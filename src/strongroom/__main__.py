"""Allow ``python -m strongroom``."""

from strongroom.cli.main import main

main()
