"""``diffzoo bench``'s measurements: speed per backend (``speed``), time to quality, the allocator, OpenVINO.

Benchmarks measure and print; the targets and verdicts live in docs/BENCHMARKS.md.
"""
