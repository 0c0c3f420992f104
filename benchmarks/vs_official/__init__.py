"""Side by side with the official OCR-CFT code (`QinwenLuo/OCR-CFT`) on the same local dataset (issue #19).

Run (the user points it at a checkout and a Python with torch; nothing is downloaded, the checkout is
only read, a scratch copy of it under --work_dir is what runs):

  export MINARI_DATASETS_PATH=<store holding the dataset>   # optional: default, where our loader finds it
  python -m benchmarks.vs_official.run --official_dir=<OCR-CFT checkout> \
      --official_python=<venv>/bin/python --dataset=o2o/hopper/medium-v0 --agent=o2td3 --seeds=3 \
      --budget=quick
  python -m benchmarks.vs_official.run --official_dir=<OCR-CFT checkout> \
      --official_python=<venv>/bin/python --dataset=o2o/hopper/medium-v0 --agent=o2sac \
      --seeds=3 --official_seeds=1 --budget=quick
  python -m benchmarks.vs_official.report --out=benchmarks/results/vs_official    # table.md again

The official Python needs torch (CPU wheel), pyrallis, tensorboardX, tqdm, pyyaml, minari[hdf5] and
gymnasium[mujoco] (the stand-ins' needs); never add them to our requirements.

What runs, per seed (`run.py`): the official `offline/td3_bc.py` -> `finetune/O2TD3.py` (or
`offline/cql.py` -> `finetune/O2SAC.py`), unmodified, through the `d4rl`/`gym`/`wandb` stand-ins of
`benchmarks/vs_corl/shim/`, with our --budget's step counts (quick: offline 100k TD3+BC / 10k CQL,
re-evaluation 50k, alignment 5k, online 10k, warm-up 1k, evaluation every 2k x 5 episodes) written
into a scratch copy of its per-dataset YAML; the official network sizes (O2TD3 2x256 actor and
critic, O2SAC 3x256). Then our `experiments.finetune --agent=... --budget=...` with
--hidden_dims/--critic_hidden at the same sizes, all seeds vmapped. Every piece leaves a marker;
a rerun continues where the last stopped. --pretrain_steps ... --eval_episodes override step counts on
both sides (smoke tests; tagged `<budget>-custom-<hash>`, kept apart from the budget's own results).

What it reports (`report.py`, `benchmarks/results/vs_official/table.md`): per seed and mean ± std of
each side, π_off, π_on (after alignment), π_on − π_off, the actor's drift after alignment (RMS of
π_on − π_off on the first 20k dataset states, deterministic actions; the official actors are measured
by `official_drift.py` under the official Python, ours from the alignment checkpoint), the early
online minimum (π_on and the evaluations in the first 10% of online steps, widened to the first
evaluation when that window has none, as at the quick budget) and the final score; and the
acceptance check: our seed-mean π_on − π_off and drift lie within [min, max] of the official seeds.

What the official code needs here (no change to its code): the stand-ins (the old gym API they already
give is all it uses); `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`, because torch >= 2.6 loads with
weights_only=True and the official CQL checkpoint pickles a module (`sac_log_alpha`), so `O2SAC.py`'s
`torch.load` fails without it (the TD3+BC checkpoint loads either way; the release pinned torch 2.4);
`device: cpu` in the YAML and --device cpu.

Cost (2-core CPU; smoke runs of both agents measured while the machine carried a load of ~12-14):
official TD3+BC ~33 updates/s, O2TD3 re-evaluation ~65/s, alignment ~17/s (one evaluation included),
official CQL ~1.3 updates/s, O2SAC re-evaluation ~25/s, alignment ~7.5/s (1 torch thread each);
ours, TD3+BC at 2x256 with 3 seeds vmapped, 64 updates/s (192 seed-updates/s), plus ~1.5-2.5 min of
compilation per chain. Extrapolated at that load: --agent=o2td3 --seeds=3 takes ~75 min per official
seed (~3.8 h for 3) plus ~50 min for ours; --agent=o2sac with 1 official seed ~5-6 h (CQL 10k ~2 h,
then 90k SAC updates online at UTD 10). On a quiet machine expect roughly a third of that (CORL's
TD3+BC ran ~100 updates/s here before); --official_threads=2 may help the PyTorch side when nothing
else runs.
"""
