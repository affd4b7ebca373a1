from regionspot.evaluation.cli import main

main()
