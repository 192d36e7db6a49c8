"""``mathsynth explore``: a local, read-only web page over stage output folders.

``catalog`` finds the datasets (stage folders, a recipe's folders and corpus files), ``index``
keeps one DuckDB file per dataset (the short fields of every record and where its line is, never
the whole text), and ``queries`` / ``lineage`` / ``compare`` / ``patterns`` answer the page's
questions from those indexes. ``server`` serves the page (``static/``) and the JSON API.
"""
