from runtime_executor.cli import main

main()
