"""A run: its config checks, hyper-parameters, assembly, teacher, training, folder and record.

- :mod:`kdlight.run.checks`: refuse a config that cannot train, before any work;
- :mod:`kdlight.run.hparams`: the flat hyper-parameters that tell runs apart;
- :mod:`kdlight.run.assemble`: method -> data -> teacher -> teacher outputs -> system;
- :mod:`kdlight.run.teacher`: obtain the teacher (load it, or train it once on its own settings);
- :mod:`kdlight.run.train`: fit, test the last and validation-best weights, record;
- :mod:`kdlight.run.folder`: claim and lock the run folder, never overwrite a run;
- :mod:`kdlight.run.record`: the one schema of ``metrics.json``;
- :mod:`kdlight.run.read`: open someone else's run folder safely.
"""
