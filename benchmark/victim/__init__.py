"""The victim stage: the hashing network (`model`), the hashing-method and defense plugin bases (`hashing`, `defense`), and training a victim or a data protection (`train`)."""
