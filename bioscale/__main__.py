from bioscale.cli import main

main()
