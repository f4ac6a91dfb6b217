"""kdlight side by side with timm and torchdistill on the same work (issue 35); prints one JSON document.

Usage (``make bench-peers`` creates benchmarks/peers/.venv and runs this with the defaults)::

    .venv/bin/python benchmarks/peers/bench_peers.py --output docs/performance/peers.json \\
        --page docs/performance/peers.md          # all cases, 3 rounds (a quiet machine)
    .venv/bin/python benchmarks/peers/bench_peers.py --quick   # tiny: checks that it runs

Every run is a fresh process (the command a user types), with the same ``OMP_NUM_THREADS`` and
DataLoader workers. Rounds rotate the order of the tools (round r starts r places later), so a
drift of the machine reaches them alike. See benchmarks/peers/README.md for the cases.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import prepare  # noqa: E402
import results  # noqa: E402
from commands import (  # noqa: E402
    Command,
    Method,
    Work,
    kdlight_command,
    timm_command,
    torchdistill_command,
)

CASES = (
    "online",
    "sweep4",
    "feature",
)  # online also yields warm_store (kdlight's run on a warm store)


def log(msg: str) -> None:
    print(f"[bench_peers] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {','.join(CASES)}")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-per-class", type=int, default=500)
    p.add_argument("--val-per-class", type=int, default=100)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of every run")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of every run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--alpha", type=float, default=0.9, help="weight of the soft term (kdlight's convention)"
    )
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--sweep-alphas", default="0.5,0.9")
    p.add_argument("--sweep-temperatures", default="2,4")
    p.add_argument("--beta", type=float, default=100.0, help="feature case: hint weight")
    p.add_argument("--teacher", default="resnet18")
    p.add_argument(
        "--student",
        default="mobilenet_v3_small",
        help="torchvision's name (kdlight, torchdistill) of the KD student",
    )
    p.add_argument(
        "--timm-student",
        default="mobilenetv3_small_100",
        help="timm's name for the same network",
    )
    p.add_argument(
        "--student-dropout",
        type=float,
        default=0.2,
        help="torchvision's classifier dropout of --student (given to timm as --drop)",
    )
    p.add_argument(
        "--feature-student",
        default="resnet18",
        help="the feature case's student, built by this name in all three: its pooled features "
        "must be as wide as the teacher's (torchdistill's MSELoss takes no projection)",
    )
    p.add_argument(
        "--extra-teachers",
        default="resnet50",
        help="comma-separated torchvision names: the online and sweep4 cases again with each "
        "(random weights), rows named '<case> · teacher <name>'",
    )
    p.add_argument(
        "--teacher-ckpt",
        default=None,
        help="a trained torchvision teacher state dict (default: random)",
    )
    p.add_argument(
        "--zero-init-residual",
        action="store_true",
        help="random teachers start each residual block's last BatchNorm at zero "
        "(torchvision's zero_init_residual; their files get a _zir suffix)",
    )
    p.add_argument("--max-steps", type=int, default=0, help="steps per epoch (0: whole epochs)")
    p.add_argument(
        "--train-teacher",
        type=int,
        default=0,
        metavar="EPOCHS",
        help="train the teacher on the subset's train/ for EPOCHS (plain PyTorch, once) "
        "instead of random weights",
    )
    p.add_argument(
        "--vary-seeds",
        action="store_true",
        help="round r runs the work's seed (42) + r (accuracy spread)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes, 1 round: checks it runs; numbers mean nothing",
    )
    p.add_argument("--archive", default=None, help="cifar10-jpeg.tar.gz")
    p.add_argument("--work-dir", default=str(HERE / "work"))
    p.add_argument("--kdlight-python", default=str(REPO / ".venv" / "bin" / "python"))
    p.add_argument("--peers-python", default=str(HERE / ".venv" / "bin" / "python"))
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--page", default=None, help="rewrite the table in this Markdown page")
    p.add_argument(
        "--table",
        default=None,
        help="which table of --page to rewrite (default: the speed table; e.g. accuracy)",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.rounds, a.epochs, a.train_per_class, a.val_per_class, a.max_steps = 1, 1, 30, 5, 2
    return a


# ---- running one command -------------------------------------------------------------------


def execute(cmd: Command, log_path: Path, threads: int) -> tuple[float, int]:
    """Run ``cmd``; its wall seconds and peak RSS (KB: the largest process of its tree, from wait4)."""
    env = dict(os.environ)
    env.update(
        {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    )
    for key, value in cmd.env.items():
        env[key] = value + (os.pathsep + env[key] if env.get(key) else "")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd.argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-25:]
        raise RuntimeError(
            f"{' '.join(cmd.argv[:3])} ... failed ({proc.returncode}); see {log_path}:\n"
            + "\n".join(tail)
        )
    return wall, int(usage.ru_maxrss)


def read_kdlight(run_dir: Path) -> tuple[list[dict], float | None]:
    clock = json.loads((run_dir / "peer_clock.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return clock["epochs"], metrics.get("test/acc_last")


def read_peer(result: Path) -> tuple[list[dict], float | None]:
    doc = json.loads(result.read_text())
    return doc["epochs"], doc.get("acc")


def measure(cmd: Command, logs: Path, threads: int, kdlight: bool) -> dict[str, Any]:
    wall, rss = execute(cmd, logs, threads)
    epochs, acc = read_kdlight(cmd.result) if kdlight else read_peer(cmd.result)
    return results.run_summary(epochs, wall, rss, acc)


def measure_kdlight_sweep(cmd: Command, logs: Path, threads: int, n: int) -> dict[str, Any]:
    """One Hydra multirun of ``n`` jobs: its wall time, and each job's epochs and accuracy."""
    wall, rss = execute(cmd, logs, threads)
    runs = []
    for k in range(n):
        epochs, acc = read_kdlight(cmd.result / str(k))
        runs.append(results.run_summary(epochs, 0.0, rss, acc))
    out = results.combine_runs(runs)
    out["wall_s"] = round(wall, 3)
    return out


