"""``nasx compare <run or sweep dir>...``: every ``results.json`` under the given directories, side by side.

The runs' own overrides (``<run>/.hydra/overrides.yaml``) say what was swept: a key whose value differs between the
runs found (``reward``, ``budget``, ``seed``, ``train.loss.bct.weight``, ...) becomes a column, so R1/R2/R3 of one
sweep, or several sweeps together, read as one table without W&B. It

* prints a table: the run, the swept keys, then the headline metrics (``--metrics`` adds any other);
* writes ``compare.csv``: one row per run, every swept key and every scalar of its ``results.json`` (nested keys
  joined with dots, e.g. ``retrain.test_top1``; a results key named like a swept key gets a ``results.`` prefix,
  e.g. ``results.reward`` beside the swept ``reward``);
* writes ``compare.png``: the search reward and each headline metric against MFLOPs, one colour per value of a
  swept key (``--color``; default: the first swept key that is not the seed).

Both files go to ``--out`` (default: the first directory given), atomically. A directory without any
``results.json`` is a one-line error.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import yaml

from nasx import artifacts
from nasx.errors import ConfigError

# Shown in the console table (when present in the results); compare.csv holds every scalar.
HEADLINE = ("mflops", "params", "search_reward", "supernet_test_top1", "retrain.test_top1", "hypervolume",
            "average.elite_error", "average.expanded_error")
SEED_KEYS = ("seed",)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """The scalar leaves of a JSON object, keyed by their dotted path; lists and nulls are left out."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, (bool, int, float, str)):
        out[prefix[:-1]] = obj
    return out


def _overrides(run_dir: Path) -> dict[str, str]:
    """``key -> value`` of the run's command-line overrides (empty when the run has no ``.hydra/overrides.yaml``)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"nasx compare: '{path}' is unreadable ({type(e).__name__})") from None
    out = {}
    for o in items if isinstance(items, list) else []:
        if isinstance(o, str) and "=" in o:
            k, v = o.split("=", 1)
            out[k.lstrip("+~")] = v
    return out


def collect(dirs: list[str | Path]) -> list[dict]:
    """One record per ``results.json`` under ``dirs``: its directory, overrides and flattened results."""
    runs = []
    for d in map(Path, dirs):
        if not d.exists():
            raise ConfigError(f"nasx compare: '{d}': no such directory")
        if not d.is_dir():
            raise ConfigError(f"nasx compare: '{d}' is not a directory (give a run or sweep directory)")
        found = sorted(p for p in d.rglob("results.json") if not any(part.startswith(".") for part in p.parts))
        if not found:
            raise ConfigError(f"nasx compare: no results.json under '{d}' (has any run in it finished its "
                              f"evaluate stage?)")
        for path in found:
            try:
                results = artifacts.read_json(path)
            except Exception as e:  # a torn or foreign file: name it
                raise ConfigError(f"nasx compare: '{path}' is not readable JSON ({type(e).__name__})") from None
            runs.append({"dir": path.parent, "overrides": _overrides(path.parent), "results": flatten(results)})
    return runs


def swept_keys(runs: list[dict]) -> list[str]:
    """The override keys whose values differ between the runs (a key a run does not set counts as its default),
    in first-seen order."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r["overrides"] if k not in keys]
    return [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]


def _label(run_dir: Path, roots: list[Path]) -> str:
    for root in roots:
        try:
            rel = run_dir.resolve().relative_to(root.resolve())
            return str(Path(root.name) / rel) if str(rel) != "." else root.name
        except ValueError:
            continue
    return str(run_dir)


def _fmt(v) -> str:
    if v is None or v == "":
        return "—"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
    return str(v)


