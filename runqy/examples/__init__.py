"""Example workers shipped with runqy, runnable with ``runqy run runqy.examples.NAME``."""
