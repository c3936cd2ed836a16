import sys

from hardcl_lightning.cli import console_main

sys.argv[0] = "hardcl"  # `python -m hardcl_lightning` is the `hardcl` command (its messages say so)
console_main()
