"""`python -m prefkit`: the CLI."""

from prefkit.cli import app

if __name__ == "__main__":
    app()
