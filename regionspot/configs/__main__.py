from regionspot.configs import main

main()
