"""The command that recomputes a stored cell, built from its row alone (no grid preset is recorded on rows).

    python bench.py --grid only --only dataset=fashion_mnist --only hashing=dpsh --only backbone=smallcnn \\
        --only bits=16 --only attack=pgd --only epsilon=16/255 --set hashing.dpsh.epochs=2 ...

``--grid only`` is the grid whose one block is the ``--only`` values (``benchmark.planning.grid.grid_preset``):
every identity axis the row has and that differs from the axis default, the non-default plugin parameters of
``dataset_params`` / ``hashing_params`` / ``defense_params`` / ``attack_params`` as ``--set`` (the plugin's
grid-axis parameters left out: the axes carry them), and the conventions that are options (``--backend``,
``--zero-relevant``). Planned by the current code, it gets the row's ``cell_key`` as long as the cell's code is
unchanged (a stale cell's command computes the current code's version of it).

What a row does not record is named in ``caveats`` (shown with the command): a transfer cell's surrogate
training parameters when its method is another than the victim's (the surrogate trains with the method's
defaults under this command), a plugin that is not installed here, a value no ``--set`` text can give.
"""
from __future__ import annotations

import shlex

from leaderboard.store import isnum, json_dict

PARAM_COLUMNS = (("datasets", "dataset", "dataset_params"), ("hashing", "hashing", "hashing_params"),
                 ("defenses", "defense", "defense_params"), ("attacks", "attack", "attack_params"))
CONVENTION_OPTIONS = (("search_backend", "--backend", "torch"), ("zero_relevant", "--zero-relevant", "count_as_zero"),
                      ("precision", "--precision", "fp32"))


def setting_text(value) -> str | None:
    """The ``--set`` text that ``benchmark.plugins.coerce`` turns back into ``value`` (None: there is none)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # round-trips exactly through float()
    if isinstance(value, str):
        return value
    return None


def epsilon_text(eps: float) -> str:
    """8/255 where ε is exactly k/255 (as the grid's own "8/255" parses), else the float's repr."""
    k = round(eps * 255)
    return f"{k}/255" if k / 255 == eps else repr(float(eps))


def plugin_settings(kind: str, name: str, params: dict, registry) -> tuple[list[str], list[str]]:
    """(the ``--set`` arguments of the parameters that differ from the plugin's defaults, caveats)."""
    try:
        plugin = registry.get(kind, name)
    except ValueError:
        return [], [f"{kind} plugin {name!r} is not installed here: its parameters cannot be checked"]
    defaults, axes = plugin.defaults(), set(plugin.axis_parameters)
    settings, caveats = [], []
    for key, value in sorted(params.items()):
        if key in axes or key not in defaults or value == defaults[key]:
            continue
        text = setting_text(value)
        try:
            given = plugin.configure({key: text}).params()[key] if text is not None else None
        except ValueError:
            given = None
        if text is None or given != value:
            caveats.append(f"{kind}.{name}.{key}={value!r} cannot be given as --set text")
            continue
        settings += ["--set", f"{kind}.{name}.{key}={text}"]
    return settings, caveats


def cell_arguments(row: dict, registry) -> tuple[list[str], list[str]]:
    """(the arguments after ``python bench.py``, caveats) of the command that recomputes ``row``'s cell."""
    from benchmark.planning.grid import AXIS_DEFAULTS, ONLY_GRID, surrogate_method

    args, caveats = ["--grid", ONLY_GRID], []
    for axis in ("dataset", "hashing", "backbone", "bits", "defense", "train_data", "attack"):
        value = str(row[axis])
        if axis in ("backbone", "bits") or value != str(AXIS_DEFAULTS.get(axis)):
            args += ["--only", f"{axis}={value}"]
    eps = row.get("epsilon")
    if row["attack"] != "none" and isnum(eps):
        args += ["--only", f"epsilon={epsilon_text(float(eps))}"]
    for axis in ("surrogate", "scenario", "target_rule", "seed"):
        value = str(row.get(axis, AXIS_DEFAULTS[axis]))
        if value not in ("", str(AXIS_DEFAULTS[axis])):
            args += ["--only", f"{axis}={value}"]
    for kind, axis, column in PARAM_COLUMNS:
        settings, notes = plugin_settings(kind, str(row[axis]), json_dict(row.get(column, "")), registry)
        args += settings
        caveats += notes
    surrogate = surrogate_method(str(row.get("surrogate") or "self"))
    if surrogate is not None and surrogate != row["hashing"]:
        caveats.append(f"the surrogate {row['surrogate']}'s training parameters are not on the rows: this command "
                       f"trains it with {surrogate}'s defaults")
    for column, option, default in CONVENTION_OPTIONS:
        value = str(row.get(column) or default)
        if value != default:
            args += [option, value]
    return args, caveats


def cell_command(row: dict, registry) -> tuple[str, list[str]]:
    """(the shell command, quoted, that recomputes ``row``'s cell; caveats)."""
    args, caveats = cell_arguments(row, registry)
    return shlex.join(["python", "bench.py", *args]), caveats


def commands_by_run(cells, registry) -> dict[str, dict]:
    """{run: {"command": ..., "caveats": [...]}} for every run of ``cells`` (``store.cells`` rows)."""
    out = {}
    for row in cells.drop_duplicates("run").to_dict("records"):
        command, caveats = cell_command(row, registry)
        out[row["run"]] = {"command": command, "caveats": caveats}
    return out
