"""Robust self-supervised pre-training (ACL / DynACL / AIR) with RCS coreset selection, on Ray.

Three layers (see README "Architecture"):
  core math  - pipeline.{models,losses,attacks,coreset (pure parts),data.transforms,train.optim,train.steps}
               torch/numpy only, never imports ray (tests/unit/test_import_boundaries.py checks it);
  worker     - pipeline.train.loops, pipeline.coreset.ray_tasks, pipeline.eval.ray_tasks,
               pipeline.data.ray_datasets: the only modules that call ray.*;
  drivers    - pipeline.train.driver, pipeline.tune.sweep, jobs/*.py.
"""

__version__ = "0.1.0"
