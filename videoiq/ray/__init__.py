"""The Ray layer: everything in videoiq that imports Ray, and nothing else does (a test holds this).

* :mod:`videoiq.ray.data`: Ray Data over a videoiq LMDB (read tasks, decode, one shard per Train worker);
* :mod:`videoiq.ray.train`: a stage on Ray Train workers (the per-worker function and the driver);
* :mod:`videoiq.ray.tune`: Ray Tune sweeps of the policy stage;
* :mod:`videoiq.ray.build`: the shards of a sharded split built as Ray tasks;
* ``_placement_groups``: a private workaround for a Ray Train clean-up gap, with the version it was seen on.

The core below it (``videoiq.data``, ``videoiq.models``, ``videoiq.train``, ...) is plain PyTorch; the
entry points (:mod:`videoiq.dispatch`, :mod:`videoiq.cli`) import this package only when a run needs Ray.
Inside it, ``import ray`` is Ray itself (absolute imports).
"""
