"""The ``runqy`` command: one module per subcommand, the options they share in :mod:`runqy.cli.options`."""
