"""The commands, each a function of the Python API that the CLI calls: `selectivity`, `visualize`,
`importance` (over one prologue, `context`), and beside them `extend` (what a command takes from an existing
run), `train` and `demo`."""
