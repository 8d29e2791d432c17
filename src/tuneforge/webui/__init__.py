"""`tuneforge webui`, the board: writes a training config, runs `tuneforge train` on it as a subprocess and
shows the run's progress.

- jobs.py: the subprocesses (start, stop cleanly, kill, state, log tail); a JobTable per page.
- progress.py: a run's step, times, curves, latest checkpoint and log tail, read from its output_dir (runs
  started from the command line show the same).

Whether an output_dir is busy is `tuneforge.train.run_lock.in_use(output_dir)`; `tuneforge train` itself
refuses a second run into a busy folder, from the board or the command line.
"""
