"""Build benchmark/data/split_registry.json: fingerprints of the query, database and training lists that the papers'
code repositories ship (facts only: no list is copied).

    .venv/bin/python tools/split_registry.py MIRRORS [--out benchmark/data/split_registry.json]

MIRRORS holds one bare git snapshot per repository, as ``owner+name/repo`` (the layout of the session's
``fetch`` mirrors). Each list file is read with ``git show COMMIT:PATH``; a list split into parts (HashNet's caffe
``test0.txt`` ... ``test7.txt``) is read as their concatenation. A file whose content the snapshot lacks (the
snapshots leave out files of 4 MiB or more) is registered as ``absent`` with its git blob id. What each entry
holds, and the normalisation, are described in ``benchmark/data/fingerprints.py``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmark.data.fingerprints import (encode_sketch, imagenet_classes, list_fingerprint,  # noqa: E402
                                         name_sketch, normalised_name, stored_sketch)

# source -> (repository, commit); the newest stored snapshot of each when the registry was built
SOURCES = {
    "prosgan": ("xunguangwang/ProS-GAN", "2521d9326def27271f6f0651e4230465baa2088e"),
    "deephash": ("swuxyj/DeepHash-pytorch", "ab14068ea9b33e8fe12de49d976d0c2e3f0dc129"),
    "hashnet": ("thuml/HashNet", "85387b814fcf95daff887bd325cbaa0e8def7323"),
    "hashnet-caffe": ("thuml/HashNet", "85387b814fcf95daff887bd325cbaa0e8def7323"),
    "dhta": ("jiawangbai/DHTA-master", "e6b48a9af4e8d8e5d22b86ef6d1041b74a57605c"),
}
# repositories that ship no list file (registered as a note, so `identify` can say so)
NO_LISTS = {"xunguangwang/CgAT": ("0d4a334b99d792e9fa3ed15bd321c58db5939ae7",
                                  "ships no list files; utils/data_provider.py reads ProS-GAN's "
                                  "{test,database,train}_img.txt + _label.txt layout")}
PARTS = [f"{i}" for i in range(8)]


def pair(folder: str, stem: str) -> dict:
    return {"images": [f"{folder}/{stem}_img.txt"], "labels": [f"{folder}/{stem}_label.txt"]}


def joint(*paths: str) -> dict:
    return {"images": list(paths), "labels": None}


# (source, dataset, role, files, the repository's folder); dataset: the hashbench plugin name where there is one
LISTS = [
    *[("prosgan", dataset, role, pair(f"data/{folder}", stem), folder)
      for dataset, folder in (("flickr25k", "FLICKR-25K"), ("mscoco", "MS-COCO"), ("nuswide", "NUS-WIDE"))
      for role, stem in (("query", "test"), ("database", "database"), ("train", "train"))],
    *[("deephash", dataset, role, joint(f"data/{folder}/{stem}.txt"), folder)
      for dataset, folder in (("mscoco", "coco"), ("imagenet100", "imagenet"), ("flickr25k", "mirflickr"),
                              ("nuswide", "nuswide_21"), ("nuswide_21_m", "nuswide_21_m"),
                              ("nuswide81", "nuswide_81_m"), ("voc2012", "voc2012"))
      for role, stem in (("query", "test"), ("database", "database"), ("train", "train"))],
    *[("hashnet", dataset, role, joint(f"pytorch/data/{folder}/{stem}.txt"), folder)
      for dataset, folder in (("mscoco", "coco"), ("imagenet100", "imagenet"), ("nuswide81", "nuswide_81"))
      for role, stem in (("query", "test"), ("database", "database"), ("train", "train"))],
    *[("hashnet-caffe", dataset, role, files, folder)
      for dataset, folder in (("mscoco", "coco"), ("imagenet100", "imagenet"), ("nuswide81", "nuswide_81"))
      for role, files in (("query", joint(*[f"caffe/data/{folder}/test/test{i}.txt" for i in PARTS])),
                          ("database", joint(*[f"caffe/data/{folder}/test/database{i}.txt" for i in PARTS])),
                          ("train", joint(f"caffe/data/{folder}/train.txt")))],
    *[("dhta", "imagenet100", role, joint(f"data/imagenet/{stem}.txt"), "imagenet")
      for role, stem in (("query", "query"), ("database", "database"), ("train", "train"))],
]


def mirror(mirrors: Path, repo: str) -> Path:
    return mirrors / repo.replace("/", "+") / "repo"


def blob(git_dir: Path, commit: str, path: str) -> str | None:
    """The blob id of ``path`` at ``commit``, or None when the tree has no such file."""
    out = subprocess.run(["git", "-C", str(git_dir), "ls-tree", commit, "--", path], capture_output=True, text=True)
    fields = out.stdout.split()
    return fields[2] if len(fields) >= 3 else None


def show(git_dir: Path, commit: str, path: str) -> str | None:
    out = subprocess.run(["git", "-C", str(git_dir), "show", f"{commit}:{path}"], capture_output=True)
    return out.stdout.decode() if out.returncode == 0 else None


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_list(git_dir: Path, commit: str, files: dict) -> tuple[list[str], list[list[str]]] | str:
    """(image paths, label rows) of a list; or why it cannot be read."""
    texts = {}
    for path in files["images"] + (files["labels"] or []):
        blob_id = blob(git_dir, commit, path)
        if blob_id is None:
            return f"{path} is not in the repository at this commit"
        text = show(git_dir, commit, path)
        if text is None:
            return (f"the snapshot lacks {path}'s content (git blob {blob_id}; files of 4 MiB or more are not "
                    f"stored)")
        if text.startswith("version https://git-lfs"):
            return f"{path} is a Git LFS pointer (git blob {blob_id})"
        texts[path] = lines(text)
    rows = [row for path in files["images"] for row in texts[path]]
    if files["labels"] is None:
        return [row.split()[0] for row in rows], [row.split()[1:] for row in rows]
    labels = [row.split() for path in files["labels"] for row in texts[path]]
    if len(labels) != len(rows):
        return f"{files['images'][0]} has {len(rows)} rows but {files['labels'][0]} has {len(labels)}"
    return rows, labels


def entry(mirrors: Path, source: str, dataset: str, role: str, files: dict, folder: str) -> dict:
    repo, commit = SOURCES[source]
    git_dir = mirror(mirrors, repo)
    variant = f"{dataset}@{source}"
    out = {"id": f"{variant}/{role}", "variant": variant, "dataset": dataset, "role": role, "repo": repo,
           "commit": commit, "repo_folder": folder, "paths": files["images"], "label_paths": files["labels"] or []}
    read = read_list(git_dir, commit, files)
    if isinstance(read, str):
        return {**out, "status": "absent", "reason": read}
    paths, labels = read
    columns = {len(row) for row in labels}
    names = [normalised_name(path) for path in paths]
    label_sums = [sum(float(v) for v in row) for row in labels]
    out.update(status="ok", size=len(paths), distinct=len(set(names)),
               label_columns=columns.pop() if len(columns) == 1 else sorted(columns),
               zero_label_rows=sum(1 for s in label_sums if s == 0),
               sha256=list_fingerprint(paths))
    sketch, sampled = stored_sketch(name_sketch(paths))
    out.update(sketch=encode_sketch(sketch), sketch_sampled=sampled)
    classes = imagenet_classes(paths)
    if classes:
        out["imagenet_classes"] = classes
    return out


def build(mirrors: Path) -> dict:
    from benchmark.data import fingerprints

    lists = [entry(mirrors, *spec) for spec in LISTS]
    lists = [e for e in lists if e["status"] == "ok" or "not in the repository" not in e["reason"]]
    return {"format": 1, "built_by": "tools/split_registry.py",
            "normalisation": fingerprints.__doc__.split("\n\n")[1].replace("\n", " "),
            "sketch": fingerprints.__doc__.split("\n\n")[2].replace("\n", " "),
            "no_lists": [{"repo": repo, "commit": commit, "note": note} for repo, (commit, note) in NO_LISTS.items()],
            "lists": lists}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mirrors", type=Path, help="folder of owner+name/repo git snapshots")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmark" / "data" / "split_registry.json")
    args = parser.parse_args(argv)
    registry = build(args.mirrors)
    args.out.write_text(json.dumps(registry, indent=1) + "\n")
    for item in registry["lists"]:
        state = f"{item['size']:>7} images, {item['label_columns']} labels" if item["status"] == "ok" else "absent"
        print(f"{item['id']:<34} {state}")
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
