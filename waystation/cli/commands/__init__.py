"""The commands, one module per command or command group; cli/app.py puts them on the root app."""
