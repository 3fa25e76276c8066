from roadie.cli import main

main()
