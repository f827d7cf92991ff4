"""Benchmark: reading a flat per-token table someone shared (`animacy validate FLAT --roles-csv R`), as
CSV (the baseline, measured in the same run) and as Parquet, which is read as Parquet row group by row
group; before, it was copied to CSV first and read as that. The run's tables are exported as the flat CSV,
copied to Parquet with DuckDB, and each is opened in its own process (its peak memory its own).

    .venv/bin/python benchmarks/intake.py --small              # seconds, for a smoke run
    .venv/bin/animacy simulate --out /tmp/simbig --roles 40 --controls 4 --tasks 5 --replicates 3 \\
        --tokens 200 --magnitudes 0,1,2,4,8 && .venv/bin/python benchmarks/intake.py --run /tmp/simbig
                                                                # 11.5 million rows, a 1.5 GB CSV
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time

from aggregate import start


def _child(source: str, roles: str) -> None:
    from animacy.sources import open_source

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        open_source(source, work, roles)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    started = start(__doc__, _child, ("SOURCE", "ROLES"))
    if started is None:
        return
    work, run = started
    import duckdb

    from animacy.flatcsv import export_flat_csv
    from animacy.run import Run

    csv, roles = export_flat_csv(Run(run), work / "flat.csv")[:2]
    parquet = work / "flat.parquet"
    duckdb.execute("COPY (SELECT * FROM read_csv_auto(?)) TO ? (FORMAT parquet)", [str(csv), str(parquet)])
    print(f"flat table: CSV {csv.stat().st_size / 1e6:.0f} MB, Parquet {parquet.stat().st_size / 1e6:.0f} MB")
    res = {}
    for name, source in (("CSV", csv), ("Parquet", parquet)):
        out = subprocess.run([sys.executable, __file__, "--child", str(source), str(roles)], capture_output=True,
                             text=True)
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{name:8s} {res[name]['seconds']:8.1f} s   peak {res[name]['peak_mb']:6.0f} MB")
    print(f"Parquet read as Parquet: {res['CSV']['seconds'] / res['Parquet']['seconds']:.1f}x faster than the CSV "
          f"baseline, peak memory {res['Parquet']['peak_mb'] / res['CSV']['peak_mb']:.2f}x")


if __name__ == "__main__":
    main()
