"""Models, victims and adversarial queries from outside: hashbench evaluate, the Python API, export-victim.

Every test makes its own small model (a linear map of the 784 pixels, or a tiny network), evaluates it on a
30-query FashionMNIST subset against attacks of one or two iterations, and reads the stored rows back.
"""
from __future__ import annotations

import hashlib
import json
import re
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_grid

import hashbench
from benchmark import cli
from benchmark.external.files import ExternalInputError
from benchmark.external.model import IN_MEMORY

QUERIES = 30
FAST = ["attacks.pgd.iterations=1", "attacks.dhta.iterations=1", "attacks.cgat.iterations=1"]


class Linear(torch.nn.Module):
    def __init__(self, bits: int = 12):
        super().__init__()
        self.fc = torch.nn.Linear(784, bits)

    def forward(self, x):
        return self.fc(x.flatten(1) - 0.3)


def linear(seed: int = 0, bits: int = 12) -> Linear:
    torch.manual_seed(seed)
    return Linear(bits).eval()


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One result store and stage cache for the module: a model evaluated twice is encoded once."""
    root = tmp_path_factory.mktemp("external")
    return {"results": root / "results", "cache": root / "cache", "root": root}


@pytest.fixture(scope="module")
def scripted(store):
    path = store["root"] / "linear.pt"
    torch.jit.save(torch.jit.script(linear()), str(path))
    return path


@pytest.fixture(scope="module")
def clean_queries(registry):
    splits = registry.get("datasets", "fashion_mnist").configure({"query_subset": QUERIES}).splits()
    return splits.query.load(torch.arange(QUERIES))


def evaluate(model, store, attacks="none", **options):
    return hashbench.evaluate(model, attacks=attacks, queries=QUERIES, settings=FAST, results=store["results"],
                              cache=store["cache"], device="cpu", **options)


def metric(rows: pd.DataFrame, attack: str, name: str) -> float:
    found = rows[(rows["attack"] == attack) & (rows["metric"] == name)]
    assert len(found), (attack, name, sorted(rows["metric"].unique()))
    return float(found.loc[found["iterations"].idxmax(), "value"])


def test_a_torchscript_file_runs_against_the_standard_suite_from_the_command_line(store, scripted, capsys):
    argv = ["evaluate", "--model", str(scripted), "--queries", str(QUERIES), "--results", str(store["results"]),
            "--cache", str(store["cache"]), "--device", "cpu", "--no-leaderboard",
            *[part for setting in FAST for part in ("--set", setting)]]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for attack in ("none", "pgd", "cgat", "dhta"):
        assert attack in printed
    rows = pd.read_parquet(store["results"])
    assert set(rows["attack"]) == {"none", "pgd", "cgat", "dhta"} and (rows["status"] == "ok").all()
    assert set(rows["hashing"]) == {"external"} and set(rows["backbone"]) == {"linear"} and set(rows["bits"]) == {12}
    params = json.loads(rows["hashing_params"].iloc[0])
    assert params["model_sha256"] == sha256(scripted) and params["model"] == str(scripted)
    assert rows["targeted"][rows["attack"] == "dhta"].all() and "tmap" in set(rows["metric"])
    assert metric(rows, "pgd", "changed_codes") > 0 and metric(rows, "none", "changed_codes") == 0

    assert cli.main(argv) == 0                                         # the same command: every cell from the cache
    assert "0 cells computed, 4 from the cache" in capsys.readouterr().err


def test_the_model_files_content_is_in_the_key_and_its_place_is_not(store, scripted, tmp_path):
    first = evaluate(scripted, store)
    elsewhere = tmp_path / "copy.pt"
    elsewhere.write_bytes(scripted.read_bytes())
    assert evaluate(elsewhere, store)["cell_key"].iloc[0] == first["cell_key"].iloc[0]
    torch.jit.save(torch.jit.script(linear(seed=1)), str(elsewhere))  # other weights at the same path
    other = evaluate(elsewhere, store)
    assert other["victim_key"].iloc[0] != first["victim_key"].iloc[0]
    assert metric(other, "none", "map") != metric(first, "none", "map")


def test_a_factory_and_its_state_dict_give_the_torchscript_files_numbers(store, scripted, tmp_path):
    module = tmp_path / "my_models.py"
    module.write_text(textwrap.dedent("""
        import torch

        class Linear(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(784, 12)

            def forward(self, x):
                return self.fc(x.flatten(1) - 0.3)

        def make():
            return Linear()
    """))
    checkpoint = tmp_path / "state.pt"
    torch.save(linear().state_dict(), checkpoint)
    rows = evaluate(f"{module}:make", store, checkpoint=checkpoint)
    assert set(rows["backbone"]) == {"make"}
    params = json.loads(rows["hashing_params"].iloc[0])
    assert params["checkpoint_sha256"] == sha256(checkpoint)
    assert metric(rows, "none", "map") == metric(evaluate(scripted, store), "none", "map")


def test_an_in_memory_module_is_keyed_by_its_weights_and_class(store):
    model = linear(seed=2)
    rows = evaluate(model, store, attacks="none,pgd")
    assert isinstance(rows, pd.DataFrame) and set(rows["attack"]) == {"none", "pgd"}
    assert set(rows["backbone"]) == {"Linear"}
    assert evaluate(linear(seed=2), store)["victim_key"].iloc[0] == rows["victim_key"].iloc[0]
    with torch.no_grad():
        model.fc.bias += 1.0                      # trained on: a new model
    assert evaluate(model, store)["victim_key"].iloc[0] != rows["victim_key"].iloc[0]
    assert not IN_MEMORY                          # no copy of any of them is kept after its evaluation


class Drops(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :12].sum(1)           # (N,): the batch of codes lost


class NotFinite(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :12] / 0.0 - x.flatten(1)[:, :12] / 0.0


@pytest.mark.parametrize("make, options, message", [
    (lambda tmp: str(tmp / "missing.pt"), {}, "does not exist"),
    (lambda tmp: (tmp / "junk.pt").write_bytes(b"not a model") and str(tmp / "junk.pt"), {},
     "is not a TorchScript file"),
    (lambda tmp: (tmp / "broken.py").write_text("import nowhere_to_be_found\n") and f"{tmp / 'broken.py'}:make",
     {"checkpoint": "CHECKPOINT"}, "importing"),
    (lambda tmp: (tmp / "empty.py").write_text("x = 1\n") and f"{tmp / 'empty.py'}:make",
     {"checkpoint": "CHECKPOINT"}, "has no function 'make'"),
    (lambda tmp: "no_such_module_here:make", {"checkpoint": "CHECKPOINT"}, "cannot be imported"),
    (lambda tmp: Drops(), {}, "returned shape (2,) for 2 images"),
    (lambda tmp: NotFinite(), {}, "NaN or infinite outputs"),
])
def test_a_model_that_cannot_be_used_is_refused_before_any_cell(store, tmp_path, make, options, message):
    if options.get("checkpoint") == "CHECKPOINT":
        options = {"checkpoint": tmp_path / "state.pt"}
        torch.save(linear().state_dict(), options["checkpoint"])
    results = tmp_path / "results"
    with pytest.raises(ExternalInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hashbench.evaluate(make(tmp_path), queries=QUERIES, results=results, cache=store["cache"], device="cpu",
                           **options)
    assert not results.exists() or not list(results.glob("*.parquet"))


def test_the_command_line_names_a_missing_model_file(tmp_path, capsys):
    assert cli.main(["evaluate", "--model", str(tmp_path / "nope.pt"), "--results", str(tmp_path / "r"),
                     "--cache", str(tmp_path / "c"), "--no-leaderboard"]) == 2
    assert "nope.pt' does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ adversarial queries

def queries_file(path, images) -> str:
    np.save(path, images.numpy()) if str(path).endswith(".npy") else torch.save(images, path)
    return str(path)


def test_adversarial_queries_inside_epsilon_are_scored_as_an_attack(store, scripted, clean_queries, tmp_path):
    torch.manual_seed(0)
    noise = (torch.rand_like(clean_queries) * 2 - 1) * (6 / 255)
    path = queries_file(tmp_path / "adversarial.npy", (clean_queries + noise).clamp(0, 1))
    rows = evaluate(scripted, store, attacks="none", adversarial_queries=path, epsilon="8/255")
    external = rows[rows["attack"] == "external"]
    assert len(external) and (external["status"] == "ok").all()
    assert json.loads(external["attack_params"].iloc[0])["queries_sha256"] == sha256(path)
    assert metric(rows, "external", "linf") <= 6 / 255 + 1e-6
    assert metric(rows, "external", "budget_violations") == 0
    assert metric(rows, "external", "changed_codes") > 0


def test_adversarial_queries_are_flagged_like_any_attack(store, scripted, clean_queries, tmp_path):
    unchanged = evaluate(scripted, store, attacks="none", adversarial_queries=queries_file(
        tmp_path / "same.pt", clean_queries.clone()))
    assert "attack_changed_nothing" in unchanged.loc[unchanged["attack"] == "external", "flags"].iloc[0]
    shifted = evaluate(scripted, store, attacks="none", adversarial_queries=queries_file(
        tmp_path / "shift.pt", (clean_queries + 8 / 255).clamp(0, 1)))
    assert "perturbation_universal" in shifted.loc[shifted["attack"] == "external", "flags"].iloc[0]


@pytest.mark.parametrize("change, message", [
    (lambda x: (x + 10 / 255).clamp(0, 1), r"lie outside the L-inf ball .* the largest L-inf is 0\.0392"),
    (lambda x: x[:-1], "holds 29 images for 30 queries"),
    (lambda x: x[:, :, :27], r"have shape \(1, 27, 28\), the clean queries \(1, 28, 28\)"),
    (lambda x: x[0], r"expected \(Q, C, H, W\)"),
    (lambda x: x * 2, r"pixels in \[0, 2\]"),
    (lambda x: (x * 255).to(torch.uint8), "divide 0..255 bytes by 255"),
])
def test_adversarial_queries_that_do_not_fit_are_refused(store, scripted, clean_queries, tmp_path, change, message):
    path = queries_file(tmp_path / "bad.pt", change(clean_queries.clone()))
    with pytest.raises(ExternalInputError, match=message):
        evaluate(scripted, store, adversarial_queries=path, epsilon="8/255")


def test_adversarial_queries_over_budget_are_refused_by_the_command_line(store, scripted, clean_queries, tmp_path,
                                                                        capsys):
    path = queries_file(tmp_path / "far.npy", (clean_queries + 12 / 255).clamp(0, 1))
    argv = ["evaluate", "--model", str(scripted), "--attacks", "none", "--queries", str(QUERIES),
            "--adversarial-queries", path, "--results", str(tmp_path / "r"), "--cache", str(store["cache"]),
            "--device", "cpu", "--no-leaderboard"]
    assert cli.main(argv) == 2
    assert re.search(r"30 of 30 images lie outside .* the largest L-inf is 0\.04705\d+ \(12/255\)\. Give --epsilon "
                     r"0\.04705\d+ or more", capsys.readouterr().err)
    assert cli.main([*argv, "--epsilon", "12/255"]) == 0


# ------------------------------------------------------------------ trained victims: load, export, re-evaluate

TINY_VICTIM = """
[[block]]
dataset = "fashion_mnist"
hashing = "dpsh"
backbone = "smallcnn"
bits = 16
attack = ["none", "pgd"]
epsilon = "8/255"
[block.params.datasets.fashion_mnist]
query_subset = 30
n_train = 500
[block.params.hashing.dpsh]
epochs = 1
[block.params.attacks.pgd]
iterations = 1
"""


@pytest.mark.slow
def test_an_exported_victim_gives_its_clean_map_when_evaluated_again(store, tmp_path, capsys, clean_queries):
    grid = write_grid(tmp_path / "tiny.toml", TINY_VICTIM)
    victim = {"method": "dpsh", "backbone": "smallcnn", "bits": 16, "grid": str(grid)}
    with pytest.raises(LookupError, match="no trained victim dpsh/smallcnn/16"):
        hashbench.load_victim(store["cache"], **victim, results=store["results"])
    assert cli.main(["run", "--grid", str(grid), "--results", str(store["results"]), "--cache", str(store["cache"]),
                     "--device", "cpu", "--no-leaderboard"]) == 0
    model = hashbench.load_victim(store["cache"], **victim)
    assert model.bits == 16 and not model.training

    out = tmp_path / "exported"
    assert cli.main(["export-victim", "--method", "dpsh", "--backbone", "smallcnn", "--bits", "16", "--grid",
                     str(grid), "--out", str(out), "--results", str(store["results"]), "--cache",
                     str(store["cache"])]) == 0
    capsys.readouterr()
    card = json.loads(next(out.glob("*.json")).read_text())
    for field in ("method", "backbone", "bits", "dataset", "split", "clean_map", "commit", "victim_key"):
        assert field in card, field
    assert card["sha256"] == sha256(out / card["file"])
    rows = evaluate(out / card["file"], store)
    assert abs(metric(rows, "none", "map") - card["clean_map"]) < 1e-9
    assert rows["victim_key"].iloc[0] != card["victim_key"]        # evaluated as an external model of its own

    # the grid's pgd cell, its attack replaced by a file of the user's own
    run = ["run", "--grid", str(grid), "--results", str(store["results"]), "--cache", str(store["cache"]), "--device",
           "cpu", "--no-leaderboard", "--adversarial-queries", queries_file(tmp_path / "adv.pt", clean_queries * 0.99)]
    assert cli.main(run) == 2
    assert "select 2 cells" in capsys.readouterr().err
    assert cli.main([*run, "--only", "attack=pgd"]) == 0
    stored = pd.read_parquet(store["results"])
    external = stored[(stored["attack"] == "external") & (stored["hashing"] == "dpsh")]
    assert len(external) and set(external["victim_key"]) == {card["victim_key"]}

    with pytest.raises(LookupError, match=r"it holds 1:\n  [0-9a-f]{20}: fashion_mnist dpsh\[epochs=1\] smallcnn 16 bits"):
        hashbench.load_victim(store["cache"], method="dpsh", backbone="smallcnn", bits=16, results=store["results"])
