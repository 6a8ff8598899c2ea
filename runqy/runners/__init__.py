"""The runners: the Runner contract (:mod:`runqy.runners.base`) and one module per built-in runner.

Choose one with ``runner_cls``: ``sequential``, ``thread``, ``process`` or ``hybrid``,
a class name, or ``"package.module:Class"`` for a runner of your own.
"""
