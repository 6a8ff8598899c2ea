"""Settings: the model and its sources, the built-in runner catalog, whole-configuration checks, provenance.

A worker resolves its settings once at start (:func:`runqy.config.resolve.load_settings`);
the serving core and the runners never import this package at run time.
"""
