"""Benchmark: mixed-model fit time at the full study size, statsmodels against lme4, in the same run.

One derivation of a full-size study: 120 roles x 10 tasks x 5 replicates x 8 magnitudes = 48,000
per-response rows. Fits the default model `mean_log_prob ~ magnitude * group + (magnitude | role) +
(1 | response_id)`, and the crossed variant with `+ (1 | task_id)`, with each backend; prints times,
the ratio and the largest relative difference between the backends' fixed effects, plus peak memory.

    .venv/bin/python benchmarks/fit_time.py [--roles 40] [--skip-crossed-statsmodels]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

from animacy.analysis.aggregate import response_means
from animacy.analysis.mixed import r_available
from animacy.analysis.simulate import SimConfig, simulate
from animacy.analysis.steering import SteeringModel, fit_steering
from animacy.run import Run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--roles", type=int, default=40, help="roles per group")
    p.add_argument("--skip-crossed-statsmodels", action="store_true", help="statsmodels' crossed fit is slow")
    a = p.parse_args()
    cfg = SimConfig(roles_per_group=a.roles, controls=0, tasks=10, replicates=5, tokens=50,
                    magnitudes=(0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0), derivations=("role_minus_assistant_response",))
    run = Run(simulate(tempfile.mkdtemp(prefix="animacy-fit-") + "/run", cfg, quiet=True))
    means = response_means(run)
    print(f"per-response rows: {int((means.condition == 'steered').sum()):,}")
    backends = ["statsmodels", *(["lme4"] if r_available() else [])]
    for name, model in (("nested", SteeringModel()), ("crossed", SteeringModel(task=True, random_slopes=False))):
        times, fixed = {}, {}
        for b in backends:
            if b == "statsmodels" and name == "crossed" and a.skip_crossed_statsmodels:
                continue
            t = time.perf_counter()
            fixed[b] = fit_steering(means, model, b).fixed.set_index("term")["estimate"]
            times[b] = time.perf_counter() - t
            print(f"{name:8s} {model.formula()}  {b:11s} {times[b]:8.2f} s")
        if len(times) == 2:
            rel = ((fixed["statsmodels"] - fixed["lme4"]).abs() / fixed["lme4"].abs()).max()
            print(f"{name:8s} statsmodels / lme4 time ratio: {times['statsmodels'] / times['lme4']:.1f}x   "
                  f"max relative difference of fixed effects: {rel:.1e}")
    print(f"peak memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