def table(runs: list[dict], roots: list[Path], extra: list[str] = ()) -> tuple[list[str], list[list[str]], list[dict]]:
    """(columns, formatted rows, CSV rows). The CSV has every swept key and every scalar of any run's results."""
    swept = swept_keys(runs)
    metrics = [m for m in (*HEADLINE, *extra) if any(m in r["results"] for r in runs)]
    missing = [m for m in extra if m not in metrics]
    if missing:
        raise ConfigError(f"nasx compare: --metrics {', '.join(missing)}: not in any results.json (keys look like "
                          f"{', '.join(sorted(runs[0]['results'])[:6])}, ...)")
    columns = ["run", *swept, *metrics]
    rows, records = [], []
    scalars: list[str] = []
    for r in runs:
        scalars += [k for k in r["results"] if k not in scalars]
    for r in runs:
        label = _label(r["dir"], roots)
        rows.append([label, *(r["overrides"].get(k, "") for k in swept),
                     *(_fmt(r["results"].get(m)) for m in metrics)])
        records.append({"run": label, **{k: r["overrides"].get(k, "") for k in swept},
                        **{(f"results.{k}" if k in swept else k): r["results"].get(k, "") for k in scalars}})
    return columns, rows, records


def write_csv(path: Path, records: list[dict]) -> None:
    fields: list[str] = []
    for rec in records:
        fields += [k for k in rec if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(records)
    artifacts.write_text(path, buf.getvalue())


def plot(path: Path, runs: list[dict], color_key: str | None, extra: list[str] = ()) -> bool:
    """Reward and headline metrics against MFLOPs, one colour per value of ``color_key``. False if no run has
    MFLOPs (then no file is written)."""
    xs = [r["results"].get("mflops") for r in runs]
    if not any(isinstance(x, (int, float)) for x in xs):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ys = [m for m in ("search_reward", "supernet_test_top1", "retrain.test_top1", *extra)
          if m != "mflops" and any(isinstance(r["results"].get(m), (int, float)) for r in runs)]
    if not ys:
        return False
    values = sorted({r["overrides"].get(color_key, "(default)") for r in runs}) if color_key else ["all runs"]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(ys), figsize=(4.2 * len(ys), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], ys):
        for i, value in enumerate(values):
            pts = [(r["results"]["mflops"], r["results"][metric]) for r in runs
                   if isinstance(r["results"].get("mflops"), (int, float))
                   and isinstance(r["results"].get(metric), (int, float))
                   and (not color_key or r["overrides"].get(color_key, "(default)") == value)]
            if pts:
                ax.scatter(*zip(*pts), color=cmap(i % 10), label=str(value), s=36, alpha=0.85)
        ax.set_xlabel("MFLOPs")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0][0].legend(title=color_key or None, fontsize=8)
    fig.suptitle(f"nasx compare: {len(runs)} runs")
    fig.tight_layout()
    artifacts.save_figure(fig, path)
    plt.close(fig)
    return True


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="nasx compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively for results.json)")
    ap.add_argument("--metrics", default="", help="comma-separated extra results keys for the table and plot, "
                                                  "dotted for nested ones (e.g. retrain.test_top5)")
    ap.add_argument("--color", help="the swept key that colours compare.png (default: the first swept key that is "
                                    "not the seed)")
    ap.add_argument("--out", help="where compare.csv and compare.png go (default: the first directory given)")
    args = ap.parse_args(argv)
    extra = [m for m in args.metrics.split(",") if m]
    runs = collect(args.dirs)
    roots = [Path(d) for d in args.dirs]
    columns, rows, records = table(runs, roots, extra)
    swept = swept_keys(runs)
    if args.color is not None and args.color not in swept:
        raise ConfigError(f"nasx compare: --color {args.color}: not a swept key (swept: "
                          f"{', '.join(swept) or 'none'})")
    color = args.color or next((k for k in swept if k not in SEED_KEYS), swept[0] if swept else None)
    out = Path(args.out) if args.out else roots[0]
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "compare.csv", records)
    plotted = plot(out / "compare.png", runs, color, extra)

    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"nasx compare · {len(runs)} runs" + (f" · swept: {', '.join(swept)}" if swept else ""))
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i <= len(swept) else "right", overflow="fold")
    for row in rows:
        t.add_row(*row)
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped: wide enough for the metric names
    console.print(t)
    console.print(f"wrote {out / 'compare.csv'}" + (f" and {out / 'compare.png'}" if plotted else
                                                     " (no compare.png: no run reports MFLOPs)"))
