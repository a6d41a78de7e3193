from compiler.driver.app import main

main()
