"""The command line: each subcommand takes only its own options, `run` is the default, `plan` needs no runner."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT
from result_rows import cell_rows, write_cells

from benchmark import cli

KEY_LINE = re.compile(r"[0-9a-f]{20}  (stored    |to compute)  fashion_mnist ")


def help_text(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def rejected(capsys, *argv: str) -> str:
    """The parser's message for a command line it refuses (argparse's exit code 2)."""
    with pytest.raises(SystemExit) as exit_:
        cli.parse_args(list(argv))
    assert exit_.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command, present, absent", [
    ("run", ["--grid", "--only", "--set", "--device", "--force", "--force-victims", "--executor", "--address", "--site", "--results",
             "--target-rule", "--threads", "--verbose"], ["--dry-run"]),
    ("list", ["--verbose"], ["--stale", "--results", "--grid", "--device", "--force"]),
    ("plan", ["--grid", "--only", "--set", "--results", "--target-rule", "--backend", "--data-root", "--device",
              "--precision"],  # the device class and precision are in the keys
     ["--force", "--executor", "--address", "--cache", "--site", "--threads"]),
    ("leaderboard", ["--results", "--site", "--cache"], ["--force", "--grid", "--device", "--executor", "--only"]),
    ("stale", ["--results"], ["--grid", "--force", "--cache", "--dry-run"]),
    ("prune", ["--results", "--dry-run"], ["--grid", "--force", "--cache"]),
])
def test_each_command_lists_only_its_own_options(capsys, command, present, absent):
    text = help_text(capsys, command)
    for option in present:
        assert option in text, option
    for option in absent:
        assert option not in text, option


def test_the_top_level_help_names_every_command(capsys):
    text = help_text(capsys)
    for command in cli.COMMANDS:
        assert re.search(rf"^\s+{command}\s", text, re.MULTILINE), command
    assert "--force" not in text


@pytest.mark.parametrize("argv", [
    ["leaderboard", "--force"], ["leaderboard", "--grid", "nope"], ["list", "--address", "x"], ["list", "--stale"],
    ["plan", "--threads", "1"], ["stale", "--grid", "paper"], ["prune", "--force"],
])
def test_another_commands_options_are_refused(capsys, argv):
    assert "unrecognized arguments" in rejected(capsys, *argv)


@pytest.mark.parametrize("argv", [["--address", "head:6379"], ["run", "--executor", "local", "--address", "h:1"]])
def test_an_address_without_the_ray_executor_is_refused_before_any_work(capsys, monkeypatch, argv):
    monkeypatch.setattr(cli, "expand_grid", lambda *a: pytest.fail("the grid was expanded"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "--executor ray" in capsys.readouterr().err


def test_an_address_with_the_ray_executor_parses():
    args = cli.parse_args(["--executor", "ray", "--address", "head:6379"])
    assert (args.command, args.executor, args.address) == ("run", "ray", "head:6379")


@pytest.mark.parametrize("argv, message", [
    (["--threads", "-1"], "--threads: must be a positive number"),
    (["--attack-batch", "-5"], "--attack-batch: must be a positive number"),
    (["--threads", "two"], "'two' is not a whole number"),
    (["--target-rule", "nearest"], "invalid choice: 'nearest'"),
    (["lsit"], "invalid choice: 'lsit'"),
])
def test_bad_values_are_refused_with_the_accepted_ones(capsys, argv, message):
    assert message in rejected(capsys, *argv)


def test_run_is_the_default_command():
    args = cli.parse_args(["--grid", "smoke", "--only", "attack=pgd", "--only", "bits=32", "--threads", "1"])
    assert (args.command, args.grid, args.only, args.threads) == ("run", "smoke", ["attack=pgd", "bits=32"], 1)
    assert cli.parse_args(["run", "--grid", "smoke"]).grid == "smoke"
    bare = cli.parse_args([])
    assert (bare.command, bare.grid, bare.executor, bare.address, bare.verbose) == ("run", "default", "local",
                                                                                    None, False)
    assert cli.parse_args(["-v"]).verbose


def test_plan_prints_every_key_and_what_is_stored_without_a_runner(tmp_path, capsys, monkeypatch):
    import benchmark.running.runner
    from benchmark.storage.results import write_cell

    monkeypatch.setattr(benchmark.running.runner, "Runner", lambda *a, **k: pytest.fail("plan built a Runner"))
    results = tmp_path / "results"
    assert cli.main(["plan", "--grid", "default", "--results", str(results)]) == 0
    first = capsys.readouterr().out.splitlines()
    cells = [line for line in first if KEY_LINE.match(line)]
    assert len(cells) == 22 and first[0].startswith("-- block 1: "), first
    assert summary_line(first) == f"22 cells, 0 stored in {results}, 22 to compute"
    keys = [line.split()[0] for line in cells]
    assert len(set(keys)) == 22
    assert not results.exists()  # planning writes nothing

    write_cell(results, keys[0], [{"status": "ok", "cell_key": keys[0]}])  # a file holds its cell's key
    assert cli.main(["plan", "--grid", "default", "--results", str(results)]) == 0
    second = capsys.readouterr().out.splitlines()
    second_cells = [line for line in second if KEY_LINE.match(line)]
    assert second_cells[0] == cells[0].replace("to compute", "stored    ") and second_cells[1:] == cells[1:]
    assert summary_line(second) == f"22 cells, 1 stored in {results}, 21 to compute"


def summary_line(lines: list[str]) -> str:
    """plan's count of cells (after the per-block listing, before the GPU-hours model's line)."""
    return next(line for line in lines if re.match(r"\d+ cells, ", line))


def stale_store(tmp_path):
    """A store of two cells, one computed by a plugin file that no longer exists in the checkout."""
    gone = json.dumps({"methods/attacks/gone_for_good.py": "0" * 16})
    rows = cell_rows({"map": 0.31}, attack="pgd", attack_label="pgd", epsilon=8 / 255, sources=gone, seed=0)
    rows += cell_rows({"map": 0.33}, attack="pgd", attack_label="pgd", epsilon=8 / 255, seed=1)  # no sources
    return write_cells(tmp_path, rows), f"{rows[0]['cell_key']}.parquet"


def test_stale_lists_and_prune_dry_run_deletes_nothing(tmp_path, capsys):
    results, stale_file = stale_store(tmp_path)
    before = sorted(p.name for p in results.glob("*.parquet"))
    assert cli.main(["stale", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "methods/attacks/gone_for_good.py is gone" in out and "1 stale cell(s)" in out
    assert cli.main(["prune", "--dry-run", "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert f"would remove {results / stale_file}" in out and "nothing removed" in out
    assert sorted(p.name for p in results.glob("*.parquet")) == before
    assert cli.main(["prune", "--results", str(results)]) == 0
    assert sorted(p.name for p in results.glob("*.parquet")) == [name for name in before if name != stale_file]


def test_bench_py_plans_from_any_folder(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "plan", "--grid", "smoke", "--only",
                             "attack=pgd", "--results", str(tmp_path / "results")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len([line for line in lines if KEY_LINE.match(line)]) == 1
    assert summary_line(lines) == f"1 cells, 0 stored in {tmp_path / 'results'}, 1 to compute"


def test_bench_py_refuses_another_commands_option(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "bench.py"), "leaderboard", "--force"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "unrecognized arguments: --force" in result.stderr
