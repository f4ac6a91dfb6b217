"""Each tool's command for one run of a case: the same work, each tool's own way of asking for it.

- kdlight: its CLI, ``python -m kdlight.train +experiment=imagefolder_resnet18_kd`` plus overrides
  (the one harness addition: the ``kdlight_clock.EpochClock`` callback that times epochs);
- timm: ``timm_kd.py`` (timm's package API as its ``train.py`` calls it) with ``train.py``'s flags;
- torchdistill: ``torchdistill_kd.py --config <yaml>`` (its package API as its example script
  calls it) with a YAML config in torchdistill's own format, written by :func:`torchdistill_yaml`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
KDLIGHT_EXPERIMENT = "imagefolder_resnet18_kd"
# ImageNet statistics: kdlight's image_folder default, timm's resnet18 pretrained_cfg, torchdistill's samples
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass
class Work:
    """What every tool is asked to do (identical across tools)."""

    data: Path  # image folder: train/<class>/*, val/<class>/*
    teacher_ckpt: Path  # bare state dict of a torchvision `teacher`
    teacher: str = "resnet18"
    student: str = "mobilenet_v3_small"  # torchvision's name (kdlight, torchdistill)
    timm_student: str = "mobilenetv3_small_100"  # timm's name for the same network
    student_dropout: float = 0.2  # torchvision's classifier dropout, given to timm's --drop
    num_classes: int = 10
    image_size: int = 32
    eval_resize: int = 36  # = int(32 / 0.875): timm's crop_pct 0.875
    batch_size: int = 128
    workers: int = 2
    epochs: int = 2
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 42
    max_steps: int = 0  # per epoch; 0 = the whole epoch (only the quick check sets it)


@dataclass
class Method:
    """Vanilla KD (``kind="kd"``: alpha weights the soft term, kdlight's convention) or a hint on
    the pooled pre-logit features (``kind="feature"``: L = CE + beta * MSE(f_s, f_t))."""

    kind: str = "kd"
    alpha: float = 0.9
    temperature: float = 4.0
    beta: float = 100.0


@dataclass
class Command:
    argv: list[str]
    result: Path  # the JSON the run leaves (kdlight: its run folder)
    env: dict[str, str] = field(default_factory=dict)


# ---- kdlight -------------------------------------------------------------------------------


def kdlight_overrides(work: Work, method: Method, store: Path | None) -> list[str]:
    """The overrides that ask kdlight for the work (``store=None``: the teacher online)."""
    ov = [
        f"+experiment={KDLIGHT_EXPERIMENT}",
        "model@student=torchvision",
        f"student.name={work.student}",
        f"teacher.name={work.teacher}",
        f"teacher_ckpt={work.teacher_ckpt}",
        f"data.root={work.data}",
        f"data.num_classes={work.num_classes}",
        f"data.image_size={work.image_size}",
        f"data.eval_resize={work.eval_resize}",
        f"data.batch_size={work.batch_size}",
        f"data.eval_batch_size={work.batch_size}",
        f"data.num_workers={work.workers}",
        "data.val_size=0",  # all of train/ is trained on, as the peers do; test = val/
        "data.drop_last=true",  # as timm's training loader (and the torchdistill config here)
        f"seed={work.seed}",
        f"module.optimizer.lr={work.lr}",
        f"module.optimizer.momentum={work.momentum}",
        f"module.optimizer.weight_decay={work.weight_decay}",
        "module.scheduler=null",
        f"trainer.max_epochs={work.epochs}",
        "trainer.accelerator=cpu",
        "callbacks=none",  # no checkpoints, no validation-best selection: one test pass, as the peers
        # the peers test the student only; kdlight's default test pass also runs the teacher over
        # the test set for test/agreement (2.4 s a run with a ResNet-152 teacher)
        "module.log_agreement=false",
        "+trainer.limit_val_batches=0",
        "+trainer.enable_progress_bar=false",
        "+callbacks.peer_clock._target_=kdlight_clock.EpochClock",
        "+callbacks.peer_clock.out=${paths.output_dir}/peer_clock.json",
    ]
    if work.max_steps:
        ov.append(f"+trainer.limit_train_batches={work.max_steps}")
    if method.kind == "kd":
        ov += [
            "distill=kd",
            f"distill.alpha={method.alpha}",
            f"distill.temperature={method.temperature}",
        ]
    else:
        ov += [
            # RepDistiller's FitNet (-r 1 -a 0 -b beta): CE + beta * hint, every epoch
            "distill=fitnets",
            "distill.form=one_stage",
            "distill.hint_epochs=0",
            "distill.alpha=0",
            "distill.hint_layer=avgpool",
            "distill.guided_layer=avgpool",
            f"distill.beta={method.beta}",
        ]
    if store is None:
        ov.append("teacher_store.enabled=false")
    else:
        ov.append(f"paths.store_dir={store}")
    return ov


def kdlight_command(
    python: str,
    work: Work,
    method: Method,
    run_dir: Path,
    store: Path | None,
    sweep: list[Method] | None = None,
) -> Command:
    """One kdlight run, or with ``sweep`` one Hydra multirun over its alpha x T grid."""
    argv = [python, "-m", "kdlight.train"]
    ov = kdlight_overrides(work, method, store)
    if sweep:
        alphas = sorted({m.alpha for m in sweep})
        temps = sorted({m.temperature for m in sweep})
        ov = [o for o in ov if not o.startswith(("distill.alpha=", "distill.temperature="))]
        argv.append("-m")
        ov += [
            f"distill.alpha={','.join(map(str, alphas))}",
            f"distill.temperature={','.join(map(str, temps))}",
            f"hydra.sweep.dir={run_dir}",
        ]
    else:
        ov.append(f"hydra.run.dir={run_dir}")
    return Command(argv + ov, run_dir, {"PYTHONPATH": str(HERE)})


# ---- timm ----------------------------------------------------------------------------------


def timm_command(python: str, work: Work, method: Method, result: Path) -> Command:
    """``timm_kd.py`` with ``train.py``'s flags; defaults that differ from the others set equal."""
    argv = [
        python,
        str(HERE / "timm_kd.py"),
        str(work.data),
        "--model",
        work.timm_student,
        "--drop",
        str(work.student_dropout),
        "--num-classes",
        str(work.num_classes),
        "--img-size",
        str(work.image_size),
        "--crop-pct",
        str(work.image_size / work.eval_resize),
        "-b",
        str(work.batch_size),
        "-j",
        str(work.workers),
        "--epochs",
        str(work.epochs),
        "--opt",
        "momentum",  # train.py's default 'sgd' is Nesterov's; kdlight's and torchdistill's SGD is not
        "--lr",
        str(work.lr),
        "--momentum",
        str(work.momentum),
        "--weight-decay",
        str(work.weight_decay),
        "--smoothing",
        "0",  # train.py's default is 0.1
        "--color-jitter",
        "0",  # train.py's default is 0.4
        "--train-interpolation",
        "bilinear",  # train.py's default is random
        "--channels-last",  # kdlight's image-folder default (data.channels_last); off in train.py
        "--seed",
        str(work.seed),
        "--kd-model-name",
        work.teacher,
        "--kd-pretrained-path",
        str(work.teacher_ckpt),
        "--result",
        str(result),
    ]
    if work.max_steps:
        argv += ["--max-steps", str(work.max_steps)]
    if method.kind == "kd":
        # timm: task_weight * CE + distill_weight * T^2 KL; with only --task-loss-weight the
        # distill weight is 1 - task weight, so CE weight 1 - alpha gives kdlight's alpha
        argv += [
            "--kd-distill-type",
            "logit",
            "--task-loss-weight",
            str(round(1.0 - method.alpha, 10)),
            "--kd-temperature",
            str(method.temperature),
        ]
    else:
        argv += [
            "--kd-distill-type",
            "feature",
            "--task-loss-weight",
            "1.0",
            "--distill-loss-weight",
            str(method.beta),
        ]
    return Command(argv, result)


# ---- torchdistill --------------------------------------------------------------------------


def _dataset_yaml(key: str, root: Path, transforms: list[str]) -> str:
    items = "\n".join(transforms)
    return f"""  {key}: !import_call
    key: 'torchvision.datasets.ImageFolder'
    init:
      kwargs:
        root: '{root}'
        transform: !import_call
          key: 'torchvision.transforms.Compose'
          init:
            kwargs:
              transforms:
{items}
"""


def _tf(key: str, kwargs: str = "") -> str:
    pad = " " * 16
    if not kwargs:
        return f"{pad}- !import_call\n{pad}  key: '{key}'\n{pad}  init:"
    return f"{pad}- !import_call\n{pad}  key: '{key}'\n{pad}  init:\n{pad}    kwargs: {{{kwargs}}}"


def _loader_yaml(dataset_id: str, sampler: str, batch_size: int, workers: int, train: bool) -> str:
    # training: the last, smaller batch is dropped, as timm's loader always does (kdlight:
    # data.drop_last=true); evaluation keeps every image
    return f"""dataset_id: '{dataset_id}'
    sampler:
      class_or_func: !import_get
        key: 'torch.utils.data.{sampler}'
      kwargs:
    kwargs:
      batch_size: {batch_size}
      num_workers: {workers}
      pin_memory: False
      drop_last: {train}
    requires_supp: {train}"""


def torchdistill_yaml(work: Work, method: Method) -> str:
    """A torchdistill config for the work, in the shape of torchdistill's own sample configs."""
    norm = f"mean: {list(MEAN)}, std: {list(STD)}"
    train_tf = [
        _tf(
            "torchvision.transforms.RandomResizedCrop",
            f"size: [{work.image_size}, {work.image_size}]",
        ),
        _tf("torchvision.transforms.RandomHorizontalFlip", "p: 0.5"),
        _tf("torchvision.transforms.ToTensor"),
        _tf("torchvision.transforms.Normalize", norm),
    ]
    val_tf = [
        _tf("torchvision.transforms.Resize", f"size: {work.eval_resize}"),
        _tf("torchvision.transforms.CenterCrop", f"size: [{work.image_size}, {work.image_size}]"),
        _tf("torchvision.transforms.ToTensor"),
        _tf("torchvision.transforms.Normalize", norm),
    ]
    if method.kind == "kd":
        hooks = ""
        criterion = f"""        kd:
          criterion:
            key: 'KDLoss'
            kwargs:
              student_module_path: '.'
              student_module_io: 'output'
              teacher_module_path: '.'
              teacher_module_io: 'output'
              temperature: {method.temperature}
              alpha: {round(1.0 - method.alpha, 10)}
              reduction: 'batchmean'
          weight: 1.0"""
    else:
        hooks = """    forward_hook:
      input: []
      output: ['avgpool']
"""
        criterion = f"""        ce:
          criterion:
            key: 'CrossEntropyLoss'
            kwargs:
              reduction: 'mean'
          criterion_wrapper:
            key: 'SimpleLossWrapper'
            kwargs:
              input:
                is_from_teacher: False
                module_path: '.'
                io: 'output'
              target:
                uses_label: True
          weight: 1.0
        hint:
          criterion:
            key: 'MSELoss'
            kwargs:
              reduction: 'mean'
          criterion_wrapper:
            key: 'SimpleLossWrapper'
            kwargs:
              input:
                is_from_teacher: False
                module_path: 'avgpool'
                io: 'output'
              target:
                is_from_teacher: True
                module_path: 'avgpool'
                io: 'output'
          weight: {method.beta}"""
    return f"""datasets:
{_dataset_yaml("peers/train", work.data / "train", train_tf)}
{_dataset_yaml("peers/val", work.data / "val", val_tf)}
models:
  teacher_model:
    key: '{work.teacher}'
    kwargs:
      num_classes: {work.num_classes}
    src_ckpt: '{work.teacher_ckpt}'
  student_model:
    key: '{work.student}'
    kwargs:
      num_classes: {work.num_classes}
    src_ckpt:
    dst_ckpt:

train:
  log_freq: 1000
  num_epochs: {work.epochs}
  train_data_loader:
    {_loader_yaml("peers/train", "RandomSampler", work.batch_size, work.workers, True)}
  val_data_loader:
    {_loader_yaml("peers/val", "SequentialSampler", work.batch_size, work.workers, False)}
  teacher:
    forward_proc: 'forward_batch_only'
    sequential: []
{hooks}    requires_grad: False
  student:
    forward_proc: 'forward_batch_only'
    adaptations:
    sequential: []
    frozen_modules: []
{hooks}    requires_grad: True
  optimizer:
    key: 'SGD'
    kwargs:
      lr: {work.lr}
      momentum: {work.momentum}
      weight_decay: {work.weight_decay}
  criterion:
    key: 'WeightedSumLoss'
    kwargs:
      sub_terms:
{criterion}

test:
  test_data_loader:
    {_loader_yaml("peers/val", "SequentialSampler", work.batch_size, work.workers, False)}
"""


def torchdistill_command(
    python: str, work: Work, method: Method, config: Path, result: Path
) -> Command:
    """``torchdistill_kd.py --config`` on a config written for the work."""
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(torchdistill_yaml(work, method))
    argv = [python, str(HERE / "torchdistill_kd.py"), "--config", str(config), "--device", "cpu"]
    argv += ["--seed", str(work.seed), "--result", str(result)]
    if work.max_steps:
        argv += ["--max-steps", str(work.max_steps)]
    return Command(argv, result)
