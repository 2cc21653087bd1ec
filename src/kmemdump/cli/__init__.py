"""The ``kmemdump`` command line: ``main.py`` and one ``cmd_<name>.py`` module per subcommand."""

__all__: list[str] = []
