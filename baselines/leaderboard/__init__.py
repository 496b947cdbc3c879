"""The leaderboard: frozen suites (``suite``), replayable cells (``cells``), scoring (``board``) and charts
(``plots``). See docs/leaderboard.md."""
