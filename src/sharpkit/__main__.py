"""``python -m sharpkit``: the command line (what ``torchrun -m sharpkit`` runs)."""

from sharpkit.cli import main

if __name__ == "__main__":
    main()
