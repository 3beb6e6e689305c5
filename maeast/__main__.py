from maeast.cli import main

main()