# ---- cases ---------------------------------------------------------------------------------


def rotate(items: list, r: int) -> list:
    return items[r % len(items) :] + items[: r % len(items)]


def run_case(
    name: str, a: argparse.Namespace, work: Work, wd: Path, suffix: str = ""
) -> list[dict[str, Any]]:
    """The case's rows (``online`` also gives ``warm_store``), each name followed by ``suffix``."""
    folder = f"{name}_teacher_{work.teacher}" if suffix else name  # Hydra-safe characters only
    rows = _run_case(name, a, work, wd / "runs" / folder)
    for row in rows:
        row["name"] += suffix
    return rows


def _run_case(name: str, a: argparse.Namespace, work: Work, cdir: Path) -> list[dict[str, Any]]:
    kd = Method("kd", a.alpha, a.temperature, a.beta)
    kpy, ppy, th = a.kdlight_python, a.peers_python, a.threads
    rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in (*results.TOOLS, "kdlight_warm")}
    shutil.rmtree(cdir, ignore_errors=True)  # the harness's own folder: an earlier call's runs go

    if name == "online":
        warm_store = cdir / "warm_store"
        log("online: filling kdlight's store once (the warm_store runs reuse it; not timed)")
        fill = kdlight_command(kpy, work, kd, cdir / "fill", warm_store)
        cold = measure(fill, cdir / "fill.log", th, True)

        def one(tool: str, r: int) -> dict[str, Any]:
            rd = cdir / f"r{r}"
            if tool == "kdlight":
                return measure(
                    kdlight_command(kpy, work, kd, rd / "kdlight", None),
                    rd / "kdlight.log",
                    th,
                    True,
                )
            if tool == "kdlight_warm":
                cmd = kdlight_command(kpy, work, kd, rd / "kdlight_warm", warm_store)
                return measure(cmd, rd / "kdlight_warm.log", th, True)
            if tool == "timm":
                return measure(
                    timm_command(ppy, work, kd, rd / "timm.json"), rd / "timm.log", th, False
                )
            cmd = torchdistill_command(
                ppy, work, kd, rd / "torchdistill.yaml", rd / "torchdistill.json"
            )
            return measure(cmd, rd / "torchdistill.log", th, False)

        tools = ["kdlight", "timm", "torchdistill", "kdlight_warm"]
    elif name == "sweep4":
        grid = [
            replace(kd, alpha=float(al), temperature=float(t))
            for al in a.sweep_alphas.split(",")
            for t in a.sweep_temperatures.split(",")
        ]
        cold = None

        def one(tool: str, r: int) -> dict[str, Any]:
            rd = cdir / f"r{r}"
            if tool == "kdlight":
                store = rd / "store"  # fresh each round: the first job fills it, the rest reuse it
                shutil.rmtree(store, ignore_errors=True)
                cmd = kdlight_command(kpy, work, kd, rd / "kdlight", store, sweep=grid)
                return measure_kdlight_sweep(cmd, rd / "kdlight.log", th, len(grid))
            runs = []
            for k, m in enumerate(grid):
                if tool == "timm":
                    cmd = timm_command(ppy, work, m, rd / f"timm_{k}.json")
                else:
                    cmd = torchdistill_command(
                        ppy, work, m, rd / f"td_{k}.yaml", rd / f"td_{k}.json"
                    )
                runs.append(measure(cmd, rd / f"{tool}_{k}.log", th, False))
            return results.combine_runs(runs)

        tools = list(results.TOOLS)
    elif name == "feature":
        feat = Method("feature", beta=a.beta)
        fs = a.feature_student
        work = replace(work, student=fs, timm_student=fs, student_dropout=0.0)
        cold = None

        def one(tool: str, r: int) -> dict[str, Any]:
            rd = cdir / f"r{r}"
            if tool == "kdlight":
                cmd = kdlight_command(kpy, work, feat, rd / "kdlight", None)
                return measure(cmd, rd / "kdlight.log", th, True)
            if tool == "timm":
                return measure(
                    timm_command(ppy, work, feat, rd / "timm.json"), rd / "timm.log", th, False
                )
            cmd = torchdistill_command(
                ppy, work, feat, rd / "torchdistill.yaml", rd / "torchdistill.json"
            )
            return measure(cmd, rd / "torchdistill.log", th, False)

        tools = list(results.TOOLS)
    else:
        raise SystemExit(f"--cases: unknown case {name!r}; valid: {', '.join(CASES)}")

    base = work
    for r in range(a.rounds):
        if a.vary_seeds:  # the closures above read `work` when called: round r runs seed + r
            work = replace(base, seed=base.seed + r)
        for tool in rotate(tools, r):
            log(f"{name}: round {r + 1}/{a.rounds}: {tool}")
            rounds[tool].append(one(tool, r))
            log(f"  {json.dumps(rounds[tool][-1])}")

    if name == "online":
        online = results.case_row("online", rounds, "teacher online in every tool")
        warm_rounds = {
            "kdlight": rounds["kdlight_warm"],
            "timm": rounds["timm"],
            "torchdistill": rounds["torchdistill"],
        }
        warm = results.case_row(
            "warm_store",
            warm_rounds,
            "kdlight on a warm teacher store; the peers' runs are the online case's (they have no store)",
        )
        warm["kdlight_cold_fill_run"] = cold
        return [online, warm]
    note = {
        "sweep4": f"alpha {a.sweep_alphas} x T {a.sweep_temperatures}: kdlight one Hydra multirun sharing one store "
        "(filled by its first job); each peer 4 separate runs; img/s over all 4 runs' training, wall the sum",
        "feature": "hint on the pooled pre-logit features (avgpool): CE + beta * MSE, teacher online",
    }[name]
    return [results.case_row(name, rounds, note)]


