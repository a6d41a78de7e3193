from compiler.app import main

main()
