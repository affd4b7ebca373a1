from regionspot.commands.demo import main

main()
