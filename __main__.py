"""`python -m uniskel`: the `uni` command line, for when the script is not on PATH."""

from uniskel.cli import main

if __name__ == "__main__":
    main()
