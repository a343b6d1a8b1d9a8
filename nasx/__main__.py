from nasx.cli import main

main()
