"""Plugin discovery, parameter overrides, grid presets and filters: bad input gets a clear message."""
from __future__ import annotations

import shutil
import sys

import pytest

from benchmark import Registry
from benchmark.planning.grid import expand, load_preset, parse_filters, parse_settings


def test_every_shipped_plugin_loads_and_is_documented(registry):
    assert registry.failures == []
    for kind, plugins in registry.plugins.items():
        for name, plugin in plugins.items():
            assert plugin.name == name and plugin.paper, (kind, name)
            module_doc = sys.modules[plugin.__module__].__doc__ or ""
            assert module_doc.strip() or (plugin.__doc__ or "").strip(), f"{kind} plugin {name} has no docstring"


def test_a_broken_plugin_file_is_skipped_and_reported(tmp_path, caplog):
    for folder in ("methods/hashing", "methods/attacks", "methods/defenses", "datasets"):
        shutil.copytree(Registry.discover().root / folder, tmp_path / folder)
    (tmp_path / "methods/attacks/broken.py").write_text("import does_not_exist\n")
    (tmp_path / "methods/attacks/misnamed.py").write_text(
        "from benchmark import Attack\nclass X(Attack):\n    name = 'other'\n    paper = 'p'\n")
    registry = Registry.discover(tmp_path)
    failed = {f.path.name: f.error for f in registry.failures}
    assert "ModuleNotFoundError" in failed["broken.py"] and "does_not_exist" in failed["broken.py"]
    assert "file stem" in failed["misnamed.py"]
    assert "pgd" in registry.names("attacks")  # the rest still loads
    assert "broken.py" in caplog.text
    with pytest.raises(ValueError, match="failed to load"):
        registry.get("attacks", "broken")


def test_unknown_plugin_name_lists_the_known_ones(registry):
    with pytest.raises(ValueError, match=r"unknown attacks plugin 'pgdd'.*dhta.*pgd"):
        registry.get("attacks", "pgdd")


def test_overrides_are_checked_by_name_and_type(registry):
    dhta = registry.get("attacks", "dhta")
    attack = dhta.configure({"iterations": "50", "step_size": "2/255"})
    assert attack.iterations == 50 and attack.step_size == pytest.approx(2 / 255)
    assert attack.label() == "dhta[iterations=50,step_size=0.00784314]"
    with pytest.raises(ValueError, match="no parameter 'iters'.*iterations"):
        dhta.configure({"iters": 5})
    with pytest.raises(ValueError, match="dhta.iterations must be int"):
        dhta.configure({"iterations": "many"})


def test_default_grid_covers_the_issue_and_collapses_epsilon_for_clean_queries(registry):
    cells = expand(load_preset("default"), registry)
    attacks = {c.attack for c in cells}
    assert attacks == {"none", "noise", "fgsm", "pgd", "p2p", "dhta"}
    assert {c.bits for c in cells} == {16, 32}
    assert {round(c.epsilon * 255) for c in cells if c.attack == "pgd"} == {8, 16}
    assert [c.epsilon for c in cells if c.attack == "none"] == [0.0, 0.0]  # one clean cell per bit length
    assert len(cells) == 2 * (1 + 5 * 2)


def test_only_filters_narrow_the_grid(registry):
    cells = expand(load_preset("default"), registry, parse_filters(["attack=pgd,dhta", "bits=32"]))
    assert {(c.attack, c.bits) for c in cells} == {("pgd", 32), ("dhta", 32)}
    assert len(cells) == 4


@pytest.mark.parametrize("text, message", [
    ("attack", "malformed"),
    ("atack=pgd", "unknown axis 'atack'"),
    ("bits=many", "bits value 'many' is not a whole number"),
    ("epsilon=eight", "is not a number"),
    ("attack=", "gives no value"),
])
def test_malformed_only_gives_a_clear_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_filters([text])


def test_filter_naming_an_unknown_plugin_or_matching_nothing(registry):
    with pytest.raises(ValueError, match="unknown attacks plugin 'pdg'"):
        expand(load_preset("default"), registry, parse_filters(["attack=pdg"]))
    with pytest.raises(ValueError, match="match no cell.*bits: 16, 32"):
        expand(load_preset("default"), registry, parse_filters(["bits=64"]))


def test_unknown_grid_and_bad_settings(registry):
    with pytest.raises(ValueError, match="unknown grid 'nope'.*default"):
        load_preset("nope")
    with pytest.raises(ValueError, match="KIND.PLUGIN.PARAM=VALUE"):
        parse_settings(["dhta.iterations=3"])
    with pytest.raises(ValueError, match="no parameter 'foo'"):
        expand(load_preset("default"), registry, settings=parse_settings(["attacks.dhta.foo=3"]))


def test_a_wildcard_axis_takes_every_plugin_found(registry):
    cells = expand(load_preset("smoke"), registry)
    assert {c.attack for c in cells} == set(registry.names("attacks"))
