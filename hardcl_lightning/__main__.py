from hardcl_lightning.cli import main

main()
