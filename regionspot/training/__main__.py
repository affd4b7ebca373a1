from regionspot.commands.train import main

main()
