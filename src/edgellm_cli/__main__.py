from edgellm_cli.cli import main

main()
