"""One module per `syncrun` subcommand (or small family of them): what it does with the parsed
arguments. runner/cli.py declares the arguments (run's from `options`, which `demo` and `test-read`
build their runs from too: no command imports cli), wires each subcommand to its `handle` and maps
errors to exit codes."""
