"""The static HTML leaderboard: ``from leaderboard.render import render`` (or ``python -m leaderboard.render``).

Modules: ``store`` reads the parquet result store, ``papers`` lays out the papers' reference numbers and
matches measured cells to them, ``plots`` draws inline SVG charts, ``render`` writes the pages.
"""
