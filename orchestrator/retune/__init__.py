"""The re-tune job: is production stale, and if so, is there something really better?

- ``spec``: the re-tune file (RETUNE.yaml).
- ``job``: the job from lock to decision.
"""
