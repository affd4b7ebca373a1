from regionspot.demo.run import main

main()
