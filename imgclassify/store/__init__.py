"""Where models live: objects in ``gs://`` or a directory, manifests, the catalog, an instance's view of it.

Modules: :mod:`.objects` (object stores: ranged and parallel reads, generation
preconditions, size-limited reads), :mod:`.catalog` (the manifest and catalog formats and
their reads), :mod:`.catalog_view` (the catalog as one instance sees it, re-read on a TTL,
and how ``name[@version]`` resolves), :mod:`.snapshot` (a bundle's verified copy of one model
version on local disk), :mod:`.read_ahead` (a cold start's first reads, made by a forked process
while the app's imports run).

Import rule: the ground (:mod:`imgclassify.errors` and its siblings) and the Google Cloud
Storage client only. No numpy, Pillow or engine: ``list_models`` runs on this part alone.
"""
