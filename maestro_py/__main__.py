"""`python -m maestro_py` is the `maestro` command."""

from maestro_py.cli import main

if __name__ == "__main__":
    main()
