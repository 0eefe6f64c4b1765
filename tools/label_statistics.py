"""The label statistics a multi-label stand-in is chosen by: labels per image, the relevance base rate, the share
of queries with few relevant items, the concepts' frequencies. For dataset plugins and for the papers' list files.

    python tools/label_statistics.py --dataset fashion_mnist_canvas --dataset fashion_mnist_mosaic
    python tools/label_statistics.py --lists NUS-WIDE-21 test.txt train.txt   # query list, database list

A list is either format the list datasets read: "path l1 ... lC" rows (DeepHash-pytorch) or bare 0/1 rows
(xunguangwang's *_label.txt). Relevance is "shares at least one label", as every multi-label table of the papers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

STATISTICS = {  # name -> what it is (the columns printed)
    "concepts": "label columns",
    "labels_per_image": "mean labels of a database image",
    "base_rate": "mean over queries of the share of the database relevant to it (a random pair's relevance)",
    "median_relevant": "median over queries of that share",
    "few_relevant_5": "share of queries with under 5% of the database relevant",
    "few_relevant_20": "share of queries with under 20% of the database relevant",
    "top_concept": "share of database images carrying the most frequent concept",
    "second_concept": "the same for the second most frequent",
    "median_concept": "the same for the median concept",
}


def label_statistics(query_labels: np.ndarray, database_labels: np.ndarray) -> dict[str, float]:
    """The statistics of STATISTICS for multi-hot (Q, C) query and (N, C) database labels."""
    query, database = np.asarray(query_labels) > 0, np.asarray(database_labels) > 0
    relevant = (query.astype(np.float32) @ database.astype(np.float32).T > 0).mean(axis=1)
    frequency = np.sort(database.mean(axis=0))[::-1]
    return {"concepts": query.shape[1], "labels_per_image": float(database.sum(axis=1).mean()),
            "base_rate": float(relevant.mean()), "median_relevant": float(np.median(relevant)),
            "few_relevant_5": float((relevant < 0.05).mean()), "few_relevant_20": float((relevant < 0.2).mean()),
            "top_concept": float(frequency[0]), "second_concept": float(frequency[1]),
            "median_concept": float(np.median(frequency))}


def sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most n rows, a seeded draw (all rows when there are fewer)."""
    if len(labels) <= n:
        return labels
    return labels[np.sort(np.random.default_rng(seed).permutation(len(labels))[:n])]


def read_label_list(path: Path) -> np.ndarray:
    """(N, C) 0/1 labels of a list file, with or without a leading image path on each row."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].lstrip("-").replace(".", "", 1).isdigit():
            fields = fields[1:]
        if fields:
            try:
                rows.append([float(v) for v in fields])
            except ValueError:
                raise SystemExit(f"{path}:{number}: expected 0/1 labels after an optional path; got {line[:80]!r}")
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise SystemExit(f"{path}: rows have {sorted(widths)} labels; a list has one label count")
    return (np.array(rows) > 0).astype(np.float32)


def dataset_labels(name: str, params: dict) -> tuple[np.ndarray, np.ndarray]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmark import Registry

    splits = Registry.discover().get("datasets", name).configure(params).splits()
    return splits.query.labels.numpy(), splits.database.labels.numpy()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", default=[], help="a dataset plugin (its default parameters)")
    parser.add_argument("--lists", nargs=3, action="append", default=[], metavar=("NAME", "QUERIES", "DATABASE"),
                        help="a query and a database label list")
    parser.add_argument("--queries", type=int, default=2_000, help="queries sampled (seeded); default 2,000")
    parser.add_argument("--database", type=int, default=8_000, help="database items sampled; default 8,000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sources = [(name, lambda name=name: dataset_labels(name, {})) for name in args.dataset]
    sources += [(name, lambda q=q, d=d: (read_label_list(Path(q)), read_label_list(Path(d))))
                for name, q, d in args.lists]
    if not sources:
        parser.error("give at least one --dataset or --lists")
    print("| set | " + " | ".join(STATISTICS) + " |")
    print("|" + "---|" * (len(STATISTICS) + 1))
    for name, labels in sources:
        query, database = labels()
        found = label_statistics(sample(query, args.queries, args.seed), sample(database, args.database, args.seed + 1))
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in found.values()) + " |")


if __name__ == "__main__":
    main()
