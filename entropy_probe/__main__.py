from entropy_probe.cli import main

main()
