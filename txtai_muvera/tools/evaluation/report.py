"""
Report module
"""

import json

import numpy as np

from .metrics import METRICS

# Mode names as printed
NAMES = {"maxsim": "full MaxSim", "rerank": "MUVERA + rerank", "muvera": "MUVERA only"}


class Report:
    """
    Collects evaluation rows (one per dataset and mode) and writes them as tables and JSON lines. With several datasets, each mode
    gets a mean row: the unweighted mean over datasets of each metric, as NanoBEIR reports.
    """

    def __init__(self, metrics=None):
        """
        Creates an empty report.

        Args:
            metrics: metric names in column order, defaults to the card's metric set
        """

        self.metrics = list(metrics or METRICS)
        self.rows = []

    def add(self, dataset, mode, scores, **extra):
        """
        Adds a row.

        Args:
            dataset: dataset name
            mode: mode name
            scores: dict of metric name -> mean value
            extra: other JSON-serialisable fields (queries, documents, candidates, seconds, settings)
        """

        missing = [x for x in self.metrics if x not in scores]
        if missing:
            raise ValueError(f"Row {dataset}/{mode} lacks metric(s) {missing}")

        self.rows.append({"dataset": dataset, "mode": mode, **extra, **{x: float(scores[x]) for x in self.metrics}})

    def modes(self):
        """
        Modes in first-seen order.

        Returns:
            list of mode names
        """

        return list(dict.fromkeys(row["mode"] for row in self.rows))

    def means(self):
        """
        Mean rows, one per mode seen on more than one dataset.

        Returns:
            list of rows with dataset "mean"
        """

        results = []
        for mode in self.modes():
            rows = [row for row in self.rows if row["mode"] == mode]
            if len(rows) > 1:
                mean = {"dataset": "mean", "mode": mode, "datasets": [row["dataset"] for row in rows]}
                mean.update({x: float(np.mean([row[x] for row in rows])) for x in self.metrics})
                results.append(mean)

        return results

    def jsonl(self):
        """
        JSON lines: every row, then the mean rows.

        Returns:
            string, one JSON object per line
        """

        return "".join(json.dumps(row) + "\n" for row in self.rows + self.means())

    def table(self, layout="card", digits=4):
        """
        Markdown table.

        Args:
            layout: "card" (one table per mode, metrics as rows, datasets and mean as columns, as model cards show NanoBEIR) or
                    "rows" (one table, a row per dataset and mode, a mean row per mode, metrics as columns)
            digits: decimals printed

        Returns:
            string
        """

        if layout not in ("card", "rows"):
            raise ValueError(f"Unknown layout {layout!r}, accepted: 'card', 'rows'")

        means = {row["mode"]: row for row in self.means()}
        if layout == "rows":
            lines = [markdown(["dataset", "mode"] + self.metrics)]
            for mode in self.modes():
                rows = [row for row in self.rows if row["mode"] == mode] + ([means[mode]] if mode in means else [])
                lines += [markdown([row["dataset"], NAMES.get(mode, mode)] + [f"{row[x]:.{digits}f}" for x in self.metrics]) for row in rows]

            return lines[0] + "\n" + rule(len(self.metrics) + 2) + "\n" + "\n".join(lines[1:]) + "\n"

        tables = []
        for mode in self.modes():
            rows = [row for row in self.rows if row["mode"] == mode] + ([means[mode]] if mode in means else [])
            lines = [f"**{NAMES.get(mode, mode)}**", "", markdown(["metric"] + [row["dataset"] for row in rows]), rule(len(rows) + 1)]
            lines += [markdown([x] + [f"{row[x]:.{digits}f}" for row in rows]) for x in self.metrics]
            tables.append("\n".join(lines) + "\n")

        return "\n".join(tables)


def markdown(cells):
    """
    Formats a markdown table line.

    Args:
        cells: cell strings

    Returns:
        string
    """

    return "| " + " | ".join(str(x) for x in cells) + " |"


def rule(columns):
    """
    Formats a markdown header rule.

    Args:
        columns: number of columns

    Returns:
        string
    """

    return "|" + "|".join(["---"] * columns) + "|"
