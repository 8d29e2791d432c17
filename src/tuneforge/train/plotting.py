"""training_loss.png and eval_loss.png from trainer_log.jsonl."""

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


def plot_losses(output_dir: str) -> list[str]:
    """Writes the plots that the log has data for; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(output_dir)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    name = Path(output_dir).name
    written = []

    def figure(filename: str, title: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
        draw(ax)
        ax.set(xlabel="step", ylabel="loss", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = Path(output_dir) / filename
        fig.savefig(path)
        plt.close(fig)
        written.append(str(path))

    def draw_eval(ax) -> None:
        ax.plot(*zip(*evals), "o-", color="#d2691e", label="eval loss")

    def draw_train(ax) -> None:
        steps, losses = zip(*train)
        ax.plot(steps, losses, color="#9ab", alpha=0.7, label="training loss")
        ax.plot(steps, smooth(list(losses)), color="#1f5fa8", label="smoothed")
        if evals:
            draw_eval(ax)

    if train:
        figure("training_loss.png", f"training loss of {name}", draw_train)
    if evals:
        figure("eval_loss.png", f"eval loss of {name}", draw_eval)
    return written
