"""One module per `syncrun` subcommand (or small family of them): what it does with the parsed
arguments. runner/cli.py declares the arguments, wires each subcommand to its `handle` and maps errors
to exit codes."""
