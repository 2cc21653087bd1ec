"""The fleet: dumps shipped to S3-compatible object storage, listed and triaged across hosts.

``url`` parses ``s3://BUCKET/PREFIX``; ``awsconfig`` finds the endpoint, region and credentials the way
S3 clients do; ``s3`` is the small client the rest uses (obstore, from the ``ship`` extra, imported
lazily); ``catalog`` lays dumps and their index objects out in a bucket; ``spool`` and ``shipper`` are the
collector's store-and-forward upload path, ``ledger`` records what was confirmed shipped and ``sweep`` finds
what was not; ``remote`` reads a bucket back for the inspector; ``errors`` holds the fleet's errors.
"""

__all__: list[str] = []
