"""Dataset examples: what each channel of a layer responds to across a whole image collection.

``files``: the collection (a folder, or a zip extracted safely), its images and labels; ``accumulate``: the
per-channel top-k, bottom-k, sample and statistics, folded batch by batch; ``store``: the embedded SQLite
database they persist in; ``job``: the pass itself (resume, new images only, progress) on an engine,
``engine.run_local`` (in-process) or ``ray_engine.run_ray`` (Ray Data: the optional ``ray`` extra). The
facade is ``cnnviz.explore.datasets``.
"""
