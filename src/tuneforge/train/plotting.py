"""training_loss.png, eval_loss.png and a stage's metric plots (accuracy, rewards) from trainer_log.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Exponential moving average with a bias correction, heavier for longer curves."""
    if not values:
        return []
    if weight is None:
        weight = min(0.9, 1.8 * (1 / (1 + 2.718 ** (-0.05 * len(values))) - 0.5))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def read_log(output_dir: str) -> list[dict]:
    path = Path(output_dir) / "trainer_log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _figure(output_dir: str, filename: str, title: str, ylabel: str, draw) -> str:
    """Draws one figure with `draw(ax)`, saves it in output_dir; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    draw(ax)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(output_dir) / filename
    fig.savefig(path)
    plt.close(fig)
    return str(path)


def plot_losses(output_dir: str) -> list[str]:
    """Writes the loss plots that the log has data for; returns their paths."""
    records = read_log(output_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    name = Path(output_dir).name

    def draw_eval(ax) -> None:
        ax.plot(*zip(*evals), "o-", color="#d2691e", label="eval loss")

    def draw_train(ax) -> None:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#9ab", alpha=0.7, label="training loss")
        ax.plot(steps, smooth(list(losses)), color="#1f5fa8", label="smoothed")
        if evals:
            draw_eval(ax)

    written = []
    if train:
        written.append(_figure(output_dir, "training_loss.png", f"training loss of {name}", "loss", draw_train))
    if evals:
        written.append(_figure(output_dir, "eval_loss.png", f"eval loss of {name}", "loss", draw_eval))
    return written


def plot_metrics(output_dir: str, plots: dict[str, list[str]]) -> list[str]:
    """One figure per entry of `plots` (file name -> metric keys of trainer_log.jsonl, e.g. "accuracy" and
    "eval_accuracy"), each key a curve (smoothed as the loss when it is a training metric); figures whose
    keys never appear in the log are skipped. Returns the paths written."""
    records = read_log(output_dir)
    name = Path(output_dir).name
    written = []
    for filename, keys in plots.items():
        curves = {k: [(r["step"], r[k]) for r in records if r.get(k) is not None] for k in keys}
        curves = {k: v for k, v in curves.items() if v}
        if not curves:
            continue

        def draw(ax, curves=curves) -> None:
            for key, points in curves.items():
                steps, values = zip(*points)
                if key.startswith("eval_"):
                    ax.plot(steps, values, "o-", label=key)
                else:
                    line, = ax.plot(steps, values, alpha=0.35)
                    ax.plot(steps, smooth(list(values)), color=line.get_color(), label=f"{key} (smoothed)")

        label = Path(filename).stem.replace("training_", "")
        written.append(_figure(output_dir, filename, f"{label} of {name}", label, draw))
    return written
