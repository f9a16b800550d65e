from fornalha.cli import main

main()
