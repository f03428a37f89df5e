from medsec.cli.main import main

main()
