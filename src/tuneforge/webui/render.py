"""What the board shows, computed from plain data: the progress line, the loss figure, the tokenized preview
and the estimate table. No Gradio here."""

from __future__ import annotations

import html

STATE_TEXT = {"running": "running", "finished": "finished", "stopped": "stopped (checkpoint kept)", "failed": "failed"}


def progress_html(progress, state) -> str:
    if progress is None:
        return ""
    percent = max(0.0, min(100.0, float(progress.percent or 0)))
    step, total = progress.current_step, progress.total_steps
    if total:
        words = [f"step {step} / {total}", f"{percent:.0f}%"]
    else:  # nothing logged yet, or a job without steps (prediction)
        words = [] if state in ("finished", "failed", "stopped") else ["waiting for the first step"]
    if progress.elapsed:
        words.append(f"elapsed {progress.elapsed}")
    if progress.remaining and percent < 100:
        words.append(f"remaining {progress.remaining}")
    if state:
        who = STATE_TEXT.get(state, state)
    elif progress.in_use:
        who = f"running (pid {progress.in_use.get('pid')}, started outside this page)"
    else:
        who = STATE_TEXT.get(progress.status)
    if who:
        words.append(who)
    if progress.checkpoint:
        words.append(f"last checkpoint: {progress.checkpoint}")
    text = html.escape(" · ".join(words))
    bar = f'<progress max="100" value="{percent:.1f}" style="width:100%"></progress>' if total else ""
    return (f'<div class="tf-progress" data-percent="{percent:.1f}" data-step="{step}" data-total="{total or 0}" '
            f'data-state="{html.escape(str(state or progress.status))}">{bar}<div>{text}</div></div>')


def loss_figure(progress):
    """The run's curves as a matplotlib Figure (no pyplot state): loss and eval_loss (raw, and smoothed as
    plot_loss draws them) on the left, the stage's rewards / accuracies / margins on the right when logged."""
    from matplotlib.figure import Figure

    from ..train.plotting import smooth

    series = dict(progress.series) if progress else {}
    losses = {k: v for k, v in series.items() if "loss" in k}
    others = {k: v for k, v in series.items() if k not in losses}
    fig = Figure(figsize=(10, 3.2), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2 if others else 1, squeeze=False)[0]
    for ax, group in zip(axes, (losses, others)):
        for name, points in sorted(group.items()):
            steps, values = [p[0] for p in points], [p[1] for p in points]
            line, = ax.plot(steps, values, alpha=0.4 if len(values) > 3 else 1.0, label=name, marker=".")
            if len(values) > 3:
                ax.plot(steps, smooth(values), color=line.get_color(), label=f"{name} (smoothed)")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if group:
            ax.legend(loc="best", fontsize="small")
    if not series:
        axes[0].text(0.5, 0.5, "no logged steps yet", ha="center", va="center", transform=axes[0].transAxes)
    return fig


def plot_key(progress) -> str:
    """What the chart shows, to skip sending it again when nothing changed."""
    if progress is None:
        return ""
    return f"{progress.output_dir}|" + ",".join(f"{k}:{len(v)}" for k, v in sorted(progress.series.items()))


def tokenized_html(examples) -> str:
    out = []
    for spans in examples:
        parts = [f'<mark class="tf-trained">{html.escape(t)}</mark>' if trained else html.escape(t)
                 for t, trained in spans]
        out.append(f'<pre class="tf-example" style="white-space:pre-wrap">{"".join(parts)}</pre>')
    return "\n".join(out) or "<p>no examples</p>"


def estimate_markdown(report: dict) -> str:
    from ..estimate.report import keys_text
    if "error" in report:
        return f"**estimate:** {report['error']}"
    gb = 2**30
    lines = ["| part | GB |", "|---|---|"]
    for name, value in report.get("breakdown", {}).items():
        lines.append(f"| {name.replace('_', ' ')} | {value / gb:.2f} |")
    lines.append(f"| **peak per process** | **{report['peak_bytes'] / gb:.2f}** |")
    fits = report.get("fits")
    verdict = {True: "fits this machine", False: "does not fit this machine", None: "fit unknown"}[fits]
    time_info = report.get("time") or {}
    per_epoch = time_info.get("seconds_per_epoch")
    tail = f"; about {per_epoch / 60:.1f} min per epoch" if per_epoch else ""
    fixes = report.get("suggestions") or []
    fix_text = "".join(f"\n- {keys_text(s['keys'])} (~{s['peak_bytes'] / gb:.2f} GB)" for s in fixes
                       if s.get("fits")) if fits is False else ""
    return "\n".join(lines) + f"\n\n**{verdict}**{tail}" + (f"\n\nwould fit with:{fix_text}" if fix_text else "")
