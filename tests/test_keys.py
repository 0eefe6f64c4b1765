"""Stage keys follow the code: each stage hashes the harness modules it runs, read from the imports.

Each test edits (or removes) a module in a scratch copy of ``benchmark/`` and checks which stage keys move.
The first five are the holes of the hand-kept module lists these keys replaced (issue 21): the attack stage's
glue outside its key, adversarial training's PGD outside the victim key, diagnostics outside the codes key,
a missing file hashed as "absent", and ``prepare`` seeded from a key that hashes code.
"""
from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
from conftest import TINY_GRID, write_grid

from benchmark import center_codes, keys, pgd_toward_codes
from benchmark.attack.stage import attacked_queries
from benchmark.planning.grid import expand, load_preset
from benchmark.planning.plan import Planner
from benchmark.scoring.flags import victim_diagnostics
from benchmark.scoring.kernel import score_queries
from benchmark.victim.model import build_victim

GRID = TINY_GRID.replace('attack = ["none", "noise", "pgd", "dhta"]', 'defense = ["none", "cgat"]\n'
                         'attack = ["pgd", "prosgan"]')


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A copy of ``benchmark/`` that the keys read instead of the real one; ``edit(obj)`` appends to the copy of
    the file that defines ``obj``, ``remove(obj)`` deletes it."""
    package = tmp_path / "benchmark"
    shutil.copytree(keys.PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(keys, "PACKAGE_DIR", package)

    def copy_of(obj) -> Path:
        return package / Path(inspect.getsourcefile(obj)).resolve().relative_to(Path(keys.__file__).parent)

    class Scratch:
        @staticmethod
        def edit(obj, text="\n# an edit\n"):
            with open(copy_of(obj), "a") as source:
                source.write(text)

        @staticmethod
        def remove(obj):
            copy_of(obj).unlink()

    return Scratch


@pytest.fixture
def cells(tmp_path, registry):
    grid = expand(load_preset(str(write_grid(tmp_path / "grid.toml", GRID))), registry)
    return {(c.defense, c.attack): c for c in grid}


def stage_keys(registry, cell) -> dict[str, str]:
    plan = Planner(registry).plan(cell)
    return {"victim": plan.victim.key, "codes": plan.codes.key, "targets": plan.targets.key,
            "prepare": plan.attack.prepare_key, "attack": plan.attack.key, "cell": plan.key,
            "start": plan.victim.start.key if plan.victim.start else "", "prepare_seed": plan.attack.prepare_seed,
            "attack_seed": plan.attack.seed}


def moved(before: dict, after: dict) -> set[str]:
    return {stage for stage in before if before[stage] != after[stage]}


def test_the_same_code_gives_the_same_keys(scratch, registry, cells):
    real = {name: stage_keys(registry, cell) for name, cell in cells.items()}
    scratch.edit(build_victim, "")  # touched, not changed
    assert {name: stage_keys(registry, cell) for name, cell in cells.items()} == real


def test_the_attack_stages_own_code_is_in_the_attack_key(scratch, registry, cells):
    """Hole 1: the attack seed, prepare seeding, AttackContext and the release lived in cell.py, in no attack key."""
    cell = cells["none", "pgd"]
    before = stage_keys(registry, cell)
    scratch.edit(attacked_queries)
    assert moved(before, stage_keys(registry, cell)) == {"prepare", "attack", "cell"}


def test_adversarial_training_follows_the_pgd_it_trains_with(scratch, registry, cells):
    """Hole 2: CgAT trains with ``pgd_toward_codes``; its victim key must move with it, the undefended one not."""
    defended, undefended = cells["cgat", "pgd"], cells["none", "pgd"]
    before = stage_keys(registry, defended), stage_keys(registry, undefended)
    scratch.edit(pgd_toward_codes)
    after = stage_keys(registry, defended), stage_keys(registry, undefended)
    assert {"victim", "codes", "attack", "cell"} <= moved(before[0], after[0]) and "start" not in moved(*[
        before[0], after[0]])
    assert "victim" not in moved(before[1], after[1])


def test_victim_diagnostics_are_recomputed_when_their_code_changes(scratch, registry, cells):
    """Hole 3: the diagnostics are cached with the codes; their module must be in the codes key."""
    cell = cells["none", "pgd"]
    before = stage_keys(registry, cell)
    scratch.edit(victim_diagnostics)
    changed = moved(before, stage_keys(registry, cell))
    assert "codes" in changed and "victim" not in changed


def test_a_missing_harness_module_is_an_error_not_absent(scratch, registry, cells):
    """Hole 4: a missing file hashed as 'absent' and silently left every key."""
    scratch.remove(center_codes)
    with pytest.raises(keys.MissingModule, match="benchmark.parts.centers"):
        stage_keys(registry, cells["cgat", "pgd"])


def test_prepare_is_seeded_by_identity_not_by_code(scratch, registry, cells):
    """Hole 5: a docstring edit to the attack code reseeded ProS-GAN's training through its key."""
    cell = cells["none", "prosgan"]
    before = stage_keys(registry, cell)
    scratch.edit(attacked_queries, '\n"""a docstring edit"""\n')
    after = stage_keys(registry, cell)
    assert before["prepare"] != after["prepare"]
    assert before["prepare_seed"] == after["prepare_seed"] and before["attack_seed"] == after["attack_seed"]


def test_scoring_code_rescores_and_model_code_retrains(scratch, registry, cells):
    cell = cells["none", "pgd"]
    before = stage_keys(registry, cell)
    scratch.edit(score_queries)
    assert moved(before, stage_keys(registry, cell)) == {"cell"}
    scratch.edit(build_victim)
    assert {"victim", "codes", "prepare", "attack", "cell"} <= moved(before, stage_keys(registry, cell))


def test_every_harness_module_belongs_to_a_stage_or_computes_no_number(registry):
    plugins = [path for kind in registry.plugins.values() for plugin in kind.values()
               for path in [Path(plugin.source_file)]]
    staged = set()
    for stage in keys.STAGE_CODE:
        staged |= set(keys.stage_code(stage, plugins))
    orphans = [keys.relative(path) for path in keys.harness_modules()
               if keys.relative(path) not in staged and not keys.outside_stages(path)]
    assert orphans == [], f"harness modules in no stage's code: {orphans}; import them from a stage or say in " \
                          f"keys.OUTSIDE_STAGES why they compute no number"


def test_a_module_outside_the_stages_moves_no_key(scratch, registry, cells):
    from benchmark.storage.cache import cached

    cell = cells["cgat", "prosgan"]
    before = stage_keys(registry, cell)
    scratch.edit(cached)
    assert stage_keys(registry, cell) == before
