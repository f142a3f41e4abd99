"""Ray Tune sweeps as plain data: sweep files checked on load (``spec``) and a sweep's Pareto report built from
its experiment folder (``report``). No Ray here; the Tune side is :mod:`videoiq.ray.tune`."""