def teacher_words(a: argparse.Namespace, path: Path) -> str:
    if a.teacher_ckpt:
        return f"weights {a.teacher_ckpt}"
    if a.train_teacher:
        info = json.loads(Path(f"{path}.json").read_text())
        return (
            f"trained {info['epochs']} epochs on train/ (plain PyTorch, seed {info['seed']}): "
            f"{100 * info['val_acc']:.2f}% on val/"
        )
    if a.zero_init_residual:
        return "random weights (seed 0, zero_init_residual)"
    return "random weights (seed 0)"


def random_teacher(a: argparse.Namespace, wd: Path, name: str) -> Path:
    """The random ``name`` every tool loads (``--zero-init-residual``: a file of its own)."""
    zir = a.zero_init_residual
    path = wd / f"teacher_{name}_random{'_zir' if zir else ''}.pt"
    return prepare.teacher(path, name, zero_init_residual=zir)


def machine_info(kdlight_python: str) -> dict[str, Any]:
    versions = subprocess.run(
        [
            kdlight_python,
            "-c",
            "import torch, lightning; print(torch.__version__, lightning.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    cpu = ""
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": versions[0] if versions else None,
        "lightning": versions[1] if len(versions) > 1 else None,
    }


def peer_versions(peers_python: str) -> dict[str, str]:
    code = "import torch, torchvision, timm, torchdistill; print(torch.__version__, torchvision.__version__, timm.__version__, torchdistill.__version__)"
    out = subprocess.run([peers_python, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(
            f"the peers' venv ({peers_python}) is missing or broken: run `make bench-peers` to create it."
        )
    keys = ("torch", "torchvision", "timm", "torchdistill")
    return dict(zip(keys, out.stdout.split(), strict=False))


def main(argv: list[str] | None = None) -> None:
    a = parse_args(argv)
    wd = Path(a.work_dir).resolve()
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    for c in cases:
        if c not in CASES:
            raise SystemExit(f"--cases: unknown case {c!r}; valid: {', '.join(CASES)}")
    peers = peer_versions(a.peers_python)
    archive = prepare.find_archive(a.archive)
    data = wd / f"cifar10_{a.train_per_class}x{a.val_per_class}"
    subset = prepare.subset(archive, data, a.train_per_class, a.val_per_class)
    if a.teacher_ckpt:
        teacher = Path(a.teacher_ckpt).resolve()
    elif a.train_teacher:
        name = f"teacher_{a.teacher}_{a.train_per_class}x_{a.train_teacher}ep.pt"
        log(f"training the teacher once ({a.train_teacher} epochs) -> {wd / name}")
        teacher = prepare.trained_teacher(wd / name, data, a.teacher, a.train_teacher)
    else:
        teacher = random_teacher(a, wd, a.teacher)
    work = Work(
        data=data,
        teacher_ckpt=teacher,
        teacher=a.teacher,
        student=a.student,
        timm_student=a.timm_student,
        student_dropout=a.student_dropout,
        batch_size=a.batch_size,
        workers=a.workers,
        epochs=a.epochs,
        lr=a.lr,
        max_steps=a.max_steps,
    )
    settings = {
        "data": subset,
        "teacher": f"torchvision {a.teacher}, " + teacher_words(a, teacher),
        "student": f"{a.student} (kdlight and torchdistill: torchvision's; timm: its "
        f"{a.timm_student}, the same network; classifier dropout {a.student_dropout})",
        "feature_student": f"{a.feature_student} (all three by this name)",
        "extra_teachers": a.extra_teachers or None,
        "image_size": work.image_size,
        "batch_size": a.batch_size,
        "epochs": a.epochs,
        "max_steps_per_epoch": a.max_steps or None,
        "optimizer": f"SGD lr {a.lr} momentum {work.momentum} wd {work.weight_decay}, no schedule",
        "kd": f"alpha {a.alpha} (soft term), T {a.temperature}",
        "threads": a.threads,
        "workers": a.workers,
        "rounds": a.rounds,
        "seeds": [work.seed + r for r in range(a.rounds)] if a.vary_seeds else [work.seed],
        "quick": a.quick,
        "peers": peers,
    }
    load_start = [round(x, 2) for x in os.getloadavg()]  # before the probe below loads the CPU
    machine = machine_info(a.kdlight_python)  # once: a subprocess that imports torch
    machine["loadavg_start"] = load_start
    rows: list[dict[str, Any]] = []

    def save() -> dict[str, Any]:
        """The document of the rows so far, written to ``--output`` after every case, so a
        failing case (or a stop) keeps the cases measured before it."""
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        doc = results.document(machine, settings, rows)
        if a.output:
            Path(a.output).write_text(json.dumps(doc, indent=1) + "\n")
        return doc

    for c in cases:
        rows += run_case(c, a, work, wd)
        save()
    for t in [t.strip() for t in a.extra_teachers.split(",") if t.strip()]:
        heavy = replace(work, teacher=t, teacher_ckpt=random_teacher(a, wd, t))
        for c in ("online", "sweep4"):
            if c in cases:
                rows += run_case(c, a, heavy, wd, suffix=f" · teacher {t}")
                save()
    doc = save()
    print(json.dumps(doc, indent=1))
    table = results.markdown_table(doc)
    if a.page:
        page = Path(a.page)
        page.write_text(results.replace_table(page.read_text(), table, a.table))
    log(table)


if __name__ == "__main__":
    main()
