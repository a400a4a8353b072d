"""`python -m app` runs the distillery command."""

from app.cli import main

main()
