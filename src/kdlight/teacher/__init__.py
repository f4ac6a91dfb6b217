"""Teacher outputs: what is stored, how a step is served, and the store that keeps them.

- :mod:`kdlight.teacher.outputs`: decides what is stored, fills an epoch's view and answers
  each step from the store, online, or from the batch (the engine's one source of teacher forms);
- :mod:`kdlight.teacher.store`: the on-disk store, read side (keyed, checksummed, memory-mapped);
  :mod:`kdlight.teacher.fill`: its write side; :mod:`kdlight.teacher.tables`: a view's tables;
  :mod:`kdlight.teacher.topk`: the top-k codec of stored logits;
- :mod:`kdlight.teacher.ensemble`: several teachers that teach as one.

Obtaining the teacher network itself (load, or train once) is :mod:`kdlight.run.teacher`.
"""
