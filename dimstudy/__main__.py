"""`python -m dimstudy ...` (also what `torchrun -m dimstudy train ...` runs)."""

from dimstudy.cli import main

main()
