"""The bundle format, one owner: the artifact table, the manifest's writer, reader and schema, hashing, verified reads.

torch-free. ``export.format.artifacts`` declares every graph a bundle can hold and picks the one a
request runs; ``export.format.manifest`` writes and verifies the manifest and is the only reader
of a bundle's files. The weights file's header is read by ``zoo.weights_header`` alone, which the
manifest's settings check calls (training checkpoints share the weights format, and training sits
below ``export``).
"""
