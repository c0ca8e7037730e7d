"""What every benchmark workload shares: where the SQL lives, the `medlake sql` runner, the
build and machine facts recorded with each result, the result files, and the common
command-line arguments. `run.py` and `medallion.py` both import it (neither imports the other
for these)."""

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sql_file(name, workload="refresh", **values):
    text = (HERE / workload / name).read_text()
    for key, value in values.items():
        text = text.replace("{" + key + "}", str(value))
    return text


class Medlake:
    def __init__(self, binary, warehouse):
        self.binary = binary
        self.warehouse = warehouse

    def run(self, *statements, timing=False, csv=False):
        args = [self.binary, "sql", "--warehouse", str(self.warehouse)]
        if timing:
            args.append("--timing")
        if csv:
            args += ["--format", "csv"]
        for statement in statements:
            args.append(f"--command={statement}")
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"medlake failed: {done.stderr.strip()}\nstatements: {statements}")
        return done.stdout

    def timed(self, *statements):
        """Runs the statements in one process; returns each one's time in ms (as medlake
        measured it: planning, execution and commit, not process start)."""
        out = self.run(*statements, timing=True)
        times = [float(t) for t in re.findall(r"^Time: ([0-9.]+) ms", out, re.M)]
        if len(times) != len(statements):
            sys.exit(f"expected {len(statements)} timings, got {out}")
        return times

    def rows(self, query):
        """The rows of `query` (its CSV output: fields with commas or quotes are quoted)."""
        return list(csv.reader(io.StringIO(self.run(query, csv=True))))[1:]


WORKLOADS = ["refresh", "medallion", "warehouse", "merge", "ingest", "serve", "dashboard", "spill",
             "alerting", "mllp", "cluster", "threshold"]


def write_results_md(workload, section):
    """Replaces the workload's section of RESULTS.md, keeping the others."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    header, *rest = re.split(r"(?m)^## ", text)
    sections = {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in rest}
    sections[workload] = f"## {workload}\n\n{section.rstrip()}\n"
    order = [w for w in WORKLOADS if w in sections] + sorted(set(sections) - set(WORKLOADS))
    path.write_text(header.rstrip() + "\n\n" + "\n".join(sections[w] for w in order))


def build_of(binary):
    resolved = str(Path(binary).resolve())
    return "release" if "/release/" in resolved else "debug" if "/debug/" in resolved else "unknown"


def load_average():
    return [round(x, 2) for x in os.getloadavg()]


def query_text(name, workload, **values):
    """A .sql file without its comment lines (to embed or send as one statement)."""
    lines = sql_file(name, workload, **values).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("--")).strip()


def write_result(args, name, result, table, intro):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str))
    if result["medlake"]["build"] != "release":
        table += f"\n\nThe medlake binary is a {result['medlake']['build']} build: its figures say little; build with --release to measure."
    print(table)
    if args.write_md:
        write_results_md(name, f"{intro}\n\n{table}\n")


def workload_parser(sub, name, help):
    """A workload's subcommand with the arguments every workload takes."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("--bin", default="target/release/medlake", help="the medlake binary")
    parser.add_argument("--write-md", action="store_true", help="also write benches/RESULTS.md")
    parser.add_argument("--out", default=str(HERE / "results"), help="where the JSON results go")
    return parser
