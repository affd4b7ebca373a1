from regionspot.serve.app import main

main()
