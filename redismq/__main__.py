"""`python -m redismq`: the `redismq` command."""

from redismq.cli.main import main

if __name__ == "__main__":
    main()
