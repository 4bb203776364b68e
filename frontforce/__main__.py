from frontforce.cli import main

main()
