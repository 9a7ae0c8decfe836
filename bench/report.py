"""Render bench/results/*.json as markdown tables and put them into README.md between the bench markers.

    python -m bench.report            # rewrite the README section
    python -m bench.report --print    # print the markdown only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import RESULTS

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
_OWN_SECTION = {"recipe"}  # rendered with its reading in the README's "Quick recipe study" subsection


def _latency(data: dict) -> list[str]:
    m = data["machine"]
    where = m["cuda"] or f"CPU, {m['threads']} threads"
    out = [(f"**Inference latency, ILA vs plain ViT** (random weights, {where}; ratio = median of per-round ratios "
            "of interleaved runs, quartiles in brackets; ILA as served, BatchNorms folded; 'unfused' is the "
            "training-time module):"), "",
           "| backbone | px | batch | plain (s) | ILA (s) | latency ratio | unfused ratio | MAC ratio |",
           "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in data["rows"]:
        unfused = f"{r['latency_ratio_unfused']:.2f}x" if "latency_ratio_unfused" in r else ""
        spread = "({:.2f}-{:.2f})".format(*r["latency_ratio_q1_q3"]) if "latency_ratio_q1_q3" in r else ""
        out.append(f"| {r['backbone']} | {r['image_size']} | {r['batch']} | {r['plain_s']:.3f} | {r['ila_s']:.3f} | "
                   f"**{r['latency_ratio']:.2f}x** {spread} | {unfused} | {r['mac_ratio']:.2f}x |")  # fmt: skip
    return out


def _generic(name: str, data: dict) -> list[str]:
    rows = data.get("rows") or [data.get("summary", data)]
    rows = [r for r in rows if isinstance(r, dict)]
    if not rows:
        return []
    keys = [k for k in rows[0] if not isinstance(rows[0][k], (dict, list)) and k not in ("title", "benchmark")]
    out = [f"**{data.get('title', name)}**:", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join("—" if r.get(k) is None else str(r.get(k, "")) for k in keys) + " |")
    return out


def render() -> str:
    """Markdown for every result file, latency first."""
    parts: list[str] = []
    for path in sorted(RESULTS.glob("*.json"), key=lambda p: (not p.stem.startswith("latency"), p.stem)):
        if path.stem in _OWN_SECTION:
            continue
        data = json.loads(path.read_text())
        lines = _latency(data) if path.stem.startswith("latency") else _generic(path.stem, data)
        if lines:
            parts.append("\n".join(lines + ["", f"(`bench/results/{path.name}`)"]))
    return "\n\n".join(parts) if parts else "No benchmark results yet: run `make bench`."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.print:
        print(text)
        return
    readme = README.read_text()
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
