"""Benchmarks: one command each (README, Benchmarks)."""

# The app shell installs the one narrow warning filter (pyHanko's DSA import) before pyHanko
# loads; benches and their child processes print what operators would see, nothing more.
import gateway  # noqa: F401
