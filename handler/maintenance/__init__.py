"""Offline jobs on stored runs: gc of unreferenced objects, compaction of mostly-dead segments."""
