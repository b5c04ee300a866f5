"""What a folder on disk is: checkpoints and ``brr-export`` artifacts, their files, manifests and runners.

``files`` names the files and folders; ``manifest`` writes, checks and reads ``manifest.json``
(hashes, verification record, the fp32 reference an engine was built from); ``load`` turns a folder
into a runner (``load_runner``).
"""
