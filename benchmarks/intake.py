"""Benchmark: opening a flat per-token table someone shared (what `animacy validate FLAT --roles-csv R`
does), three ways in the same run, each in its own process (its peak memory its own):

- CSV through the careful reader alone (pandas, value by value): the baseline, how every CSV was read
  before; it is now the fallback for a file Arrow will not take as it stands;
- CSV parsed and typed by Arrow, block by block (what a clean CSV gets now);
- Parquet, read as Parquet row group by row group (before, it was copied to CSV and read as that).

The run's tables are exported as the flat CSV and copied to Parquet with DuckDB.

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


def _child(source: str, roles: str, careful: str) -> None:
    from animacy import flatcsv
    from animacy.sources import open_source

    if careful == "careful":  # Arrow declines every file: the careful reader reads it
        def decline(*args, **kwargs):
            raise flatcsv._NotAsItStands
            yield

        flatcsv._arrow_csv_chunks = decline
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        open_source(source, work, roles)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    started = start(__doc__, _child, ("SOURCE", "ROLES", "READER"))
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
    for name, source, reader in (("CSV, careful reader (baseline)", csv, "careful"), ("CSV, Arrow", csv, "arrow"),
                                 ("Parquet", parquet, "arrow")):
        out = subprocess.run([sys.executable, __file__, "--child", str(source), str(roles), reader],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
        res[name] = json.loads(out.stdout.strip().splitlines()[-1])
        base = res["CSV, careful reader (baseline)"]
        print(f"{name:32s} {res[name]['seconds']:8.1f} s   peak {res[name]['peak_mb']:6.0f} MB   "
              f"{base['seconds'] / res[name]['seconds']:5.1f}x faster than the baseline")


if __name__ == "__main__":
    main()
